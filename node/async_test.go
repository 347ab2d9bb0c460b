package node_test

import (
	"context"
	"fmt"
	"path/filepath"
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
// together still get their answers in order, and a request after a write
// sees it.
func TestPipelinedRequestsAnswerInOrder(t *testing.T) {
	h := start(t, node.Options{})
	for _, tr := range transports {
		t.Run(string(tr), func(t *testing.T) {
			c, _ := h.login(tr, "", "")
			requests := []string{
				`{"type":"delete","task_id":99,"version":2}`,
				`{"type":"read-all"}`,
				`{"type":"create","task":{"id":1,"desc":"a"},"version":3}`,
				`{"type":"read-all"}`,
				`{"type":"update","task":{"id":1,"desc":"b"},"version":4}`,
				`{"type":"update","task":{"id":7,"desc":"c"},"version":5}`,
				`{"type":"read-all"}`,
			}
			if tr == client.TCP {
				sendRaw(t, c, strings.Join(requests, "\n")) // one write: one read on the node
			} else {
				for _, r := range requests {
					sendRaw(t, c, r)
				}
			}
			// Answers (errors and read-alls) come in request order, and a
			// read-all includes the writes sent before it. Notifications
			// come in commit order; one may come after the answer to the
			// next request, as it does with a feed from another node.
			var answers, notified []string
			for len(answers) < 5 || len(notified) < 2 {
				m := next(t, c)
				switch {
				case !m.Success():
					answers = append(answers, "error "+m.Type())
				case m.Type() == "read-all":
					answers = append(answers, fmt.Sprintf("read-all %v %v", m["version"], m["tasks"]))
				default:
					notified = append(notified, fmt.Sprintf("%s %v", m.Type(), m["version"]))
				}
			}
			want := []string{"error delete", "read-all -1 []", "read-all 3 [map[desc:a id:1]]",
				"error update", "read-all 4 [map[desc:b id:1]]"}
			if fmt.Sprint(answers) != fmt.Sprint(want) {
				t.Fatalf("answers %q, want %q", answers, want)
			}
			if fmt.Sprint(notified) != "[create 3 update 4]" {
				t.Fatalf("notifications %q", notified)
			}
		})
	}
}

// heldWrites is the embedded store with a gate before its committer: a
// write reaches the store only when the test opens the gate, as when the
// committer is far behind.
type heldWrites struct {
	*bolt.Store
	queued chan struct{}
	gate   chan struct{}
}

func (s *heldWrites) WriteAsync(_ context.Context, w *feed.Write, done func(error)) error {
	s.queued <- struct{}{}
	go func() {
		<-s.gate
		if err := s.Store.WriteAsync(context.Background(), w, done); err != nil {
			done(err)
		}
	}()
	return nil
}

func startHeld(t *testing.T, opts node.Options) (*heldWrites, *nodetest.Node) {
	t.Helper()
	s, err := bolt.Open(filepath.Join(t.TempDir(), "kronos.db"), feed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	held := &heldWrites{Store: s, queued: make(chan struct{}, 16), gate: make(chan struct{})}
	n := nodetest.Start(t, nodetest.Options{Node: opts, Backend: &feed.Backend{Store: held, Feed: s}})
	return held, n
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
// says so.
func TestShutdownWaitsForQueuedWrites(t *testing.T) {
	held, n := startHeld(t, node.Options{})
	c := loginTCP(t, n.Addr)
	sendRaw(t, c, `{"type":"create","task":{"id":1,"desc":"held"},"version":1}`)
	<-held.queued
	c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := n.Shutdown(ctx); err == nil || !strings.Contains(err.Error(), "writes still committing") {
		t.Fatalf("Shutdown with a write held: %v, want it to wait for the write", err)
	}
	close(held.gate) // the harness's own Shutdown then finds nothing in flight
}
