package conn

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/gobwas/ws"
)

func TestWebSocketFragmentsWithInterleavedPing(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s, r := serve(t, engine, Options{})
		w := dialWS(t, s)
		w.send(t, false, ws.OpText, []byte(`{"a":`))
		w.send(t, true, ws.OpPing, []byte("are you there"))
		w.send(t, false, ws.OpContinuation, []byte(`"b`))
		w.send(t, true, ws.OpContinuation, []byte(`c"}`))
		f := w.frame(t)
		if f.Header.OpCode != ws.OpPong || string(f.Payload) != "are you there" {
			t.Fatalf("answer to the ping: %v %q", f.Header.OpCode, f.Payload)
		}
		if m := r.message(t); m.data != `{"a":"bc"}` {
			t.Fatalf("reassembled %q", m.data)
		}
		r.noEvents(t)
	})
}

func TestWebSocketCloseHandshake(t *testing.T) {
	cases := []struct {
		name    string
		payload []byte
		want    ws.StatusCode
		reason  CloseReason
	}{
		{"no code", nil, ws.StatusNormalClosure, ReasonClientClosed},
		{"1000", ws.NewCloseFrameBody(1000, "bye"), 1000, ReasonClientClosed},
		{"1001", ws.NewCloseFrameBody(1001, ""), 1001, ReasonClientClosed},
		{"1012", ws.NewCloseFrameBody(1012, ""), 1012, ReasonClientClosed},
		{"3000", ws.NewCloseFrameBody(3000, ""), 3000, ReasonClientClosed},
		{"4999", ws.NewCloseFrameBody(4999, "é"), 4999, ReasonClientClosed},
		// Invalid: answered with a protocol error, never echoed.
		{"one byte", []byte{3}, ws.StatusProtocolError, ReasonProtocolError},
		{"0", ws.NewCloseFrameBody(0, ""), ws.StatusProtocolError, ReasonProtocolError},
		{"999", ws.NewCloseFrameBody(999, ""), ws.StatusProtocolError, ReasonProtocolError},
		{"1004", ws.NewCloseFrameBody(1004, ""), ws.StatusProtocolError, ReasonProtocolError},
		{"1005", ws.NewCloseFrameBody(1005, ""), ws.StatusProtocolError, ReasonProtocolError},
		{"1006", ws.NewCloseFrameBody(1006, ""), ws.StatusProtocolError, ReasonProtocolError},
		{"1015", ws.NewCloseFrameBody(1015, ""), ws.StatusProtocolError, ReasonProtocolError},
		{"1016", ws.NewCloseFrameBody(1016, ""), ws.StatusProtocolError, ReasonProtocolError},
		{"2999", ws.NewCloseFrameBody(2999, ""), ws.StatusProtocolError, ReasonProtocolError},
		{"5000", ws.NewCloseFrameBody(5000, ""), ws.StatusProtocolError, ReasonProtocolError},
		{"65535", ws.NewCloseFrameBody(65535, ""), ws.StatusProtocolError, ReasonProtocolError},
		{"bad UTF-8 reason", ws.NewCloseFrameBody(1000, "\xff\xfe"), ws.StatusProtocolError, ReasonProtocolError},
	}
	eachEngine(t, func(t *testing.T, engine string) {
		s, r := serve(t, engine, Options{})
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				w := dialWS(t, s)
				w.send(t, true, ws.OpClose, tc.payload)
				if code := w.closeCode(t); code != tc.want {
					t.Fatalf("answered %d, want %d", code, tc.want)
				}
				readToEOF(t, w)
				if got := r.closed(t); got.reason != tc.reason {
					t.Fatalf("closed with %v, want %v", got.reason, tc.reason)
				}
			})
		}
		r.noEvents(t)
	})
}

// The attack of issue 12: a fragment, then a continuation declaring
// 2^63-1 bytes, then an endless payload. The declared length once made the
// size check overflow, and the node buffered all it was sent. Now the frame
// is refused by the size rule and skipped as it streams.
func TestWebSocketHugeContinuationIsSkipped(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		const limit = 64 << 10
		s, r := serve(t, engine, Options{MaxMessageBytes: limit})
		w := dialWS(t, s)
		w.send(t, false, ws.OpText, []byte("{"))
		head := []byte{0x80 | byte(ws.OpContinuation), 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}
		binary.BigEndian.PutUint64(head[2:], 1<<63-1)
		write(t, w, head)
		chunk := bytes.Repeat([]byte{'x'}, 1<<20)
		const sent = 64 << 20 // a thousand times the limit
		for range sent / len(chunk) {
			write(t, w, chunk)
		}
		waitUntil(t, func() bool { return r.bytesIn.Load() >= sent })
		// The read side keeps at most one frame and one message.
		if held := r.maxHeld.Load(); held > 2*limit+ws.MaxHeaderSize {
			t.Fatalf("the read side held %d bytes, limit %d", held, limit)
		}
		var tooBig *TooBigError
		if err := r.framingError(t); !errors.As(err, &tooBig) || tooBig.Limit != limit {
			t.Fatalf("framing error %v", err)
		}
		r.noEvents(t)
	})
}

func TestWebSocketOversizeMessageIsSkipped(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		const limit = 1 << 10
		s, r := serve(t, engine, Options{MaxMessageBytes: limit})
		w := dialWS(t, s)
		w.send(t, false, ws.OpText, bytes.Repeat([]byte{'a'}, limit-1))
		w.send(t, true, ws.OpContinuation, []byte("bc"))
		w.send(t, true, ws.OpBinary, bytes.Repeat([]byte{'a'}, 100*limit))
		w.send(t, true, ws.OpText, []byte(`{"after":true}`))
		for range 2 {
			var tooBig *TooBigError
			if err := r.framingError(t); !errors.As(err, &tooBig) {
				t.Fatalf("framing error %v", err)
			}
		}
		if m := r.message(t); m.data != `{"after":true}` {
			t.Fatalf("next message %q", m.data)
		}
		if held := r.maxHeld.Load(); held > 2*limit+ws.MaxHeaderSize {
			t.Fatalf("the read side held %d bytes, limit %d", held, limit)
		}
		r.noEvents(t)
	})
}

func TestWebSocketLengthWithHighBitIsProtocolError(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s, r := serve(t, engine, Options{})
		w := dialWS(t, s)
		head := []byte{0x80 | byte(ws.OpBinary), 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4}
		write(t, w, head)
		if code := w.closeCode(t); code != ws.StatusProtocolError {
			t.Fatalf("close code %d", code)
		}
		readToEOF(t, w)
		if got := r.closed(t); got.reason != ReasonProtocolError {
			t.Fatalf("closed with %v", got.reason)
		}
		r.noEvents(t)
	})
}
