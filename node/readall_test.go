package node_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/bolt"
	"github.com/kronos-sync/kronos-server/internal/nodetest"
	"github.com/kronos-sync/kronos-server/node"
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

// heldReads is the embedded store whose ReadAll says when it has read,
// and, while a gate is set, waits at it after reading, as a slow read does.
type heldReads struct {
	*bolt.Store
	reads chan struct{} // one per read done

	mu   sync.Mutex
	gate chan struct{}
}

func (s *heldReads) ReadAll(ctx context.Context, userID string) (feed.Snapshot, error) {
	snap, err := s.Store.ReadAll(ctx, userID)
	s.mu.Lock()
	gate := s.gate
	s.mu.Unlock()
	s.reads <- struct{}{}
	if gate != nil {
		<-gate
	}
	return snap, err
}

// holdReads sets a gate; the test releases it, or its cleanup does, so
// that a failure does not leave the node's worker waiting.
func (s *heldReads) holdReads(t *testing.T) (release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	gate := make(chan struct{})
	s.gate = gate
	var once sync.Once
	release = func() {
		once.Do(func() {
			s.mu.Lock()
			s.gate = nil
			s.mu.Unlock()
			close(gate)
		})
	}
	t.Cleanup(release)
	return release
}

// openBolt opens a fresh embedded store, closed when the test ends.
func openBolt(t *testing.T) *bolt.Store {
	t.Helper()
	s, err := bolt.Open(filepath.Join(t.TempDir(), "kronos.db"), feed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func await(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(wait):
		t.Fatalf("%s did not happen in %v", what, wait)
	}
}

// A read-all answer takes its place among the device's notifications by
// what it includes: after the notifications of the changes it holds, and
// before those of later changes, however the feed's timing falls; and
// every notification still reaches the device. Otherwise a client that
// replaces its tasks with the answer could apply a change twice, or lose
// one.
func TestReadAllIsOrderedAmongNotifications(t *testing.T) {
	for _, tr := range transports {
		t.Run(string(tr), func(t *testing.T) {
			s := openBolt(t)
			store := &heldReads{Store: s, reads: make(chan struct{}, 8)}
			fd := &heldFeed{Feed: s, arrived: make(chan struct{}, 64)}
			n := nodetest.Start(t, nodetest.Options{Backend: &feed.Backend{Store: store, Feed: fd}})
			h := &harness{t: t, node: n, addr: n.Addr}

			a, m := h.login(tr, "", "")
			b, _ := h.login(tr, m.Str("user_id"), "")
			create := func(c *client.Client, id int) {
				send(t, c, map[string]any{"type": "create", "task": map[string]any{"id": id}, "version": id})
			}
			// messages reads c's next n messages, in short.
			messages := func(c *client.Client, n int) string {
				var got []string
				for range n {
					m := next(t, c)
					switch m.Type() {
					case "read-all":
						got = append(got, fmt.Sprintf("read-all %v %v", m["version"], m["tasks"]))
					default:
						got = append(got, fmt.Sprintf("%s %v", m.Type(), m["task"]))
					}
				}
				return strings.Join(got, ", ")
			}
			expect := func(c *client.Client, want ...string) {
				t.Helper()
				if got := messages(c, len(want)); got != strings.Join(want, ", ") {
					t.Fatalf("got  %s\nwant %s", got, strings.Join(want, ", "))
				}
			}

			// Task 1 is read, then notified while B's read waits to be
			// answered: its notification goes first.
			fd.hold()
			create(a, 1)
			await(t, fd.arrived, "task 1's commit")
			release := store.holdReads(t)
			send(t, b, map[string]any{"type": "read-all"})
			await(t, store.reads, "B's read")
			fd.release()
			expect(a, "create map[id:1]") // the fan-out round that reached B too
			release()
			expect(b, "create map[id:1]", "read-all 1 [map[id:1]]")

			// Task 2 is read, and B's answer is in line (B's next request,
			// a write, has committed) before task 2's notification comes:
			// the answer waits for it.
			fd.hold()
			create(a, 2)
			await(t, fd.arrived, "task 2's commit")
			send(t, b, map[string]any{"type": "read-all"})
			await(t, store.reads, "B's read")
			create(b, 3)
			await(t, fd.arrived, "task 3's commit")
			fd.release()
			expect(b, "create map[id:2]", "read-all 2 [map[id:1] map[id:2]]", "create map[id:3]")
			expect(a, "create map[id:2]", "create map[id:3]")

			// Task 4 commits and is notified while B's read (tasks 1-3)
			// waits to be answered: its notification comes after.
			release = store.holdReads(t)
			send(t, b, map[string]any{"type": "read-all"})
			await(t, store.reads, "B's read")
			create(a, 4)
			expect(a, "create map[id:4]") // the fan-out round that reached B too
			release()
			expect(b, "read-all 3 [map[id:1] map[id:2] map[id:3]]", "create map[id:4]")
		})
	}
}

// A read-all answer that waits for notifications still on their way waits
// at most --store-timeout: a feed far behind does not hold the device's
// answers. The notification, when it comes, still reaches the device.
func TestReadAllWaitsForTheFeedAtMostStoreTimeout(t *testing.T) {
	s := openBolt(t)
	fd := &heldFeed{Feed: s, arrived: make(chan struct{}, 64)}
	n := nodetest.Start(t, nodetest.Options{Node: node.Options{StoreTimeout: time.Second},
		Backend: &feed.Backend{Store: s, Feed: fd}})
	h := &harness{t: t, node: n, addr: n.Addr}
	a, m := h.login(client.TCP, "", "")
	b, _ := h.login(client.WebSocket, m.Str("user_id"), "")

	fd.hold()
	send(t, a, map[string]any{"type": "create", "task": map[string]any{"id": 1}, "version": 1})
	await(t, fd.arrived, "task 1's commit")
	send(t, b, map[string]any{"type": "read-all"})
	if m := expectType(t, b, "read-all"); fmt.Sprint(m["tasks"]) != "[map[id:1]]" {
		t.Fatalf("read-all %v, want task 1", m)
	}
	fd.release()
	for _, c := range []*client.Client{b, a} {
		if m := expectType(t, c, "create"); fmt.Sprint(m["task"]) != "map[id:1]" {
			t.Fatalf("got %v, want task 1's notification", m)
		}
	}
}

// The read-alls of one user's devices share store reads: while one read
// runs, every device that asks waits for the next, and that one read
// answers them all. None of them takes the running read's answer, which may
// lack a change notified to it before it asked.
func TestReadAllsOfOneUserShareReads(t *testing.T) {
	s := openBolt(t)
	store := &heldReads{Store: s, reads: make(chan struct{}, 64)}
	n := nodetest.Start(t, nodetest.Options{Backend: &feed.Backend{Store: store, Feed: s}})
	h := &harness{t: t, node: n, addr: n.Addr}
	writer, m := h.login(client.TCP, "", "")
	user := m.Str("user_id")
	const devices = 8
	var d []*client.Client
	for i := range devices {
		c, _ := h.login(transports[i%2], user, "")
		d = append(d, c)
	}

	release := store.holdReads(t)
	send(t, d[0], map[string]any{"type": "read-all"})
	await(t, store.reads, "the first read") // it read no task, and waits
	send(t, writer, map[string]any{"type": "create", "task": map[string]any{"id": 1}, "version": 1})
	expectType(t, writer, "create")
	for _, c := range d[1:] {
		expectType(t, c, "create") // task 1 is notified to them before they ask
		send(t, c, map[string]any{"type": "read-all"})
	}
	eventually(t, wait, "every later read-all waits for the next read", func() bool {
		return node.ReadAllsWaiting(n.Node, user) == devices-1
	})
	release()

	first := expectType(t, d[0], "read-all")
	if fmt.Sprint(first["tasks"]) != "[]" {
		t.Fatalf("the first read-all %v, want no task (read before task 1)", first)
	}
	expectType(t, d[0], "create") // task 1, after the answer that lacks it
	for i, c := range d[1:] {
		if m := expectType(t, c, "read-all"); fmt.Sprint(m["tasks"]) != "[map[id:1]]" {
			t.Fatalf("device %d: read-all %v, want task 1", i+1, m)
		}
	}
	await(t, store.reads, "the second read")
	if extra := len(store.reads); extra != 0 {
		t.Fatalf("%d more store reads, want 2 for %d read-alls", extra, devices)
	}
}

// A read-all waiting for the next read is not failed by its own store
// timeout: that read starts only when the running one ends, and has a
// timeout of its own. Here the running read returns after the waiting
// requests' own StoreTimeout has passed, and they are still answered.
func TestReadAllWaitingForTheNextReadIsAnswered(t *testing.T) {
	s := openBolt(t)
	const timeout = 300 * time.Millisecond
	store := &heldReads{Store: s, reads: make(chan struct{}, 64)}
	n := nodetest.Start(t, nodetest.Options{Node: node.Options{StoreTimeout: timeout},
		Backend: &feed.Backend{Store: store, Feed: s}})
	h := &harness{t: t, node: n, addr: n.Addr}
	a, m := h.login(client.TCP, "", "")
	user := m.Str("user_id")
	b, _ := h.login(client.WebSocket, user, "")
	c, _ := h.login(client.TCP, user, "")

	release := store.holdReads(t)
	send(t, a, map[string]any{"type": "read-all"})
	await(t, store.reads, "the running read")
	send(t, b, map[string]any{"type": "read-all"})
	send(t, c, map[string]any{"type": "read-all"})
	asked := time.Now()
	eventually(t, wait, "both wait for the next read", func() bool {
		return node.ReadAllsWaiting(n.Node, user) == 2
	})
	time.Sleep(time.Until(asked.Add(2 * timeout))) // lets their own StoreTimeout pass
	release()
	for _, cl := range []*client.Client{a, b, c} {
		if m := next(t, cl); m.Type() != "read-all" || m["error"] != nil {
			t.Fatalf("got %v, want a read-all answer", m)
		}
	}
}
