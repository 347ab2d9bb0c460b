// Package stores opens a backend from its URL: "bolt:PATH" (the embedded
// file, the default), "postgres://…" (a libpq URL) or "rethinkdb://…".
package stores

import (
	"context"
	"fmt"
	"strings"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/bolt"
	"github.com/kronos-sync/kronos-server/feed/postgres"
	"github.com/kronos-sync/kronos-server/feed/rethinkdb"
)

// Open opens the backend named by url.
// Errors that retrying cannot mend wrap ErrConfig.
func Open(ctx context.Context, url string, opts feed.Options) (feed.Backend, error) {
	if err := opts.Validate(); err != nil {
		return feed.Backend{}, fmt.Errorf("store: %w: %w", ErrConfig, err)
	}
	scheme, rest, _ := strings.Cut(url, ":")
	switch scheme {
	case "bolt":
		s, err := bolt.Open(strings.TrimPrefix(rest, "//"), opts)
		if err != nil {
			return feed.Backend{}, err
		}
		return feed.Backend{Store: s, Feed: s}, nil
	case "postgres", "postgresql":
		s, err := postgres.Open(ctx, url, opts)
		if err != nil {
			return feed.Backend{}, err
		}
		registerFeedUp(opts.Registerer, s)
		return feed.Backend{Store: s, Feed: s}, nil
	case "rethinkdb":
		s, err := rethinkdb.Open(ctx, url, opts)
		if err != nil {
			return feed.Backend{}, err
		}
		registerFeedUp(opts.Registerer, s)
		return feed.Backend{Store: s, Feed: s}, nil
	}
	return feed.Backend{}, fmt.Errorf("store %q: %w: unknown scheme %q (want bolt:PATH, postgres://… or rethinkdb://…)",
		feed.RedactURL(url), ErrConfig, scheme)
}

// ErrConfig marks an error no retry can mend: a bad URL or options.
var ErrConfig = feed.ErrConfig
