package client

import (
	"bufio"
	"bytes"
	"strings"
	"testing"

	"github.com/gobwas/ws"
)

func TestFrameReader(t *testing.T) {
	long := strings.Repeat("x", 70_000) // a 64-bit length, over bufio's buffer
	var wire bytes.Buffer
	ws.WriteFrame(&wire, ws.NewTextFrame([]byte(`{"a":1}`)))
	ws.WriteFrame(&wire, ws.MaskFrame(ws.NewPingFrame([]byte("p"))))
	ws.WriteFrame(&wire, ws.NewFrame(ws.OpText, false, []byte(`{"b":`)))
	ws.WriteFrame(&wire, ws.NewTextFrame([]byte(long)))
	ws.WriteFrame(&wire, ws.NewTextFrame([]byte(strings.Repeat("y", 200))))
	all := bytes.Clone(wire.Bytes())
	r := NewFrameReader(bufio.NewReader(&wire), 100_000)
	for _, want := range []struct {
		op      ws.OpCode
		fin     bool
		payload string
	}{{ws.OpText, true, `{"a":1}`}, {ws.OpPing, true, "p"}, {ws.OpText, false, `{"b":`}, {ws.OpText, true, long}} {
		h, payload, err := r.Next()
		if err != nil || h.OpCode != want.op || h.Fin != want.fin || string(payload) != want.payload || h.Masked {
			t.Fatalf("got %+v %.20q %v; want %v %.20q", h, payload, err, want.op, want.payload)
		}
	}
	small := NewFrameReader(bufio.NewReader(bytes.NewReader(all)), 100)
	for range 3 {
		if _, _, err := small.Next(); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := small.Next(); err == nil || !strings.Contains(err.Error(), "over 100") {
		t.Fatalf("a frame over the limit: %v", err)
	}
}

func TestParseHeader(t *testing.T) {
	var wire bytes.Buffer
	ws.WriteHeader(&wire, ws.Header{Fin: true, OpCode: ws.OpText, Length: 70_000, Masked: true, Mask: [4]byte{1, 2, 3, 4}})
	p := wire.Bytes()
	for i := range len(p) {
		if _, _, ok := ParseHeader(p[:i]); ok {
			t.Fatalf("a header of %d bytes parsed from %d", len(p), i)
		}
	}
	h, size, ok := ParseHeader(append(p, 'x'))
	if !ok || size != len(p) || h.Length != 70_000 || !h.Masked || h.Mask != [4]byte{1, 2, 3, 4} || h.OpCode != ws.OpText || !h.Fin {
		t.Fatalf("%+v %d %v", h, size, ok)
	}
}

func TestCutFrame(t *testing.T) {
	var wire bytes.Buffer
	ws.WriteFrame(&wire, ws.NewTextFrame([]byte(`{"a":1}`)))
	p := append(wire.Bytes(), 0x81) // and the first byte of the next frame
	for i := range 9 {
		if _, _, n, err := CutFrame(p[:i], 100); n != 0 || err != nil {
			t.Fatalf("%d bytes: cut %d, %v", i, n, err)
		}
	}
	h, payload, n, err := CutFrame(p, 100)
	if err != nil || n != 9 || string(payload) != `{"a":1}` || h.OpCode != ws.OpText {
		t.Fatalf("%+v %q %d %v", h, payload, n, err)
	}
	if _, _, _, err := CutFrame(p, 3); err == nil {
		t.Fatal("a frame over the limit was cut")
	}
	var masked bytes.Buffer
	ws.WriteFrame(&masked, ws.MaskFrame(ws.NewTextFrame([]byte("x"))))
	if _, _, _, err := CutFrame(masked.Bytes(), 100); err == nil {
		t.Fatal("a masked frame from the server was cut")
	}
}
