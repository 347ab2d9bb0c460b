package postgres

import (
	"context"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/internal/pgtest"
)

// A node that fell behind past the pruned part of the log must not skip
// changes silently: its devices are told to re-sync.
func TestPostgresGapAsksForResync(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, pgtest.URL(t), feed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := make(chan feed.Change, 16)
	s.Subscribe(func(cs []feed.Change) {
		for _, c := range cs {
			got <- c
		}
	})
	sess, err := s.Login(ctx, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Watch(ctx, sess.UserID, sess.Seq); err != nil {
		t.Fatal(err)
	}
	create := func(id string) {
		if err := s.Write(ctx, &feed.Write{Kind: feed.WriteCreate, UserID: sess.UserID, Task: []byte(`{"id":` + id + `}`)}); err != nil {
			t.Fatal(err)
		}
	}
	next := func() feed.Change {
		select {
		case c := <-got:
			return c
		case <-time.After(10 * time.Second):
			t.Fatal("no change delivered")
		}
		return feed.Change{}
	}
	create("1")
	if c := next(); c.Kind != feed.ChangeCreate || c.Seq != 1 {
		t.Fatalf("first change %+v", c)
	}
	// Pretend this node had delivered nothing, and the log was pruned.
	create("2")
	if c := next(); c.Seq != 2 {
		t.Fatalf("second change %+v", c)
	}
	if _, err := s.pool.Exec(ctx, `DELETE FROM kronos_changes`); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.watched[sess.UserID].delivered = 0
	s.mu.Unlock()
	create("3")
	if c := next(); c.Kind != feed.ChangeResync || c.UserID != sess.UserID {
		t.Fatalf("want a resync, got %+v", c)
	}
	create("4")
	if c := next(); c.Kind != feed.ChangeCreate || c.Seq != 4 {
		t.Fatalf("after the resync: %+v", c)
	}
}
