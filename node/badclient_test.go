package node_test

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/conn"
	"github.com/kronos-sync/kronos-server/node"
	"github.com/kronos-sync/kronos-server/node/client"
	"github.com/rs/zerolog"
)

// A client that floods requests is refused past its rate; others are served.
func TestFloodIsRateLimited(t *testing.T) {
	h := start(t, node.Options{RateLimit: 50, RateBurst: 100})
	flooder, _ := h.login(client.TCP, "", "")
	other, _ := h.login(client.TCP, "", "")
	const n = 1000
	go func() {
		req := []byte(`{"type":"read-all"}`)
		var batch []byte
		for range n {
			batch = append(batch, req...)
		}
		flooder.Conn.Write(batch)
	}()
	answered, limited := 0, 0
	for answered+limited < n {
		m := next(t, flooder)
		switch {
		case m.Type() == "read-all" && m.Success():
			answered++
		case strings.Contains(m.Str("error"), "rate limit exceeded"):
			limited++
		default:
			t.Fatalf("unexpected %v", m)
		}
		if answered+limited == 10 { // the flood is under way: others still get answers
			send(t, other, map[string]any{"type": "read-all"})
			expectType(t, other, "read-all")
		}
	}
	// The burst (100, less the token the login spent) passes, plus what the
	// rate refills while the flood is read; the rest is refused. The exact
	// arithmetic is tested with a fixed clock in ratelimit_test.go.
	if answered < 99 || limited < n/2 {
		t.Fatalf("%d answered, %d refused: the limit did not hold", answered, limited)
	}
}

// Bad requests are rate-limited as good ones are: a client that floods
// messages the server refuses, on a connection that stays open, does not
// get an answer for each.
func TestBadRequestFloodIsRateLimited(t *testing.T) {
	h := start(t, node.Options{RateLimit: 50, RateBurst: 100})
	for _, tr := range transports {
		t.Run(string(tr), func(t *testing.T) {
			flooder, _ := h.login(tr, "", "")
			const n = 1000
			go func() {
				for range n {
					if flooder.SendRaw([]byte(`{"no":"type"}`)) != nil {
						return
					}
				}
			}()
			answered, limited := 0, 0
			for answered+limited < n {
				m := next(t, flooder)
				switch {
				case m.Str("error") == "missing request type":
					answered++
				case strings.Contains(m.Str("error"), "rate limit exceeded"):
					limited++
				default:
					t.Fatalf("unexpected %v", m)
				}
			}
			// As in TestFloodIsRateLimited: the burst less the login's
			// token, and what the rate refills while the flood is read.
			if answered < 99 || limited < n/2 {
				t.Fatalf("%d answered, %d refused: the limit did not hold", answered, limited)
			}
		})
	}
}

// A device that never reads is disconnected when its queue passes the
// bound; the other devices of the user keep receiving everything.
func TestNonReaderIsDisconnected(t *testing.T) {
	for _, engine := range []string{conn.EngineEpoll, conn.EngineGoroutine} {
		t.Run(engine, func(t *testing.T) {
			var logs syncBuffer
			opts := node.Options{RateLimit: 1e6, RateBurst: 1e6, Logger: zerolog.New(&logs).Level(zerolog.DebugLevel)}
			opts.Conn.MaxQueueBytes = 256 << 10
			opts.Conn.Engine = engine
			h := start(t, opts)
			user := testNonReader(t, h)
			// The drop is logged at info, with the user's hash, never the id.
			eventually(t, wait, "the drop's log line", func() bool {
				return strings.Contains(logs.String(), `"message":"device dropped"`)
			})
			var line string
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, `"message":"device dropped"`) {
					line = l
				}
			}
			if !strings.Contains(line, `"level":"info"`) || !strings.Contains(line, `"reason":"slow_consumer"`) ||
				!strings.Contains(line, `"user":"`) {
				t.Fatalf("log line %s", line)
			}
			if strings.Contains(logs.String(), user) {
				t.Fatal("a user id reached the log")
			}
		})
	}
}

// syncBuffer is a log sink that the node writes while the test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testNonReader returns the user whose device did not read.
func testNonReader(t *testing.T, h *harness) (user string) {
	writer, m := h.login(client.TCP, "", "")
	user = m.Str("user_id")
	reader, _ := h.login(client.WebSocket, user, "")
	stuck := h.dial(client.TCP)
	if _, err := stuck.Login(user, "", wait); err != nil {
		t.Fatal(err)
	}
	// From here on the stuck device reads nothing.

	var received atomic.Int64
	progress := make(chan struct{}, 1)
	readerDone := make(chan error, 1)
	go func() {
		for {
			m, err := reader.Next(wait)
			if err != nil {
				readerDone <- err
				return
			}
			if m.Type() == "create" || m.Type() == "update" {
				received.Add(1)
				select {
				case progress <- struct{}{}:
				default:
				}
			}
		}
	}()
	go func() { // the writer's own notifications are drained too
		for {
			if _, err := writer.NextRaw(30 * time.Second); err != nil {
				return
			}
		}
	}()

	desc := strings.Repeat("x", 2000)
	const tasks = 500
	sent := 0
	deadline := time.Now().Add(30 * time.Second)
	for round := 0; h.node.Connections() == 3; round++ {
		if time.Now().After(deadline) {
			t.Fatalf("the stuck client was not disconnected after %d notifications", sent)
		}
		var b strings.Builder
		fmt.Fprintf(&b, `{"type":"write-all","version":%d,"tasks":[`, round+1)
		for id := range tasks {
			if id > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"id":%d,"desc":"%s","round":%d}`, id, desc, round)
		}
		b.WriteString("]}")
		sendRaw(t, writer, b.String())
		sent += tasks
		// Wait for this round to reach the reader before the next one, so
		// the writer itself never floods.
		for received.Load() < int64(sent) {
			select {
			case err := <-readerDone:
				t.Fatalf("the reading device lost its connection: %v", err)
			case <-progress:
			case <-time.After(time.Until(deadline)):
				t.Fatalf("reader got %d of %d notifications", received.Load(), sent)
			}
		}
	}
	expectClosed(t, stuck)
	if got := received.Load(); got != int64(sent) {
		t.Fatalf("reader got %d notifications, want %d", got, sent)
	}
	return user
}
