package rethinkdb_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	neturl "net/url"
	"os"
	"strings"
	"testing"

	r "gopkg.in/rethinkdb/rethinkdb-go.v6"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/rethinkdb"
	"github.com/kronos-sync/kronos-server/feed/storetest"
)

// TestRethinkConformance runs the store suite against a real RethinkDB
// named by KRONOS_TEST_RETHINKDB (e.g. rethinkdb://127.0.0.1:28015), each
// test in a fresh database. No RethinkDB server can be installed on the
// machines this project is built on, so it is skipped there, saying so; the
// backend's queries and feed logic are tested on the driver's mock in
// rethink_internal_test.go.
func TestRethinkConformance(t *testing.T) {
	base := os.Getenv("KRONOS_TEST_RETHINKDB")
	if base == "" {
		t.Skip("SKIPPED: set KRONOS_TEST_RETHINKDB=rethinkdb://HOST:PORT to run the conformance suite on a real RethinkDB")
	}
	storetest.Run(t, func(t *testing.T, limits feed.Limits) feed.Backend {
		var suffix [6]byte
		rand.Read(suffix[:])
		db := "kronos_test_" + hex.EncodeToString(suffix[:])
		url := strings.TrimSuffix(strings.SplitN(base, "?", 2)[0], "/") + "/" + db
		s, err := rethinkdb.Open(context.Background(), url, feed.Options{Limits: limits})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dropRethinkDB(base, db) })
		return feed.Backend{Store: s, Feed: s}
	})
}

// dropRethinkDB removes a test database from the first server of base.
func dropRethinkDB(base, db string) {
	u, err := neturl.Parse(base)
	if err != nil {
		return
	}
	opts := r.ConnectOpts{Address: strings.Split(u.Host, ",")[0], Username: u.User.Username()}
	opts.Password, _ = u.User.Password()
	if !strings.Contains(opts.Address, ":") {
		opts.Address += ":28015"
	}
	if session, err := r.Connect(opts); err == nil {
		r.DBDrop(db).Exec(session)
		session.Close()
	}
}
