package feed

import (
	"context"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/internal/pgtest"
)

// A node that fell behind past the pruned part of the log must not skip
// changes silently: its devices are told to re-sync.
func TestPostgresGapAsksForResync(t *testing.T) {
	ctx := context.Background()
	store, err := OpenPostgres(ctx, pgtest.URL(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	s := store.(*pgStore)
	got := make(chan Change, 16)
	s.Subscribe(func(cs []Change) {
		for _, c := range cs {
			got <- c
		}
	})
	sess, err := s.Login(ctx, "", "")
	if err != nil {
		t.Fatal(err)
	}
	s.Watch(sess.UserID)
	create := func(id string) {
		if err := s.Write(ctx, &Write{Kind: WriteCreate, UserID: sess.UserID, Task: []byte(`{"id":` + id + `}`)}); err != nil {
			t.Fatal(err)
		}
	}
	next := func() Change {
		select {
		case c := <-got:
			return c
		case <-time.After(10 * time.Second):
			t.Fatal("no change delivered")
		}
		return Change{}
	}
	create("1")
	if c := next(); c.Kind != ChangeCreate || c.Seq != 1 {
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
	if c := next(); c.Kind != ChangeResync || c.UserID != sess.UserID {
		t.Fatalf("want a resync, got %+v", c)
	}
	create("4")
	if c := next(); c.Kind != ChangeCreate || c.Seq != 4 {
		t.Fatalf("after the resync: %+v", c)
	}
}
