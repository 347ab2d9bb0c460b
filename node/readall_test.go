package node_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/bolt"
	"github.com/kronos-sync/kronos-server/internal/nodetest"
	"github.com/kronos-sync/kronos-server/node/client"
)

// heldFeed is the embedded store's feed with a gate before the node's
// Sink: while held, committed changes wait, as when the feed is behind.
type heldFeed struct {
	feed.Feed
	sink    feed.Sink
	arrived chan struct{} // one per batch that waits

	mu      sync.Mutex
	held    bool
	waiting []feed.Change
}

func (f *heldFeed) Subscribe(sink feed.Sink) {
	f.sink = sink
	f.Feed.Subscribe(f.forward)
}

func (f *heldFeed) forward(changes []feed.Change) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.held {
		f.waiting = append(f.waiting, changes...)
		f.arrived <- struct{}{}
		return
	}
	f.sink(changes)
}

func (f *heldFeed) hold() {
	f.mu.Lock()
	f.held = true
	f.mu.Unlock()
}

func (f *heldFeed) release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.held = false
	if len(f.waiting) > 0 {
		f.sink(f.waiting)
		f.waiting = nil
	}
}

// heldReads is the embedded store whose ReadAll, while a gate is set,
// waits at it after reading, as a slow read does.
type heldReads struct {
	*bolt.Store
	read chan struct{} // a read is done and waits at the gate

	mu   sync.Mutex
	gate chan struct{}
}

func (s *heldReads) ReadAll(ctx context.Context, userID string) (feed.Snapshot, error) {
	snap, err := s.Store.ReadAll(ctx, userID)
	s.mu.Lock()
	gate := s.gate
	s.mu.Unlock()
	if gate != nil {
		s.read <- struct{}{}
		<-gate
	}
	return snap, err
}

func (s *heldReads) holdReads() chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gate = make(chan struct{})
	return s.gate
}

func (s *heldReads) releaseReads(gate chan struct{}) {
	s.mu.Lock()
	s.gate = nil
	s.mu.Unlock()
	close(gate)
}

// A read-all answer takes its place among the device's notifications by
// what it includes: a change it holds is not notified again after it
// (even when its notification was still on its way), and a change it does
// not hold is notified after it (even when it arrived during the read).
// Otherwise a client that replaces its tasks with the answer would see a
// task created twice, or lose one.
func TestReadAllIsOrderedAmongNotifications(t *testing.T) {
	for _, tr := range transports {
		t.Run(string(tr), func(t *testing.T) {
			s, err := bolt.Open(filepath.Join(t.TempDir(), "kronos.db"), feed.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			store := &heldReads{Store: s, read: make(chan struct{}, 1)}
			fd := &heldFeed{Feed: s, arrived: make(chan struct{}, 64)}
			n := nodetest.Start(t, nodetest.Options{Backend: &feed.Backend{Store: store, Feed: fd}})
			h := &harness{t: t, node: n, addr: n.Addr}

			a, m := h.login(tr, "", "")
			b, _ := h.login(tr, m.Str("user_id"), "")
			create := func(id int) {
				send(t, a, map[string]any{"type": "create", "task": map[string]any{"id": id}, "version": id})
			}
			readAll := func() string {
				m := expectType(t, b, "read-all")
				return fmt.Sprintf("version %v tasks %v", m["version"], m["tasks"])
			}
			notified := func(c *client.Client) string {
				m := expectType(t, c, "create")
				return fmt.Sprint(m["task"])
			}

			// Task 1 commits; its notification waits in the feed while B
			// reads it.
			fd.hold()
			create(1)
			<-fd.arrived
			send(t, b, map[string]any{"type": "read-all"})
			if got := readAll(); got != "version 1 tasks [map[id:1]]" {
				t.Fatalf("read-all after task 1 committed: %s", got)
			}
			fd.release()
			if got := notified(a); got != "map[id:1]" { // the round that reached B too
				t.Fatalf("A was notified of %s, want task 1", got)
			}
			create(2)
			if got := notified(b); got != "map[id:2]" {
				t.Fatalf("after its read-all, B was notified of %s, want task 2 (task 1 is in the answer)", got)
			}
			notified(a)

			// Task 3 commits and is notified while B's read (tasks 1, 2)
			// waits to be answered.
			gate := store.holdReads()
			released := false
			t.Cleanup(func() { // a failure must not leave the node's worker at the gate
				if !released {
					store.releaseReads(gate)
				}
			})
			send(t, b, map[string]any{"type": "read-all"})
			<-store.read
			create(3)
			if got := notified(a); got != "map[id:3]" { // the round that reached B too
				t.Fatalf("A was notified of %s, want task 3", got)
			}
			store.releaseReads(gate)
			released = true
			if got := readAll(); got != "version 2 tasks [map[id:1] map[id:2]]" {
				t.Fatalf("B's next message: read-all %s, want the read before task 3", got)
			}
			if got := notified(b); got != "map[id:3]" {
				t.Fatalf("after its read-all, B was notified of %s, want task 3", got)
			}
		})
	}
}
