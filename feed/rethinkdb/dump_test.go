package rethinkdb_test

import (
	"context"
	"testing"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/rethinkdb"
	"github.com/kronos-sync/kronos-server/feed/storetest"
	"github.com/kronos-sync/kronos-server/internal/rethinktest"
)

func TestDumpAndLoad(t *testing.T) {
	url := rethinktest.URL(t) // one database (each takes seconds to set up): the suite counts what each test adds
	storetest.RunDump(t, func(t *testing.T, opts feed.Options) feed.Backend {
		s, err := rethinkdb.Open(context.Background(), url, opts)
		if err != nil {
			t.Fatal(err)
		}
		return feed.Backend{Store: s, Feed: s}
	})
}
