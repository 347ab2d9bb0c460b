package conn

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
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

func TestWebSocketInvalidUTF8FailsAtOnce(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s, r := serve(t, engine, Options{})
		w := dialWS(t, s)
		// "é" cut between fragments is fine; a byte that no character can
		// start fails before the message ends.
		w.send(t, false, ws.OpText, []byte("caf\xc3"))
		w.send(t, false, ws.OpContinuation, []byte("\xa9 \xff"))
		if code := w.closeCode(t); code != ws.StatusInvalidFramePayloadData {
			t.Fatalf("close code %d", code)
		}
		readToEOF(t, w)
		if got := r.closed(t); got.reason != ReasonProtocolError {
			t.Fatalf("closed with %v", got.reason)
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

// fuzzLimit is MaxMessageBytes in the fuzz target: small, so that generated
// messages cross it.
const fuzzLimit = 300

// genFrames turns fuzz input into a stream of client frames. Each frame
// takes three bytes, then its payload from the input:
//
//	b0: bits 0-2 opcode (text, binary, continuation x2, ping, pong, close,
//	    text); bit 3 clear = FIN; high nibble F: unmasked, E: RSV1 set,
//	    D: reserved opcode
//	b1: < 126 the 7-bit length; < 250 a 16-bit length (b1-126)*5; < 255 a
//	    64-bit length (b1-250)*120; 255 a 64-bit length with its top bit set
//	b2: the mask key's seed
//
// Lengths are encoded as chosen, not minimally: a reader must accept both.
func genFrames(in []byte) []byte {
	next := func() byte {
		if len(in) == 0 {
			return 0
		}
		b := in[0]
		in = in[1:]
		return b
	}
	ops := [8]ws.OpCode{ws.OpText, ws.OpBinary, ws.OpContinuation, ws.OpContinuation,
		ws.OpPing, ws.OpPong, ws.OpClose, ws.OpText}
	var out []byte
	for len(in) > 0 {
		b0, b1, b2 := next(), next(), next()
		first := byte(ops[b0&7])
		if b0&0x08 == 0 {
			first |= 0x80
		}
		masked := true
		switch b0 >> 4 {
		case 0xF:
			masked = false
		case 0xE:
			first |= 0x40
		case 0xD:
			first = first&0xF0 | 0x3
		}
		var n int
		var head []byte
		switch {
		case b1 < 126:
			n = int(b1)
			head = []byte{first, b1}
		case b1 < 250:
			n = int(b1-126) * 5
			head = binary.BigEndian.AppendUint16([]byte{first, 126}, uint16(n))
		case b1 < 255:
			n = int(b1-250) * 120
			head = binary.BigEndian.AppendUint64([]byte{first, 127}, uint64(n))
		default:
			head = binary.BigEndian.AppendUint64([]byte{first, 127}, 1<<63|5)
		}
		payload := make([]byte, n)
		for i := range payload {
			payload[i] = next()
		}
		if masked {
			head[1] |= 0x80
			key := [4]byte{b2, b2 ^ 0x5A, b2 * 3, ^b2}
			head = append(head, key[:]...)
			ws.Cipher(payload, key, 0)
		}
		out = append(append(out, head...), payload...)
	}
	return out
}

// chunks cuts p into pieces of the sizes sizes gives (each byte + 1, in a
// cycle); no sizes: one byte at a time.
func chunks(p, sizes []byte) [][]byte {
	var out [][]byte
	for i := 0; len(p) > 0; i++ {
		n := 1
		if len(sizes) > 0 {
			n = int(sizes[i%len(sizes)]) + 1
		}
		n = min(n, len(p))
		out = append(out, p[:n])
		p = p[n:]
	}
	return out
}

// wsOutcome is what the read path made of a client stream.
type wsOutcome struct {
	events []string // "msg:…" and "err:…", in order
	reason CloseReason
	output []byte // what the server wrote back (pongs, close frame)
}

// feedWS runs the real read path on the stream, handed over in pieces.
func feedWS(t *testing.T, pieces [][]byte) wsOutcome {
	t.Helper()
	h := &logHandler{}
	c, peer := pairConn(t, Options{MaxMessageBytes: fuzzLimit}, h)
	c.transport.Store(uint32(TransportWebSocket))
	for _, p := range pieces {
		c.onData(bytes.Clone(p)) // unmasking happens in place
		if len(c.in) > fuzzLimit+ws.MaxHeaderSize || c.wsMsgLen() > fuzzLimit {
			t.Fatalf("the read side holds %d+%d bytes, limit %d", len(c.in), c.wsMsgLen(), fuzzLimit)
		}
	}
	if c.QueuedBytes() != 0 {
		t.Fatal("output left queued: the socket pair is too small for the test")
	}
	return wsOutcome{h.events, c.CloseReason(), drain(t, peer)}
}

// referenceWS reassembles the stream independently with gobwas/wsutil: the
// messages, and the error that ended the stream (io.EOF at a message
// boundary, errCloseFrame after a valid close frame).
func referenceWS(stream []byte) ([]string, error) {
	rd := &wsutil.Reader{
		Source:         bytes.NewReader(stream),
		State:          ws.StateServerSide,
		CheckUTF8:      true,
		MaxMessageSize: fuzzLimit,
	}
	rd.OnIntermediate = func(h ws.Header, r io.Reader) error {
		if h.OpCode != ws.OpClose {
			return nil
		}
		p, err := io.ReadAll(r)
		if err != nil {
			return err
		}
		return closeFrameEnd(p)
	}
	var msgs []string
	for {
		h, err := rd.NextFrame()
		if err != nil {
			return msgs, err
		}
		p, err := io.ReadAll(rd)
		if err != nil {
			return msgs, err
		}
		switch h.OpCode {
		case ws.OpClose:
			return msgs, closeFrameEnd(p)
		case ws.OpText, ws.OpBinary:
			msgs = append(msgs, string(p))
		}
	}
}

var errCloseFrame = errors.New("close frame")

func closeFrameEnd(p []byte) error {
	if len(p) == 0 {
		return errCloseFrame
	}
	if len(p) == 1 {
		return ws.ErrProtocolStatusCodeUnknown
	}
	code, reason := ws.ParseCloseFrameData(p)
	err := ws.CheckCloseFrameData(code, reason)
	switch {
	case code >= 5000: // gobwas checks only the ranges below
		return ws.ErrProtocolStatusCodeUnknown
	case err == ws.ErrProtocolStatusCodeUnknown && code >= 1012 && code <= 1014 && utf8.ValidString(reason):
		return errCloseFrame // registered with IANA after gobwas's table was written
	case err != nil:
		return err
	}
	return errCloseFrame
}

var fuzzWSSeeds = [][]byte{
	{0x06, 5, 1, 'h', 'e', 'l', 'l', 'o'},                                // one text message
	{0x08, 1, 7, '{', 0x04, 2, 9, 'h', 'i', 0x0A, 1, 3, '}', 0x02, 0, 0}, // fragments around a ping
	{0x01, 130, 2},                                                             // a binary message past the limit
	{0x08, 1, 1, 'a', 0x02, 254, 5},                                            // a fragment, then a huge continuation
	{0x01, 255, 1, 0x06, 2, 0},                                                 // a 64-bit length with its top bit set
	{0x06, 4, 2, 0x03, 0xE8, 'o', 'k', 0x06, 1, 1, 'x'},                        // close 1000, then data
	{0x06, 2, 3, 0x03, 0xE7, 0x06, 2, 3, 0x13, 0x88},                           // close 999
	{0x06, 3, 3, 0x03, 0xE8, 0xFF},                                             // close with a bad UTF-8 reason
	{0x00, 3, 3, 0xFF, 0xFE, 0xFD},                                             // invalid UTF-8 text
	{0xF0, 2, 0, '{', '}', 0xE0, 2, 0, '{', '}', 0xD0, 0, 0},                   // unmasked, RSV1, reserved opcode
	{0x02, 0, 0, 0x0C, 126, 0, 0x04, 200, 0},                                   // stray continuation, oversize ping
	{0x08, 127, 4, 'a', 'b', 0x08, 251, 0, 0x0A, 126, 0, 0x02, 2, 0, 'c', 'd'}, // 16- and 64-bit lengths
}

func FuzzWebSocketReassembly(f *testing.F) {
	for _, seed := range fuzzWSSeeds {
		f.Add(seed, []byte{0, 2, 13})
		f.Add(seed, []byte{})
	}
	f.Fuzz(func(t *testing.T, in, sizes []byte) {
		if len(in) > 2048 { // keeps the output within the socket pair's buffer
			in = in[:2048]
		}
		stream := genFrames(in)
		whole := feedWS(t, [][]byte{stream})
		parts := feedWS(t, chunks(stream, sizes))
		// Where the bytes break must not change anything.
		if !slices.Equal(whole.events, parts.events) || whole.reason != parts.reason || !bytes.Equal(whole.output, parts.output) {
			t.Fatalf("whole: %q %v %x\nin parts: %q %v %x", whole.events, whole.reason, whole.output,
				parts.events, parts.reason, parts.output)
		}
		want, end := referenceWS(stream)
		var got []string
		for _, e := range whole.events {
			if m, ok := strings.CutPrefix(e, "msg:"); ok {
				got = append(got, m)
			}
		}
		// Up to where the reference stopped, the same messages and nothing
		// else; then the same verdict.
		n := len(want)
		if len(whole.events) < n || !slices.Equal(got[:min(n, len(got))], want) || len(got) < n {
			t.Fatalf("delivered %q, wsutil read %q (%v)", whole.events, want, end)
		}
		switch {
		case end == io.EOF || errors.Is(end, io.ErrUnexpectedEOF):
			if len(whole.events) != n || whole.reason != ReasonNone {
				t.Fatalf("valid stream: delivered %q and closed with %v, wsutil read %q", whole.events, whole.reason, want)
			}
		case end == errCloseFrame:
			if len(whole.events) != n || whole.reason != ReasonClientClosed {
				t.Fatalf("close frame: delivered %q and closed with %v", whole.events, whole.reason)
			}
		case errors.Is(end, wsutil.ErrMessageTooLarge):
			if len(whole.events) == n || whole.events[n] != "err:"+(&TooBigError{fuzzLimit}).Error() {
				t.Fatalf("oversize message after %q: delivered %q", want, whole.events)
			}
		default:
			if len(whole.events) != n || whole.reason != ReasonProtocolError {
				t.Fatalf("wsutil failed with %v; delivered %q and closed with %v", end, whole.events, whole.reason)
			}
		}
	})
}
