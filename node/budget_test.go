package node_test

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kronos-sync/kronos-server/node"
	"github.com/kronos-sync/kronos-server/node/client"
)

// metricValue reads a gauge or counter of the registry; labels select one
// series by its label values, in the order of the label names.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			for i, want := range labels {
				if m.GetLabel()[i].GetValue() != want {
					continue series
				}
			}
			if g := m.GetGauge(); g != nil {
				return g.GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// Defect 5 of issue 12: connections that never log in, each holding a
// large half message, over raw TCP and WebSocket. The node's held input
// (kronos_input_buffered_bytes) stays within --input-budget-bytes; the
// oldest of the largest holders are cut (a logged-in one told why); a small
// logged-in client, itself holding half a message meanwhile, keeps working.
func TestHalfMessagesStayWithinInputBudget(t *testing.T) {
	const (
		budget   = 4 << 20
		capacity = 1 << 20 // what a 900 KiB half message grows its buffer to
	)
	reg := prometheus.NewRegistry()
	opts := node.Options{Registerer: reg}
	opts.Conn.MaxMessageBytes = 1 << 20
	opts.Conn.InputBudgetBytes = budget
	h := start(t, opts)
	held := func() int64 { return int64(metricValue(t, reg, "kronos_input_buffered_bytes")) }
	cuts := func() int64 { return int64(metricValue(t, reg, "kronos_budget_cuts_total", "input")) }

	// The small client begins a request and leaves it half sent.
	small, _ := h.login(client.WebSocket, "", "")
	first := `{"type":"read-all","pad":"` + strings.Repeat("p", 300)
	smallFrame := maskedFrame(len(first)+2, []byte(first))
	writeAll(t, small, smallFrame)
	smallHeld := int64(max(2*len(smallFrame), 512))
	eventually(t, wait, "the small client's half request held", func() bool { return held() == smallHeld })

	// A logged-in attacker first (the oldest large holder: cut first), then
	// connections that never log in.
	loggedIn, _ := h.login(client.TCP, "", "")
	attackers := []*client.Client{loggedIn}
	for i := range 12 {
		tr := transports[i%2]
		attackers = append(attackers, h.dial(tr))
	}
	for i, a := range attackers {
		half := 900 << 10
		if a.Transport == client.WebSocket {
			writeAll(t, a, maskedFrame(1000<<10, make([]byte, half)))
		} else {
			writeAll(t, a, []byte(`{"type":"create","pad":"`+strings.Repeat("a", half)))
		}
		// Settled: every attacker so far holds its buffer, or was cut.
		eventually(t, wait, fmt.Sprintf("attacker %d settled", i), func() bool {
			return held() == (int64(i+1)-cuts())*capacity+smallHeld
		})
		if got := held(); got > budget {
			t.Fatalf("after attacker %d the node holds %d bytes of unfinished input; the budget is %d", i, got, budget)
		}
	}
	if got := cuts(); got < 13-3 {
		t.Fatalf("%d cuts, want at least 10 (room for 3 of 13)", got)
	}
	if got := metricValue(t, reg, "kronos_connections_closed_total", "memory_budget"); got != float64(cuts()) {
		t.Fatalf("%v closes with reason memory_budget, want %d", got, cuts())
	}
	// The logged-in attacker was told why, then closed.
	expectError(t, loggedIn, "", "server busy")
	expectClosed(t, loggedIn)

	// The small client finishes its request and is answered; it goes on.
	writeAll(t, small, maskedRest([]byte(`"}`), len(first)))
	expectType(t, small, "read-all")
	send(t, small, map[string]any{"type": "create", "task": map[string]any{"id": 1}, "version": 1})
	expectType(t, small, "create")
}

// maskedFrame is the start of a client text frame announcing length bytes,
// with payload (part of them, or all).
func maskedFrame(length int, payload []byte) []byte {
	var b strings.Builder
	ws.WriteHeader(&b, ws.Header{Fin: true, OpCode: ws.OpText, Masked: true, Mask: [4]byte{1, 2, 3, 4}, Length: int64(length)})
	p := append([]byte(nil), payload...)
	ws.Cipher(p, [4]byte{1, 2, 3, 4}, 0)
	return append([]byte(b.String()), p...)
}

// maskedRest is the rest of maskedFrame's payload, from offset on.
func maskedRest(p []byte, offset int) []byte {
	p = append([]byte(nil), p...)
	ws.Cipher(p, [4]byte{1, 2, 3, 4}, offset)
	return p
}

func writeAll(t *testing.T, c *client.Client, p []byte) {
	t.Helper()
	if _, err := c.Conn.Write(p); err != nil {
		t.Fatal(err)
	}
}

// userWithData logs in a new user and gives it about size bytes of tasks,
// created ten at a time so that the writer's own notifications never fill
// a small queue, and returns the user and the writer.
func userWithData(t *testing.T, h *harness, size int) (string, *client.Client) {
	t.Helper()
	writer, m := h.login(client.TCP, "", "")
	const taskBytes = 60 << 10
	desc := strings.Repeat("d", taskBytes-40)
	for id := 0; id < size/taskBytes; {
		var batch strings.Builder
		n := 0
		for ; n < 10 && id < size/taskBytes; n, id = n+1, id+1 {
			fmt.Fprintf(&batch, `{"type":"create","version":%d,"task":{"id":%d,"desc":"%s"}}`, id+1, id, desc)
		}
		sendRaw(t, writer, batch.String())
		for range n {
			expectType(t, writer, "create")
		}
	}
	return m.Str("user_id"), writer
}

// Defect 3 of issue 12: one user with megabytes of tasks, several devices
// asking for read-all and not reading. The answer, larger than
// --max-queue-bytes, still goes out (a user's own data stays readable), but
// all of them hold one copy (kronos_output_queued_bytes counts it once, and
// the node's shared answer is that copy), dropped with them after
// --write-timeout, after which nothing of it stays.
func TestReadAllAnswerIsSharedByTheUsersDevices(t *testing.T) {
	reg := prometheus.NewRegistry()
	opts := node.Options{Registerer: reg, RateLimit: 1e6, RateBurst: 1e6}
	opts.Conn.MaxMessageBytes = 16 << 20
	opts.Conn.MaxQueueBytes = 1 << 20
	opts.Conn.WriteTimeout = time.Second
	h := start(t, opts)
	queued := func() float64 { return metricValue(t, reg, "kronos_output_queued_bytes") }
	readAlls := func() float64 { return metricValue(t, reg, "kronos_requests_total", "done", "read-all") } // labels by name: outcome, type

	user, writer := userWithData(t, h, 6<<20)
	send(t, writer, map[string]any{"type": "read-all"})
	answer := len(nextRaw(t, writer)) // read whole: the writer reads
	if answer <= 6<<20-(200<<10) {
		t.Fatalf("answer of %d bytes", answer)
	}

	const devices = 4
	for i := range devices {
		c, _ := h.login(transports[i%2], user, "")
		send(t, c, map[string]any{"type": "read-all"}) // and never read again
	}
	eventually(t, wait, "every read-all answered", func() bool { return readAlls() == 1+devices })
	shared := node.SharedAnswerOf(h.node.Node, user)
	if shared == nil || len(shared.Bytes()) != answer {
		t.Fatalf("shared answer %v, want one of %d bytes", shared != nil, answer)
	}
	// One copy, counted once: not devices × answer.
	if q := queued(); q < float64(answer) || q >= float64(answer)+64<<10 {
		t.Fatalf("output queued %v bytes, want the answer once (%d)", q, answer)
	}
	shared = nil

	// --write-timeout drops them; nothing of the answer stays.
	eventually(t, 10*time.Second, "the devices that do not read dropped", func() bool { return h.node.Connections() == 1 })
	if q := queued(); q != 0 {
		t.Fatalf("output queued %v bytes after the devices were dropped", q)
	}
	eventually(t, 10*time.Second, "the shared answer collected", func() bool {
		runtime.GC()
		return node.SharedAnswerOf(h.node.Node, user) == nil && node.SharedAnswers(h.node.Node) == 0
	})
}

// A shared read-all answer is one user's state at one point: a write-all
// that changes only the version takes no Seq, so the answer is keyed by the
// version too; a read-all after it gets the new version, however long the
// answer before it is still held.
func TestSharedReadAllAnswerFollowsAVersionOnlyWrite(t *testing.T) {
	h := start(t, node.Options{})
	user, writer := userWithData(t, h, 2*60<<10) // tasks 0 and 1, version 2
	// The answer is held only weakly once the writer has read it: with no
	// collection until the end, it stays held, as a device that does not
	// read would hold it.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	send(t, writer, map[string]any{"type": "read-all"})
	if m := expectType(t, writer, "read-all"); fmt.Sprint(m["version"]) != "2" {
		t.Fatalf("read-all version %v, want 2", m["version"])
	}
	held := node.SharedAnswerOf(h.node.Node, user)
	if held == nil {
		t.Fatal("the answer is not shared")
	}
	desc := strings.Repeat("d", 60<<10-40) // the same tasks, byte for byte
	sendRaw(t, writer, fmt.Sprintf(`{"type":"write-all","version":3,"tasks":[{"id":0,"desc":"%s"},{"id":1,"desc":"%s"}]}`, desc, desc))
	send(t, writer, map[string]any{"type": "read-all"})
	if m := expectType(t, writer, "read-all"); fmt.Sprint(m["version"]) != "3" || len(m["tasks"].([]any)) != 2 {
		t.Fatalf("read-all after the write-all: version %v, %d tasks; want version 3, 2 tasks", m["version"], len(m["tasks"].([]any)))
	}
	runtime.KeepAlive(held)
}

// Past --output-budget-bytes the largest queue is dropped first: a device
// that does not read, holding its user's 6 MiB answer, goes when another
// user's 4 MiB answer would pass the budget; that reader is not affected.
func TestOutputBudgetDropsTheLargestQueueFirst(t *testing.T) {
	const budget = 9 << 20
	reg := prometheus.NewRegistry()
	opts := node.Options{Registerer: reg, RateLimit: 1e6, RateBurst: 1e6}
	opts.Conn.MaxMessageBytes = 16 << 20
	opts.Conn.OutputBudgetBytes = budget
	h := start(t, opts)
	queued := func() float64 { return metricValue(t, reg, "kronos_output_queued_bytes") }

	hoarder, _ := userWithData(t, h, 6<<20)
	reader, readerWriter := userWithData(t, h, 4<<20)
	stuck, _ := h.login(client.WebSocket, hoarder, "")
	send(t, stuck, map[string]any{"type": "read-all"}) // never read
	eventually(t, wait, "the hoarder's answer queued", func() bool { return queued() > 5<<20 })

	send(t, readerWriter, map[string]any{"type": "read-all"})
	if m := expectType(t, readerWriter, "read-all"); len(m["tasks"].([]any)) == 0 {
		t.Fatal("the reader's answer has no tasks")
	}
	expectClosed(t, stuck)
	if got := metricValue(t, reg, "kronos_budget_cuts_total", "output"); got != 1 {
		t.Fatalf("%v output cuts, want 1", got)
	}
	if q := queued(); q > budget {
		t.Fatalf("output queued %v, budget %d", q, budget)
	}
	// The reader's other device too, and writes, go on.
	other, _ := h.login(client.TCP, reader, "")
	send(t, other, map[string]any{"type": "read-all"})
	expectType(t, other, "read-all")
}
