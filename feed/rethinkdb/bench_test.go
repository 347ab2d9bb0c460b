package rethinkdb_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/rethinkdb"
	"github.com/kronos-sync/kronos-server/internal/rethinktest"
)

// BenchmarkWatchResubscribe: what one more login costs the feed when
// thousands of users are watched already: its shard's changefeed is
// rebuilt over every user of the shard (users/16 of them), the new user's
// log is read, and the old feed is closed. Run on a real RethinkDB:
//
//	KRONOS_TEST_RETHINKDB=rethinkdb://127.0.0.1:28015 go test ./feed/rethinkdb -run XXX -bench WatchResubscribe
func BenchmarkWatchResubscribe(b *testing.B) {
	for _, watched := range []int{100, 1000, 5000} {
		b.Run(fmt.Sprintf("watched=%d", watched), func(b *testing.B) {
			s, err := rethinkdb.Open(context.Background(), rethinktest.URL(b), feed.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			s.Subscribe(func([]feed.Change) {})
			ctx := context.Background()
			// Users need not exist to be watched: the feed filters the log
			// by user id. Watch them in parallel so the rebuilds batch.
			var wg sync.WaitGroup
			sem := make(chan struct{}, 256)
			for i := range watched {
				wg.Add(1)
				sem <- struct{}{}
				go func() {
					defer func() { <-sem; wg.Done() }()
					if err := s.Watch(ctx, fmt.Sprintf("user-%06d", i), 0); err != nil {
						b.Error(err)
					}
				}()
			}
			wg.Wait()
			b.ResetTimer()
			for i := range b.N {
				user := fmt.Sprintf("extra-%06d", i)
				if err := s.Watch(ctx, user, 0); err != nil {
					b.Fatal(err)
				}
				s.Unwatch(user)
			}
		})
	}
}
