package node_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/conn"
	"github.com/kronos-sync/kronos-server/node"
)

// A client that shuts its side after its requests (`nc -N`, a script) and
// still reads gets every answer: the writes it sent before its FIN are
// answered, its own notifications included, before the node closes.
func TestHalfCloseGetsEveryAnswer(t *testing.T) {
	for _, engine := range []string{conn.EngineEpoll, conn.EngineGoroutine} {
		t.Run(engine, func(t *testing.T) {
			var opts node.Options
			opts.Conn.Engine = engine
			halfCloseRounds(t, start(t, opts))
		})
	}
}

func halfCloseRounds(t *testing.T, h *harness) {
	for round := range 5 {
		nc, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		c := nc.(*net.TCPConn)
		c.SetDeadline(time.Now().Add(wait))
		r := bufio.NewReader(c)
		if _, err := c.Write([]byte(`{"type":"login"}`)); err != nil {
			t.Fatal(err)
		}
		if line, err := r.ReadString('\n'); err != nil || !strings.Contains(line, `"type":"login"`) {
			t.Fatalf("round %d: login answer %q, %v", round, line, err)
		}
		var requests, want []string
		for i := range 20 {
			if i%4 == 3 { // a task that exists: refused
				requests = append(requests, fmt.Sprintf(`{"type":"create","task":{"id":%d},"version":%d}`, i-1, i))
				want = append(want, "error create")
				continue
			}
			requests = append(requests, fmt.Sprintf(`{"type":"create","task":{"id":%d},"version":%d}`, i, i))
			want = append(want, fmt.Sprintf("create %d", i))
		}
		if _, err := c.Write([]byte(strings.Join(requests, "\n"))); err != nil {
			t.Fatal(err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		var got []string
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				if line != "" {
					t.Fatalf("round %d: a partial line %q before %v", round, line, err)
				}
				break // the node closed after the answers
			}
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatalf("round %d: %q: %v", round, line, err)
			}
			if m["success"] == true {
				got = append(got, fmt.Sprintf("%v %v", m["type"], m["version"]))
			} else {
				got = append(got, fmt.Sprintf("error %v", m["type"]))
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("round %d: got  %q\nwant %q", round, got, want)
		}
		c.Close()
	}
}
