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
