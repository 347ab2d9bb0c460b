package node_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/bolt"
	"github.com/kronos-sync/kronos-server/internal/nodetest"
	"github.com/kronos-sync/kronos-server/node"
	"github.com/kronos-sync/kronos-server/node/client"
)

// The embedded store commits writes asynchronously (feed.AsyncWriter): the
// worker that read a write does not wait for its commit. Requests sent
// together still get their answers in request order, a write's answer being
// the notification of its change to the device that made it: a refusal or
// a read-all never overtakes the notification of a write sent before it
// (the two commit together, and the notification goes through the fan-out
// while the refusal would not). A store without AsyncWriter (PostgreSQL,
// RethinkDB) keeps the same order. Rounds, because the order broken is a
// race that an unlucky round can miss.
func TestPipelinedRequestsAnswerInOrder(t *testing.T) {
	blocking := func(t *testing.T) *harness {
		s := openBolt(t)
		// Only feed.Store's methods: the node writes through Write.
		b := &feed.Backend{Store: struct{ feed.Store }{s}, Feed: s}
		n := nodetest.Start(t, nodetest.Options{Backend: b})
		return &harness{t: t, node: n, addr: n.Addr}
	}
	stores := map[string]func(*testing.T) *harness{
		"async":    func(t *testing.T) *harness { return start(t, node.Options{}) },
		"blocking": blocking,
	}
	requests := []string{
		`{"type":"delete","task_id":99,"version":2}`,
		`{"type":"read-all"}`,
		`{"type":"create","task":{"id":1,"desc":"a"},"version":3}`,
		`{"type":"read-all"}`,
		`{"type":"update","task":{"id":1,"desc":"b"},"version":4}`,
		`{"type":"update","task":{"id":7,"desc":"c"},"version":5}`,
		`{"type":"create","task":{"id":2},"version":6}`,
		`{"type":"create","task":{"id":2},"version":7}`,
		`{"type":"read-all"}`,
	}
	want := []string{
		"error delete", "read-all -1 []",
		"create 3", "read-all 3 [map[desc:a id:1]]",
		"update 4", "error update",
		"create 6", "error create",
		"read-all 6 [map[desc:b id:1] map[id:2]]",
	}
	for name, open := range stores {
		t.Run(name, func(t *testing.T) {
			h := open(t)
			for _, tr := range transports {
				t.Run(string(tr), func(t *testing.T) {
					for range 10 {
						c, _ := h.login(tr, "", "")
						if tr == client.TCP {
							sendRaw(t, c, strings.Join(requests, "\n")) // one write: one read on the node
						} else {
							for _, r := range requests {
								sendRaw(t, c, r)
							}
						}
						var got []string
						for len(got) < len(want) {
							m := next(t, c)
							switch {
							case !m.Success():
								got = append(got, "error "+m.Type())
							case m.Type() == "read-all":
								got = append(got, fmt.Sprintf("read-all %v %v", m["version"], m["tasks"]))
							default:
								got = append(got, fmt.Sprintf("%s %v", m.Type(), m["version"]))
							}
						}
						if fmt.Sprint(got) != fmt.Sprint(want) {
							t.Fatalf("got   %q\nwant  %q", got, want)
						}
						c.Close()
					}
				})
			}
		})
	}
}

// heldWrites is the embedded store with a gate before its committer: a
// write reaches the store only when the test opens the gate, as when the
// committer is far behind. Writes reach it in the order they were queued.
type heldWrites struct {
	*bolt.Store
	queued  chan struct{}
	gate    chan struct{}
	forward chan func()
}

func (s *heldWrites) WriteAsync(_ context.Context, w *feed.Write, done func(error)) error {
	s.queued <- struct{}{}
	s.forward <- func() {
		if err := s.Store.WriteAsync(context.Background(), w, done); err != nil {
			done(err)
		}
	}
	return nil
}

func startHeld(t *testing.T, opts node.Options) (*heldWrites, *nodetest.Node) {
	t.Helper()
	s := openBolt(t)
	held := &heldWrites{Store: s, queued: make(chan struct{}, 64), gate: make(chan struct{}),
		forward: make(chan func(), 64)}
	go func() {
		<-held.gate
		for f := range held.forward {
			f()
		}
	}()
	t.Cleanup(func() { close(held.forward) })
	n := nodetest.Start(t, nodetest.Options{Node: opts, Backend: &feed.Backend{Store: held, Feed: s}})
	return held, n
}

