package client

import (
	"bufio"
	"bytes"
	"net"
	"strings"
	"testing"

	"github.com/gobwas/ws"
)

// serve accepts one connection on a loopback listener and hands it to fn.
func serve(t *testing.T, fn func(net.Conn)) net.Conn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		fn(c)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestStreamWebSocket(t *testing.T) {
	long := strings.Repeat("x", 70_000) // a 64-bit length, over the reader's buffer
	pong := make(chan ws.Frame, 1)
	conn := serve(t, func(s net.Conn) {
		ws.WriteFrame(s, ws.NewTextFrame([]byte(`{"a":1}`)))
		ws.WriteFrame(s, ws.NewPingFrame([]byte("p")))
		f, err := ReadFrame(s, 125)
		if err != nil {
			return
		}
		pong <- f
		ws.WriteFrame(s, ws.NewFrame(ws.OpText, false, []byte(`{"b":`)))
		ws.WriteFrame(s, ws.NewFrame(ws.OpContinuation, true, []byte(`2}`)))
		ws.WriteFrame(s, ws.NewTextFrame([]byte(long)))
		ws.WriteFrame(s, ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "")))
	})
	c := &Client{Transport: WebSocket, Conn: conn, reader: bufio.NewReader(conn)}
	for _, want := range []string{`{"a":1}`, `{"b":2}`, long} {
		msg, err := c.Stream()
		if err != nil || string(msg) != want {
			t.Fatalf("got %.40q, %v; want %.40q", msg, err, want)
		}
	}
	if f := <-pong; f.Header.OpCode != ws.OpPong || !bytes.Equal(f.Payload, []byte("p")) {
		t.Fatalf("pong %+v", f.Header)
	}
	if _, err := c.Stream(); err == nil {
		t.Fatal("a close frame must end the stream")
	}
}

func TestStreamTCPLongLine(t *testing.T) {
	long := `{"x":"` + strings.Repeat("y", 10_000) + `"}`
	conn := serve(t, func(s net.Conn) {
		s.Write([]byte(`{"a":1}` + "\n" + long + "\n" + `{"b":2}` + "\n"))
	})
	c := &Client{Transport: TCP, Conn: conn, reader: bufio.NewReader(conn)}
	for _, want := range []string{`{"a":1}`, long, `{"b":2}`} {
		msg, err := c.Stream()
		if err != nil || string(msg) != want {
			t.Fatalf("got %.40q, %v; want %.40q", msg, err, want)
		}
	}
	if _, err := c.Stream(); err == nil {
		t.Fatal("the end of the stream must be an error")
	}
}
