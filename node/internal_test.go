package node

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/rs/zerolog"

	"github.com/kronos-sync/kronos-server/feed"
)

// startNode runs a node on a fresh bbolt file and a random loopback port,
// for the tests inside the package.
func startNode(tb testing.TB) *Node {
	tb.Helper()
	store, err := feed.OpenBolt(filepath.Join(tb.TempDir(), "k.db"), feed.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	opts := Options{Logger: zerolog.Nop()}
	opts.Conn.Listen = "127.0.0.1:0"
	n := New(store, opts)
	if err := n.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		n.Shutdown(context.Background())
		store.Close()
	})
	return n
}