// A device's writes sent faster than they commit are queued together, not
// one per commit: a read worker does not wait for a write's commit before
// it queues the same connection's next write, so they can join one commit.
// Their notifications keep their order.
func TestWritesQueueWhileTheOneBeforeCommits(t *testing.T) {
	held, n := startHeld(t, node.Options{})
	c := loginTCP(t, n.Addr)
	const writes = 5
	var batch []string
	for i := range writes {
		batch = append(batch, fmt.Sprintf(`{"type":"create","task":{"id":%d,"desc":"t"},"version":%d}`, i+1, i+1))
	}
	sendRaw(t, c, strings.Join(batch, "\n"))
	for i := range writes {
		select {
		case <-held.queued:
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of %d writes queued while the first is held: the next waits for its commit", i, writes)
		}
	}
	close(held.gate)
	for i := range writes {
		if m := expectType(t, c, "create"); fmt.Sprint(m["version"]) != fmt.Sprint(i+1) {
			t.Fatalf("notification %d: %v", i+1, m)
		}
	}
}

// An answer the node gives at once (a malformed write, a read-all) waits
// for the answers of the writes queued before it, even when the store is
// behind: the client sees its answers in the order of its requests.
func TestAnswersWaitForQueuedWrites(t *testing.T) {
	held, n := startHeld(t, node.Options{})
	c := loginTCP(t, n.Addr)
	sendRaw(t, c, strings.Join([]string{
		`{"type":"create","task":{"id":1,"desc":"a"},"version":2}`,
		`{"type":"update","task":{"id":9,"desc":"missing"},"version":3}`,
		`{"type":"update","version":4}`,
		`{"type":"read-all"}`,
	}, "\n"))
	<-held.queued
	<-held.queued
	// Nothing is answered while the writes before are held. (A bounded
	// wait: it cannot fail a correct node, and catches one that answers
	// the malformed write at once.)
	if m, err := c.Next(300 * time.Millisecond); err == nil {
		t.Fatalf("answered %v while the writes before it were held", m)
	}
	close(held.gate)
	var got []string
	for len(got) < 4 {
		m := next(t, c)
		switch {
		case !m.Success():
			got = append(got, fmt.Sprintf("error %s %v", m.Type(), m["error"]))
		default:
			got = append(got, fmt.Sprintf("%s %v", m.Type(), m["version"]))
		}
	}
	// The create's notification may come before or after the update's
	// answer (they take different paths); answers keep their order.
	var answers []string
	for _, g := range got {
		if !strings.HasPrefix(g, "create") {
			answers = append(answers, g)
		}
	}
	if len(answers) != 3 || !strings.HasPrefix(answers[0], "error update task 9 not found") ||
		!strings.HasPrefix(answers[1], "error update missing task") || answers[2] != "read-all 2" {
		t.Fatalf("answers %q, want the refused update's, the malformed update's, then read-all at version 2", answers)
	}
}

// A write that has not committed within StoreTimeout is answered "store
// timed out", and the connection's next requests go on; if it commits later
// it is notified like any other.
func TestSlowAsyncWriteTimesOut(t *testing.T) {
	held, n := startHeld(t, node.Options{StoreTimeout: 200 * time.Millisecond})
	c := loginTCP(t, n.Addr)
	sendRaw(t, c, `{"type":"create","task":{"id":1,"desc":"late"},"version":1}`)
	<-held.queued
	expectError(t, c, "create", "store timed out, try again")
	send(t, c, map[string]any{"type": "read-all"})
	if m := expectType(t, c, "read-all"); fmt.Sprint(m["tasks"]) != "[]" {
		t.Fatalf("read-all while the write waits: %v", m)
	}
	close(held.gate)
	if m := expectType(t, c, "create"); fmt.Sprint(m["version"]) != "1" {
		t.Fatalf("the late write's notification: %v", m)
	}
	send(t, c, map[string]any{"type": "read-all"})
	if m := expectType(t, c, "read-all"); fmt.Sprint(m["version"]) != "1" {
		t.Fatalf("read-all after the late commit: %v (a second answer to the write?)", m)
	}
}

