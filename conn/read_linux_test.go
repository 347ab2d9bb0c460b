package conn

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"
)

// A read shorter than the buffer ends the read turn without a read to
// EAGAIN. A message and the end of the stream that arrive in one segment
// raise a single edge, so the read side must still read on to the EOF: the
// client's close is noticed, not left for a timeout.
func TestMessageAndCloseInOneSegment(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s, r := serve(t, engine, Options{})
		c := dial(t, s)
		raw, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		// Corked, the message waits in the socket, and the FIN is added to
		// its unsent segment: both arrive at once.
		var sockErr error
		if err := raw.Control(func(fd uintptr) {
			sockErr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_CORK, 1)
		}); err != nil || sockErr != nil {
			t.Fatal(err, sockErr)
		}
		write(t, c, []byte(`{"a":1}`))
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if m := r.message(t); m.data != `{"a":1}` {
			t.Fatalf("got %q", m.data)
		}
		if got := r.closed(t); got.reason != ReasonClientClosed {
			t.Fatalf("closed with %v", got.reason)
		}
	})
}

// endAnswer answers the end of a peer's input with one large message.
type endAnswer struct {
	*recorder
	payload []byte
}

func (h endAnswer) OnInputEnd(c *Conn) { c.Send(h.payload) }

// A half-close (the peer's FIN on an open connection) is not the end of the
// conversation: what the handler queues on it, more than the socket takes
// at once, reaches the peer before the connection closes.
func TestHalfCloseDrainsWhatIsDue(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		r := newRecorder()
		h := endAnswer{r, bytes.Repeat([]byte("x"), 4<<20)}
		s := serveHandler(t, engine, Options{}, h)
		c := dial(t, s)
		write(t, c, []byte(`{"a":1}`))
		if m := r.message(t); m.data != `{"a":1}` {
			t.Fatalf("got %q", m.data)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got := readToEOF(t, c)
		if len(got) != len(h.payload)+1 || !bytes.Equal(got[:len(h.payload)], h.payload) {
			t.Fatalf("read %d bytes, want the %d-byte answer and its newline", len(got), len(h.payload))
		}
		if closed := r.closed(t); closed.reason != ReasonClientClosed {
			t.Fatalf("closed with %v", closed.reason)
		}
	})
}
