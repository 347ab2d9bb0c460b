package bolt_test

import (
	"path/filepath"
	"testing"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/bolt"
	"github.com/kronos-sync/kronos-server/feed/storetest"
)

func TestDumpAndLoad(t *testing.T) {
	storetest.RunDump(t, func(t *testing.T, opts feed.Options) feed.Backend {
		s, err := bolt.Open(filepath.Join(t.TempDir(), "kronos.db"), opts)
		if err != nil {
			t.Fatal(err)
		}
		return feed.Backend{Store: s, Feed: s}
	})
}
