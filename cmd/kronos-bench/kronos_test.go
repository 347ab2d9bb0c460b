package main

import (
	"bytes"
	"errors"
	"net"
	"testing"

	"github.com/gobwas/ws"
	kclient "github.com/kronos-sync/kronos-server/node/client"
)

// record collects what consume passes on: messages, and "refused" for a
// refusal.
func record(got *[]string) func([]byte, error) {
	return func(msg []byte, err error) {
		var refused *replyError
		if errors.As(err, &refused) {
			*got = append(*got, "refused")
			return
		}
		*got = append(*got, string(msg))
	}
}

func TestKronosSessionConsumeTCP(t *testing.T) {
	s := kronosSession{&kclient.Client{Transport: kclient.TCP}}
	var got []string
	p := []byte(`{"a":1}` + "\n" + `{"success":false,"error":"x"}` + "\n" + `{"b":`)
	used, err := s.consume(p, record(&got))
	if err != nil || used != len(p)-len(`{"b":`) || len(got) != 2 || got[0] != `{"a":1}` || got[1] != "refused" {
		t.Fatalf("%d, %v, %q", used, err, got)
	}
}

func TestKronosSessionConsumeWebSocket(t *testing.T) {
	c, server := net.Pipe()
	defer c.Close()
	defer server.Close()
	s := kronosSession{&kclient.Client{Transport: kclient.WebSocket, Conn: c}}
	var wire bytes.Buffer
	ws.WriteFrame(&wire, ws.NewTextFrame([]byte(`{"a":1}`)))
	ws.WriteFrame(&wire, ws.NewPingFrame([]byte("p")))
	ws.WriteFrame(&wire, ws.NewTextFrame([]byte(`{"b":2}`)))
	ws.WriteFrame(&wire, ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusGoingAway, "")))
	pong := make(chan ws.Frame, 1)
	go func() {
		if f, err := kclient.ReadFrame(server, 125); err == nil {
			pong <- f
		}
	}()
	var got []string
	p := wire.Bytes()
	third := len(p) - 4 - 5 // the third frame (2+7 bytes) cut after 4, before the close (2+2)
	used, err := s.consume(p[:third], record(&got))
	if err != nil || len(got) != 1 || got[0] != `{"a":1}` {
		t.Fatalf("%d, %v, %q", used, err, got)
	}
	if f := <-pong; f.Header.OpCode != ws.OpPong || string(f.Payload) != "p" {
		t.Fatalf("pong %v %q", f.Header.OpCode, f.Payload)
	}
	n, err := s.consume(p[used:], record(&got))
	if err == nil || len(got) != 2 || got[1] != `{"b":2}` || used+n != len(p) {
		t.Fatalf("after the close frame: %d, %v, %q", n, err, got)
	}
}

// pump reads a connection the poller cannot (TLS) with a goroutine: what
// the login left buffered first, then the stream, messages cut across
// reads, until the connection ends.
func TestPumpReadsUntilTheEnd(t *testing.T) {
	c, server := net.Pipe()
	defer c.Close()
	s := kronosSession{&kclient.Client{Transport: kclient.TCP, Conn: c}}
	var got []string
	ended := make(chan struct{})
	st := &stream{sess: s, got: record(&got), done: func() { close(ended) }}
	go pump(st, c, []byte(`{"a":1}`+"\n"+`{"b":`))
	server.Write([]byte(`2}` + "\n" + `{"c":`))
	server.Write([]byte(`3}` + "\n"))
	server.Close()
	<-ended
	if len(got) != 3 || got[0] != `{"a":1}` || got[1] != `{"b":2}` || got[2] != `{"c":3}` {
		t.Fatalf("got %q", got)
	}
}
