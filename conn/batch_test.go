package conn

import (
	"bufio"
	"testing"
)

// Batched sends wait in the queue until Flush, which writes each
// connection's together, in order with the sends around them.
func TestBatchWritesOnFlushInOrder(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s, r := serve(t, engine, Options{})
		a, b := dial(t, s), dial(t, s)
		write(t, a, []byte(`{}`))
		ca := r.message(t).c
		write(t, b, []byte(`{}`))
		cb := r.message(t).c

		var batch Batch
		for _, msg := range []string{`{"n":1}`, `{"n":2}`} {
			if !ca.SendBatched([]byte(msg), &batch) || !cb.SendBatched([]byte(msg), &batch) {
				t.Fatal("batched send refused")
			}
		}
		if ca.QueuedBytes() == 0 || cb.QueuedBytes() == 0 {
			t.Fatal("batched sends written before Flush")
		}
		ca.Send([]byte(`{"n":3}`)) // queued behind them, not before
		if len(batch.conns) != 2 {
			t.Fatalf("%d connections in the batch, want 2", len(batch.conns))
		}
		batch.Flush()
		for _, c := range []struct {
			r    *bufio.Reader
			want []string
		}{{bufio.NewReader(a), []string{`{"n":1}`, `{"n":2}`, `{"n":3}`}}, {bufio.NewReader(b), []string{`{"n":1}`, `{"n":2}`}}} {
			for _, want := range c.want {
				if line, err := c.r.ReadString('\n'); err != nil || line != want+"\n" {
					t.Fatalf("read %q, %v; want %s", line, err, want)
				}
			}
		}
		waitUntil(t, func() bool { return ca.QueuedBytes() == 0 && cb.QueuedBytes() == 0 })
	})
}
