package postgres_test

import (
	"testing"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/storetest"
	"github.com/kronos-sync/kronos-server/internal/pgtest"
)

func TestDumpAndLoad(t *testing.T) {
	storetest.RunDump(t, func(t *testing.T, opts feed.Options) feed.Backend {
		s := openPostgres(t, pgtest.URL(t), opts)
		return feed.Backend{Store: s, Feed: s}
	})
}