// Shutdown waits for writes queued on the store, so that their changes are
// delivered before the fan-out stops: with one held past its deadline it
// says so. The client resets its connection: after a FIN the node would
// keep the connection open for the write's answer (a half-close).
func TestShutdownWaitsForQueuedWrites(t *testing.T) {
	held, n := startHeld(t, node.Options{})
	c := loginTCP(t, n.Addr)
	sendRaw(t, c, `{"type":"create","task":{"id":1,"desc":"held"},"version":1}`)
	<-held.queued
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		tc.SetLinger(0) // close sends a reset
	}
	c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := n.Shutdown(ctx); err == nil || !strings.Contains(err.Error(), "writes still committing") {
		t.Fatalf("Shutdown with a write held: %v, want it to wait for the write", err)
	}
	close(held.gate) // the harness's own Shutdown then finds nothing in flight
}

// A write larger than the pipelining bound holds its read worker until it
// is answered, as every write did before pipelining: the connection's next
// write is not queued while it waits. Both are notified, in order.
func TestLargeWriteIsNotPipelined(t *testing.T) {
	held, n := startHeld(t, node.Options{})
	c := loginTCP(t, n.Addr)
	large := `{"type":"create","task":{"id":1,"desc":"` + strings.Repeat("x", 20<<10) + `"},"version":1}`
	sendRaw(t, c, large+"\n"+`{"type":"create","task":{"id":2,"desc":"small"},"version":2}`)
	<-held.queued
	// A bounded wait: it cannot fail a correct node, and catches one that
	// queues the next write at once.
	select {
	case <-held.queued:
		t.Fatal("the write after a large one was queued while the large one was held")
	case <-time.After(300 * time.Millisecond):
	}
	close(held.gate)
	for i := range 2 {
		if m := expectType(t, c, "create"); fmt.Sprint(m["version"]) != fmt.Sprint(i+1) {
			t.Fatalf("notification %d: %v", i+1, m)
		}
	}
}

// A WebSocket message over the size limit is answered after the writes
// queued before it, like any other answer.
func TestFramingErrorWaitsForQueuedWrites(t *testing.T) {
	opts := node.Options{}
	opts.Conn.MaxMessageBytes = 1 << 10
	held, n := startHeld(t, opts)
	c, err := client.Dial(context.Background(), client.WebSocket, n.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Login("", "", wait); err != nil {
		t.Fatal(err)
	}
	sendRaw(t, c, `{"type":"update","task":{"id":9,"desc":"missing"},"version":3}`)
	sendRaw(t, c, `{"type":"create","task":{"id":1,"desc":"`+strings.Repeat("x", 2000)+`"}}`)
	<-held.queued
	if m, err := c.Next(300 * time.Millisecond); err == nil {
		t.Fatalf("answered %v while the write before it was held", m)
	}
	close(held.gate)
	expectError(t, c, "update", "task 9 not found")
	expectError(t, c, "", "message exceeds 1024 bytes")
}

// A write that waited for room among its connection's writes in flight is
// dropped if the connection closed meanwhile (here a takeover by the same
// device): it was never answered, and applying it would put it behind the
// writes of the connection that took over.
func TestWriteWaitingPastItsConnectionIsDropped(t *testing.T) {
	held, n := startHeld(t, node.Options{})
	old, err := client.Dial(context.Background(), client.TCP, n.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { old.Close() })
	m, err := old.Login("", "", wait)
	if err != nil {
		t.Fatal(err)
	}
	const inFlight = 16 // maxPipelinedWrites
	var batch []string
	for i := range inFlight + 1 {
		batch = append(batch, fmt.Sprintf(`{"type":"create","task":{"id":%d,"desc":"old"},"version":%d}`, i+1, i+1))
	}
	sendRaw(t, old, strings.Join(batch, "\n"))
	for range inFlight {
		<-held.queued
	}
	// The 17th waits in its worker. The same device logs in again.
	c, err := client.Dial(context.Background(), client.TCP, n.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Login(m.Str("user_id"), m.Str("device_id"), wait); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, old)
	close(held.gate)
	for i := range inFlight {
		if m := expectType(t, c, "create"); fmt.Sprint(m["version"]) != fmt.Sprint(i+1) {
			t.Fatalf("notification %d: %v", i+1, m)
		}
	}
	send(t, c, map[string]any{"type": "read-all"})
	if m := expectType(t, c, "read-all"); fmt.Sprint(m["version"]) != fmt.Sprint(inFlight) {
		t.Fatalf("read-all after the takeover: version %v, want %d (the waiting write applied after its connection closed?)", m["version"], inFlight)
	}
}
