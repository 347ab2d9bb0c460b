package node_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/kronos-sync/kronos-server/node"
	"github.com/kronos-sync/kronos-server/node/client"
)

// The Vim client writes requests with no separator, several in one write,
// and a request may arrive over many reads.
func TestRawStreamVimHabits(t *testing.T) {
	h := start(t, node.Options{})
	c := h.dial(client.TCP)
	login := `{"type":"login","user_id":"","device_id":"","version":""}`
	for i := range len(login) { // one byte per write
		if _, err := c.Conn.Write([]byte{login[i]}); err != nil {
			t.Fatal(err)
		}
	}
	m := expectType(t, c, "login")
	// Three requests in one write, no separators, one of them with braces
	// and escapes inside strings.
	batch := `{"type":"create","task":{"id":1,"desc":"a } \" { tricky"},"version":1}{"type":"create","task":{"id":2},"version":2}{"type":"read-all"}`
	if _, err := c.Conn.Write([]byte(batch)); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for range 3 {
		kinds[next(t, c).Type()]++
	}
	if kinds["create"] != 2 || kinds["read-all"] != 1 {
		t.Fatalf("got %v", kinds)
	}
	// Whitespace and newlines between values are fine too, and a value
	// split in the middle of a string.
	if _, err := c.Conn.Write([]byte("\n\t {\"type\":\"rea")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Conn.Write([]byte("d-all\",\"user_id\":\"" + m.Str("user_id") + "\"}\r\n")); err != nil {
		t.Fatal(err)
	}
	expectType(t, c, "read-all")
	// Every server message is one JSON object and exactly one "\n".
	c.Conn.SetReadDeadline(time.Now().Add(wait))
	send(t, c, map[string]any{"type": "nope"})
	line, err := bufio.NewReader(c.Conn).ReadString('\n')
	if err != nil || strings.Count(line, "\n") != 1 || !strings.HasPrefix(line, "{") || !strings.HasSuffix(line, "}\n") {
		t.Fatalf("line %q, %v", line, err)
	}
}

func TestRawStreamInvalidJSONCloses(t *testing.T) {
	h := start(t, node.Options{})
	for _, garbage := range []string{"hello\n", "{\"type\":\"login\",,}", "]", "nope", "trux"} {
		c := h.dial(client.TCP)
		sendRaw(t, c, garbage)
		expectError(t, c, "", "invalid JSON")
		expectClosed(t, c)
	}
	// The node is fine for everyone else.
	h.login(client.TCP, "", "")
}

// A scalar is valid JSON but no request; on a raw stream it still closes,
// since where a number ends cannot be told.
func TestRawStreamScalarCloses(t *testing.T) {
	h := start(t, node.Options{})
	for _, scalar := range []string{"5\n", `"login"`, "null"} {
		c := h.dial(client.TCP)
		sendRaw(t, c, scalar)
		expectError(t, c, "", "request must be a JSON object")
		expectClosed(t, c)
	}
	h.login(client.TCP, "", "")
}

func TestWebSocketInvalidJSONKeepsConnection(t *testing.T) {
	h := start(t, node.Options{})
	c := h.dial(client.WebSocket)
	sendRaw(t, c, `{"type":"login",`)
	expectError(t, c, "", "invalid JSON")
	sendRaw(t, c, `{"type":"login"}{"type":"read-all"}`)
	expectError(t, c, "", "invalid JSON")
	if _, err := c.Login("", "", wait); err != nil {
		t.Fatal(err)
	}
}

// A fragmented message with a ping between its fragments is reassembled,
// and the ping is answered at once.
func TestWebSocketFragmentsAndPing(t *testing.T) {
	h := start(t, node.Options{})
	c := h.dial(client.WebSocket)
	write := func(f ws.Frame) {
		t.Helper()
		if err := ws.WriteFrame(c.Conn, ws.MaskFrameInPlace(f)); err != nil {
			t.Fatal(err)
		}
	}
	write(ws.NewFrame(ws.OpText, false, []byte(`{"type":`)))
	write(ws.NewPingFrame([]byte("are you there")))
	write(ws.NewFrame(ws.OpContinuation, false, []byte(`"log`)))
	write(ws.NewFrame(ws.OpContinuation, true, []byte(`in"}`)))
	f, err := c.ReadFrame(wait)
	if err != nil || f.Header.OpCode != ws.OpPong || string(f.Payload) != "are you there" {
		t.Fatalf("want the pong first: %+v %q, %v", f.Header, f.Payload, err)
	}
	f, err = c.ReadFrame(wait)
	if err != nil || f.Header.OpCode != ws.OpText || !f.Header.Fin || !strings.Contains(string(f.Payload), `"type":"login"`) {
		t.Fatalf("want the login answer: %+v %q, %v", f.Header, f.Payload, err)
	}
	// A client close is answered with a close frame, then the connection ends.
	write(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye")))
	f, err = c.ReadFrame(wait)
	if err != nil || f.Header.OpCode != ws.OpClose {
		t.Fatalf("want a close frame: %+v, %v", f.Header, err)
	}
	expectClosed(t, c)
}

func TestWebSocketProtocolErrorCloses(t *testing.T) {
	h := start(t, node.Options{})
	c := h.dial(client.WebSocket)
	// Client frames must be masked.
	if err := ws.WriteFrame(c.Conn, ws.NewTextFrame([]byte(`{"type":"login"}`))); err != nil {
		t.Fatal(err)
	}
	f, err := c.ReadFrame(wait)
	if err != nil || f.Header.OpCode != ws.OpClose {
		t.Fatalf("want a close frame: %+v, %v", f.Header, err)
	}
	if code, _ := ws.ParseCloseFrameData(f.Payload); code != ws.StatusProtocolError {
		t.Fatalf("close code %d, want %d", code, ws.StatusProtocolError)
	}
	expectClosed(t, c)
}

func TestPlainHTTPGetsAnAnswer(t *testing.T) {
	h := start(t, node.Options{})
	for _, req := range []string{
		"GET / HTTP/1.1\r\nHost: kronos\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: kronos\r\nContent-Length: 0\r\n\r\n",
	} {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(wait))
		io.WriteString(c, req)
		answer, err := io.ReadAll(c) // the server closes after answering
		c.Close()
		if err != nil || !strings.HasPrefix(string(answer), "HTTP/1.1 426 ") {
			t.Fatalf("answer %q, %v", answer, err)
		}
	}
}

func TestTooBigMessage(t *testing.T) {
	opts := node.Options{}
	opts.Conn.MaxMessageBytes = 1 << 10
	each(t, opts, func(t *testing.T, h *harness, tr client.Transport) {
		c, _ := h.login(tr, "", "")
		sendRaw(t, c, `{"type":"create","task":{"id":1,"desc":"`+strings.Repeat("x", 2000)+`"}}`)
		expectError(t, c, "", "message exceeds 1024 bytes")
		if tr == client.TCP {
			expectClosed(t, c) // a raw stream cannot skip the rest reliably
			return
		}
		// A WebSocket skips the message and goes on.
		send(t, c, map[string]any{"type": "read-all"})
		expectType(t, c, "read-all")
	})
}

func TestHalfMessageThenSilence(t *testing.T) {
	opts := node.Options{}
	opts.Conn.ReadTimeout = time.Second
	h := start(t, opts)
	other, _ := h.login(client.TCP, "", "")
	c := h.dial(client.TCP)
	sendRaw(t, c, `{"type":"login","user_`)
	expectError(t, c, "", "incomplete message")
	expectClosed(t, c)
	w := h.dial(client.WebSocket)
	// Half a frame: a header announcing 100 bytes, and 3 of them.
	w.Conn.Write([]byte{0x81, 0x80 | 100, 1, 2, 3, 4, 'a', 'b', 'c'})
	expectClosed(t, w)
	send(t, other, map[string]any{"type": "read-all"})
	expectType(t, other, "read-all")
}

func TestTakeover(t *testing.T) {
	each(t, node.Options{}, func(t *testing.T, h *harness, tr client.Transport) {
		old, m := h.login(tr, "", "")
		sibling, _ := h.login(tr, m.Str("user_id"), "")
		c, _ := h.login(tr, m.Str("user_id"), m.Str("device_id"))
		expectClosed(t, old)
		sendRaw(t, c, `{"type":"create","task":{"id":1},"version":1}`)
		expectType(t, c, "create")
		expectType(t, sibling, "create")
	})
}

func TestShutdownClosesClientsCleanly(t *testing.T) {
	h := start(t, node.Options{})
	tcp, _ := h.login(client.TCP, "", "")
	wsc, _ := h.login(client.WebSocket, "", "")
	done := make(chan error, 1)
	go func() { done <- h.node.Shutdown(context.Background()) }()
	_, err := wsc.NextRaw(wait)
	var closed wsutil.ClosedError
	if !errors.As(err, &closed) || closed.Code != ws.StatusGoingAway {
		t.Fatalf("websocket: %v, want a close frame with %d", err, ws.StatusGoingAway)
	}
	wsc.Close()
	expectClosed(t, tcp)
	tcp.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := net.DialTimeout("tcp", h.addr, time.Second); err == nil {
		t.Fatal("the port still accepts after shutdown")
	}
}

// An idle WebSocket is pinged, so that proxies keep it; the client's pong
// is not an error.
func TestIdleWebSocketIsPinged(t *testing.T) {
	opts := node.Options{}
	opts.Conn.PingInterval = time.Second
	h := start(t, opts)
	c, _ := h.login(client.WebSocket, "", "")
	f, err := c.ReadFrame(wait)
	if err != nil || f.Header.OpCode != ws.OpPing {
		t.Fatalf("want a ping: %+v, %v", f.Header, err)
	}
	if err := ws.WriteFrame(c.Conn, ws.MaskFrameInPlace(ws.NewPongFrame(f.Payload))); err != nil {
		t.Fatal(err)
	}
	send(t, c, map[string]any{"type": "read-all"})
	for {
		m, err := c.Next(wait) // skips further pings
		if err != nil {
			t.Fatal(err)
		}
		if m.Type() == "read-all" {
			return
		}
	}
}
