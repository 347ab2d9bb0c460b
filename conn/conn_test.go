package conn

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// Helpers for the tests of this package: a recording Handler, a server on
// a loopback port per engine, and raw clients; and, for fuzzing, a Conn on
// a socket pair whose read path the test drives itself. Tests wait on the
// recorder's events or on the socket, with a deadline; they never sleep.

// waitFor bounds every wait: far above what any event takes, so that only
// a lost event reaches it.
const waitFor = 10 * time.Second

var engines = []string{EngineEpoll, EngineGoroutine}

// eachEngine runs f as a subtest per engine.
func eachEngine(t *testing.T, f func(t *testing.T, engine string)) {
	for _, e := range engines {
		t.Run(e, func(t *testing.T) { f(t, e) })
	}
}

type message struct {
	c    *Conn
	data string
}

type closed struct {
	c      *Conn
	reason CloseReason
}

// recorder is a Handler that records its calls on channels to wait on.
type recorder struct {
	msgs   chan message
	errs   chan error
	closes chan closed

	mu      sync.Mutex
	onClose map[*Conn]int // OnClose calls per Conn
	maxHeld atomic.Int64  // most bytes the read side kept (testHookRead)
	bytesIn atomic.Int64  // bytes the read side handled (testHookRead)

	inByPort    map[uint16]int64       // bytes handled, by the peer's port (testHookRead)
	closeByPort map[uint16]CloseReason // OnClose's reason, by the peer's port
	maxBudget   atomic.Int64           // most input the server held in all, after a read (testHookRead)
}

func newRecorder() *recorder {
	return &recorder{
		msgs:    make(chan message, 1024),
		errs:    make(chan error, 1024),
		closes:  make(chan closed, 1024),
		onClose: map[*Conn]int{},

		inByPort:    map[uint16]int64{},
		closeByPort: map[uint16]CloseReason{},
	}
}

func (r *recorder) OnMessage(c *Conn, p []byte) { r.msgs <- message{c, string(p)} }

func (r *recorder) OnFramingError(_ *Conn, err error) { r.errs <- err }

func (r *recorder) OnClose(c *Conn, reason CloseReason) {
	r.mu.Lock()
	r.onClose[c]++
	r.closeByPort[c.RemoteAddr().Port()] = reason
	r.mu.Unlock()
	r.closes <- closed{c, reason}
}

func init() {
	// Set before any server starts, so the read sides see it without a race.
	testHookRead = func(c *Conn, n int) {
		r, ok := c.srv.handler.(*recorder)
		if !ok {
			return
		}
		r.bytesIn.Add(int64(n))
		held := int64(len(c.in) + c.wsMsgLen())
		for old := r.maxHeld.Load(); held > old && !r.maxHeld.CompareAndSwap(old, held); old = r.maxHeld.Load() {
		}
		all := c.srv.InputBuffered()
		for old := r.maxBudget.Load(); all > old && !r.maxBudget.CompareAndSwap(old, all); old = r.maxBudget.Load() {
		}
		r.mu.Lock()
		r.inByPort[c.RemoteAddr().Port()] += int64(n)
		r.mu.Unlock()
	}
}

func (r *recorder) message(t *testing.T) message {
	t.Helper()
	select {
	case m := <-r.msgs:
		return m
	case <-time.After(waitFor):
		t.Fatal("no message arrived")
	}
	return message{}
}

func (r *recorder) framingError(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.errs:
		return err
	case <-time.After(waitFor):
		t.Fatal("no framing error arrived")
	}
	return nil
}

func (r *recorder) closed(t *testing.T) closed {
	t.Helper()
	select {
	case c := <-r.closes:
		return c
	case <-time.After(waitFor):
		t.Fatal("no connection closed")
	}
	return closed{}
}

// closeCount is how many times OnClose ran for c.
func (r *recorder) closeCount(c *Conn) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.onClose[c]
}

// noEvents checks that nothing was recorded that the test did not take.
func (r *recorder) noEvents(t *testing.T) {
	t.Helper()
	select {
	case m := <-r.msgs:
		t.Fatalf("unexpected message %q", m.data)
	case err := <-r.errs:
		t.Fatalf("unexpected framing error %v", err)
	case c := <-r.closes:
		t.Fatalf("unexpected close (%v)", c.reason)
	default:
	}
}

// serve starts a server on a loopback port; Shutdown runs at cleanup.
func serve(t *testing.T, engine string, opts Options) (*Server, *recorder) {
	t.Helper()
	r := newRecorder()
	return serveHandler(t, engine, opts, r), r
}

// serveHandler starts a server with handler h; Shutdown runs at cleanup.
func serveHandler(t *testing.T, engine string, opts Options, h Handler) *Server {
	t.Helper()
	opts.Listen, opts.Engine, opts.Logger = "127.0.0.1:0", engine, zerolog.Nop()
	s, err := Listen(opts, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		s.Shutdown(ctx, ReasonShutdown)
	})
	return s
}

func dial(t *testing.T, s *Server) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(waitFor))
	return c.(*net.TCPConn)
}

// waitUntil polls cond until it holds.
func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond)
	}
}

func write(t *testing.T, c net.Conn, p []byte) {
	t.Helper()
	if _, err := c.Write(p); err != nil {
		t.Fatal(err)
	}
}

// readToEOF reads what the server sends until it closes, then closes as a
// well-behaved client does (the server lingers until then).
func readToEOF(t *testing.T, c net.Conn) []byte {
	t.Helper()
	b, err := io.ReadAll(c)
	if err != nil && !isReset(err) {
		t.Fatal(err)
	}
	c.Close()
	return b
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}

// wsClient is a WebSocket client that writes frames by hand.
type wsClient struct {
	net.Conn
	r *bufio.Reader
}

func dialWS(t *testing.T, s *Server) *wsClient {
	t.Helper()
	c := dial(t, s)
	d := ws.Dialer{NetDial: func(context.Context, string, string) (net.Conn, error) { return c, nil }}
	_, br, _, err := d.Dial(context.Background(), "ws://"+s.Addr().String()+"/")
	if err != nil {
		t.Fatal(err)
	}
	if br == nil {
		br = bufio.NewReader(c)
	}
	return &wsClient{c, br}
}

// clientFrame is a masked frame as a client sends it.
func clientFrame(fin bool, op ws.OpCode, payload []byte) []byte {
	var b bytes.Buffer
	f := ws.NewFrame(op, fin, bytes.Clone(payload))
	_ = ws.WriteFrame(&b, ws.MaskFrameInPlace(f))
	return b.Bytes()
}

func (w *wsClient) send(t *testing.T, fin bool, op ws.OpCode, payload []byte) {
	t.Helper()
	write(t, w, clientFrame(fin, op, payload))
}

// readFrame reads one server frame (never masked), bounded: the length a
// peer declares is checked before anything is read.
func readFrame(r io.Reader) (ws.Frame, error) {
	h, err := ws.ReadHeader(r)
	if err != nil {
		return ws.Frame{}, err
	}
	if h.Length < 0 || h.Length > 64<<20 {
		return ws.Frame{}, fmt.Errorf("frame of %d bytes", h.Length)
	}
	payload := make([]byte, h.Length)
	_, err = io.ReadFull(r, payload)
	return ws.Frame{Header: h, Payload: payload}, err
}

func (w *wsClient) frame(t *testing.T) ws.Frame {
	t.Helper()
	f, err := readFrame(w.r)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// closeCode reads frames until a close frame and returns its code.
func (w *wsClient) closeCode(t *testing.T) ws.StatusCode {
	t.Helper()
	for {
		f := w.frame(t)
		if f.Header.OpCode == ws.OpClose {
			code, _ := ws.ParseCloseFrameData(f.Payload)
			return code
		}
	}
}

func TestSniffRawTCP(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s, r := serve(t, engine, Options{})
		c := dial(t, s)
		write(t, c, []byte("  \n{\"type\":\"login\"}"))
		m := r.message(t)
		if m.data != `{"type":"login"}` || m.c.Transport() != TransportTCP {
			t.Fatalf("got %q over %v", m.data, m.c.Transport())
		}
		m.c.Send([]byte(`{"ok":true}`))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "{\"ok\":true}\n" {
			t.Fatalf("answer %q, %v", line, err)
		}
	})
}

func TestSniffWebSocket(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s, r := serve(t, engine, Options{})
		w := dialWS(t, s)
		w.send(t, true, ws.OpText, []byte(`{"type":"login"}`))
		m := r.message(t)
		if m.data != `{"type":"login"}` || m.c.Transport() != TransportWebSocket {
			t.Fatalf("got %q over %v", m.data, m.c.Transport())
		}
		m.c.Send([]byte(`{"ok":true}`))
		f := w.frame(t)
		if f.Header.OpCode != ws.OpText || !f.Header.Fin || string(f.Payload) != `{"ok":true}` {
			t.Fatalf("answer %+v %q", f.Header, f.Payload)
		}
	})
}

// A handshake's head over the bound is refused however it arrives: in one
// write (so in one read, up to the read buffer) or dribbled.
func TestLargeHTTPHeadGets431(t *testing.T) {
	head := "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
		"X-Pad: " + strings.Repeat("a", maxHTTPHead) + "\r\n\r\n"
	for _, dribbled := range []bool{false, true} {
		t.Run(fmt.Sprintf("dribbled=%v", dribbled), func(t *testing.T) {
			eachEngine(t, func(t *testing.T, engine string) {
				s, r := serve(t, engine, Options{})
				c := dial(t, s)
				if dribbled {
					for i := 0; i < len(head); i += 1000 {
						// Refused once past the bound: the rest may meet a closed socket.
						if _, err := c.Write([]byte(head[i:min(i+1000, len(head))])); err != nil {
							break
						}
					}
				} else {
					write(t, c, []byte(head))
				}
				if answer := readToEOF(t, c); !bytes.HasPrefix(answer, []byte("HTTP/1.1 431 ")) {
					t.Fatalf("answer %q", answer)
				}
				if got := r.closed(t); got.reason != ReasonHTTPRejected {
					t.Fatalf("closed with %v", got.reason)
				}
			})
		})
	}
}

func TestPlainHTTPGets426(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s, r := serve(t, engine, Options{})
		c := dial(t, s)
		write(t, c, []byte("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"))
		answer := readToEOF(t, c)
		if !bytes.HasPrefix(answer, []byte("HTTP/1.1 426 ")) {
			t.Fatalf("answer %q", answer)
		}
		if got := r.closed(t); got.reason != ReasonHTTPRejected {
			t.Fatalf("closed with %v", got.reason)
		}
		r.noEvents(t)
	})
}

func TestRawTCPMessagesAcrossAndWithinReads(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s, r := serve(t, engine, Options{})
		c := dial(t, s)
		one := []byte(`{"desc":"a } \" {","tags":["x"]}`)
		for i := range one { // one byte per segment (Go sets TCP_NODELAY)
			write(t, c, one[i:i+1])
		}
		if m := r.message(t); m.data != string(one) {
			t.Fatalf("byte by byte: %q", m.data)
		}
		write(t, c, []byte(`{"a":1}{"b":2}`+"\n"+`[3]`))
		for _, want := range []string{`{"a":1}`, `{"b":2}`, `[3]`} {
			if m := r.message(t); m.data != want {
				t.Fatalf("got %q, want %q", m.data, want)
			}
		}
		r.noEvents(t)
	})
}

// expectFramingClose sends `{"a":1}` and then input on a raw TCP stream:
// the object is handled, input is reported as want, and the stream closes.
func expectFramingClose(t *testing.T, input string, want error) {
	eachEngine(t, func(t *testing.T, engine string) {
		s, r := serve(t, engine, Options{})
		c := dial(t, s)
		write(t, c, []byte(`{"a":1}`+input))
		if m := r.message(t); m.data != `{"a":1}` {
			t.Fatalf("got %q", m.data)
		}
		if err := r.framingError(t); err != want {
			t.Fatalf("framing error %v", err)
		}
		readToEOF(t, c)
		if got := r.closed(t); got.reason != ReasonProtocolError {
			t.Fatalf("closed with %v", got.reason)
		}
	})
}

func TestRawTCPInvalidJSONAnswersAndCloses(t *testing.T) {
	expectFramingClose(t, `hello`, ErrInvalidJSON)
}

// A JSON scalar is valid JSON but not a request: the answer says so, and the
// stream closes because a number's end cannot be told apart from the next one.
func TestRawTCPScalarAnswersNotAnObjectAndCloses(t *testing.T) {
	for _, scalar := range []string{`7`, `"login"`, `true`, `null`, `-1`} {
		t.Run(scalar, func(t *testing.T) {
			expectFramingClose(t, ` `+scalar+` {"b":2}`, ErrNotObject)
		})
	}
}

func TestCloseSendsQueuedOutputFirst(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s, r := serve(t, engine, Options{})
		c := dial(t, s)
		write(t, c, []byte(`{}`))
		conn := r.message(t).c
		var want bytes.Buffer
		for i := range 1000 {
			msg := bytes.Repeat([]byte{'a' + byte(i%26)}, 1000)
			conn.Send(msg)
			want.Write(msg)
			want.WriteByte('\n')
		}
		conn.Close(ReasonPolicy)
		if conn.Send([]byte(`{}`)) {
			t.Fatal("Send accepted a message after Close")
		}
		if got := readToEOF(t, c); !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("got %d bytes, want %d", len(got), want.Len())
		}
		if got := r.closed(t); got.c != conn || got.reason != ReasonPolicy {
			t.Fatalf("closed with %v", got.reason)
		}
	})
}

// fillSocket sends until the socket takes no more and output is queued.
func fillSocket(t *testing.T, conn *Conn) (sent int) {
	t.Helper()
	msg := bytes.Repeat([]byte{'x'}, 16<<10)
	for conn.QueuedBytes() == 0 {
		if !conn.Send(msg) {
			t.Fatal("send refused")
		}
		sent += len(msg) + 1
		if sent > 256<<20 {
			t.Fatal("the socket never filled")
		}
	}
	return sent
}

// A client that pings and never reads holds one pong, answering its latest
// ping, not one per ping (RFC 6455 5.5.3).
func TestPingFloodQueuesOnePong(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s, r := serve(t, engine, Options{})
		w := dialWS(t, s)
		w.send(t, true, ws.OpText, []byte(`{}`))
		conn := r.message(t).c
		// Far more queued than the kernel may still take, so that the
		// queue holds output until the client reads.
		filler := bytes.Repeat([]byte{'x'}, 16<<10)
		for conn.QueuedBytes() < 4<<20 { // half the default limit
			if !conn.Send(filler) {
				t.Fatal("send refused")
			}
		}
		const pings = 500
		var flood bytes.Buffer
		for i := 1; i <= pings; i++ {
			flood.Write(clientFrame(true, ws.OpPing, []byte(strconv.Itoa(i))))
		}
		flood.Write(clientFrame(true, ws.OpText, []byte(`{"after":"pings"}`)))
		write(t, w, flood.Bytes())
		if m := r.message(t); m.data != `{"after":"pings"}` { // every ping before it is handled
			t.Fatalf("got %q", m.data)
		}
		last := strconv.Itoa(pings)
		conn.Send([]byte(`"end"`))
		var pongs []string
		for {
			f := w.frame(t)
			if f.Header.OpCode == ws.OpPong {
				pongs = append(pongs, string(f.Payload))
			}
			if string(f.Payload) == `"end"` {
				break
			}
		}
		if len(pongs) != 1 || pongs[0] != last {
			t.Fatalf("%d pongs, the last answering ping %q; want one answering ping %s", len(pongs), pongs[len(pongs)-1], last)
		}
	})
}

// The queue's limit counts each message's slot as well as its bytes: tiny
// messages cannot hold many times the memory the limit allows.
func TestQueueLimitCountsEachMessage(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		const limit = 64 << 10
		s, r := serve(t, engine, Options{MaxQueueBytes: limit})
		c := dial(t, s)
		c.SetReadBuffer(4 << 10)
		write(t, c, []byte(`{}`))
		conn := r.message(t).c
		fillSocket(t, conn)
		n := 0
		for conn.Send([]byte(`1`)) {
			n++
		}
		if most := limit / queuedItemCost; n > most {
			t.Fatalf("%d one-byte messages queued, at most %d fit the limit with their slots", n, most)
		}
		if got := r.closed(t); got.reason != ReasonSlowConsumer {
			t.Fatalf("closed with %v", got.reason)
		}
	})
}

func TestAbortDropsQueuedOutput(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s, r := serve(t, engine, Options{})
		c := dial(t, s)
		write(t, c, []byte(`{}`))
		conn := r.message(t).c
		sent := fillSocket(t, conn)
		conn.Abort(ReasonPolicy)
		if conn.QueuedBytes() != 0 {
			t.Fatal("output still queued after Abort")
		}
		if got := len(readToEOF(t, c)); got >= sent {
			t.Fatalf("the client got all %d bytes", got)
		}
		if got := r.closed(t); got.reason != ReasonPolicy {
			t.Fatalf("closed with %v", got.reason)
		}
	})
}

func TestSlowConsumerIsDisconnected(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		const limit = 64 << 10
		s, r := serve(t, engine, Options{MaxQueueBytes: limit})
		c := dial(t, s)
		c.SetReadBuffer(4 << 10)
		write(t, c, []byte(`{}`))
		conn := r.message(t).c
		msg := bytes.Repeat([]byte{'x'}, 1000)
		sent := 0
		for conn.Send(msg) {
			if conn.QueuedBytes() > limit {
				t.Fatalf("%d bytes queued, limit %d", conn.QueuedBytes(), limit)
			}
			if sent += len(msg); sent > 256<<20 {
				t.Fatal("the queue never overflowed")
			}
		}
		if conn.CloseReason() != ReasonSlowConsumer {
			t.Fatalf("reason %v", conn.CloseReason())
		}
		if got := r.closed(t); got.reason != ReasonSlowConsumer {
			t.Fatalf("closed with %v", got.reason)
		}
		// Reset, not closed after the data: the kernel keeps nothing for it.
		if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("the client read to %v, want a reset", err)
		}
	})
}

func TestReadTimeoutOfHalfSentMessage(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s, r := serve(t, engine, Options{ReadTimeout: time.Millisecond})
		c := dial(t, s)
		write(t, c, []byte(`{"type":"log`))
		if err := r.framingError(t); err != ErrIncompleteTimeout {
			t.Fatalf("framing error %v", err)
		}
		readToEOF(t, c)
		if got := r.closed(t); got.reason != ReasonTimeout {
			t.Fatalf("closed with %v", got.reason)
		}
		r.noEvents(t)
	})
}

// A fragmented message must end within the read timeout however its frames
// are spaced: each frame arriving whole does not restart the clock. The
// client keeps sending empty continuation frames until the node gives up.
func TestReadTimeoutOfFragmentedMessage(t *testing.T) {
	for _, skipped := range []bool{false, true} {
		t.Run(fmt.Sprintf("skipped=%v", skipped), func(t *testing.T) {
			eachEngine(t, func(t *testing.T, engine string) {
				opts := Options{ReadTimeout: 20 * time.Millisecond}
				first := []byte(`{"type":"read-all","pad":"`)
				if skipped { // over the limit: its payload is skipped, not kept
					opts.MaxMessageBytes = len(first) - 1
				}
				s, r := serve(t, engine, opts)
				w := dialWS(t, s)
				w.send(t, false, ws.OpText, first)
				if skipped {
					var tooBig *TooBigError
					if err := r.framingError(t); !errors.As(err, &tooBig) {
						t.Fatalf("framing error %v", err)
					}
				}
				stop, done := make(chan struct{}), make(chan struct{})
				go func() {
					defer close(done)
					tick := time.NewTicker(2 * time.Millisecond)
					defer tick.Stop()
					for {
						select {
						case <-stop:
							return
						case <-tick.C:
							if _, err := w.Write(clientFrame(false, ws.OpContinuation, nil)); err != nil {
								return
							}
						}
					}
				}()
				err := r.framingError(t)
				close(stop)
				<-done
				// The node's close frame follows its reason: closing the
				// client before it arrives could win the race as client_closed.
				w.closeCode(t)
				w.Close() // no close handshake to wait for
				if err != ErrIncompleteTimeout {
					t.Fatalf("framing error %v", err)
				}
				if got := r.closed(t); got.reason != ReasonTimeout {
					t.Fatalf("closed with %v", got.reason)
				}
			})
		})
	}
}

// blockingHandler holds each message's handler until the test lets it go.
type blockingHandler struct {
	*recorder
	entered chan *Conn
	release chan struct{}
}

func (h *blockingHandler) OnMessage(c *Conn, p []byte) {
	h.entered <- c
	<-h.release
	h.recorder.OnMessage(c, p)
}

// A message that arrived whole is not "incomplete" however long its handler
// runs: the read timeout's clock stops when it is handed over, also when it
// came in several reads or WebSocket fragments. The sweeper's check runs
// here with a clock far past the timeout, while the handler is busy.
func TestReadTimeoutStopsWhenMessageIsWhole(t *testing.T) {
	for _, transport := range []string{"tcp", "websocket"} {
		t.Run(transport, func(t *testing.T) {
			eachEngine(t, func(t *testing.T, engine string) {
				h := &blockingHandler{newRecorder(), make(chan *Conn, 1), make(chan struct{})}
				opts := Options{ReadTimeout: time.Second}
				s := serveHandler(t, engine, opts, h)
				first, rest := []byte(`{"a":`), []byte(`1}`)
				if transport == "tcp" {
					c := dial(t, s)
					write(t, c, first)
					waitUntil(t, func() bool { return s.InputBuffered() > 0 }) // the first part is held
					write(t, c, rest)
				} else {
					w := dialWS(t, s)
					w.send(t, false, ws.OpText, first)
					waitUntil(t, func() bool { return s.InputBuffered() > 0 })
					w.send(t, true, ws.OpContinuation, rest)
				}
				conn := <-h.entered
				s.checkDeadlines(conn, nowNano()+int64(5*opts.ReadTimeout)) // past the read timeout, short of the others
				close(h.release)
				if m := h.message(t); m.data != `{"a":1}` {
					t.Fatalf("got %q", m.data)
				}
				if conn.Closing() {
					t.Fatalf("closed (%v) while its whole message was handled", conn.CloseReason())
				}
			})
		})
	}
}

func TestShutdownClosesEveryConnectionOnce(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s, r := serve(t, engine, Options{})
		tcp := dial(t, s)
		write(t, tcp, []byte(`{}`))
		w := dialWS(t, s)
		w.send(t, true, ws.OpText, []byte(`{}`))
		conns := map[*Conn]bool{r.message(t).c: true, r.message(t).c: true}
		dial(t, s) // not sniffed yet
		waitUntil(t, func() bool { return s.Count() == 3 })

		// Well-behaved clients: close once the server has.
		go func() { io.Copy(io.Discard, tcp); tcp.Close() }()
		go func() {
			for {
				f, err := readFrame(w.r)
				if err != nil {
					return
				}
				if f.Header.OpCode == ws.OpClose {
					w.Write(clientFrame(true, ws.OpClose, f.Payload))
					w.Close()
					return
				}
			}
		}()
		// The unsniffed client never closes: Shutdown ends it at the deadline.
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		if err := s.Shutdown(ctx, ReasonShutdown); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown: %v", err)
		}
		if s.Count() != 0 {
			t.Fatalf("%d connections left", s.Count())
		}
		for range 3 {
			got := r.closed(t)
			if got.reason != ReasonShutdown {
				t.Fatalf("closed with %v", got.reason)
			}
			delete(conns, got.c)
			if n := r.closeCount(got.c); n != 1 {
				t.Fatalf("OnClose ran %d times", n)
			}
		}
		if len(conns) != 0 {
			t.Fatal("a connection that sent a message was not closed")
		}
		r.noEvents(t)
	})
}

func TestShutdownWaitsForGracefulClients(t *testing.T) {
	eachEngine(t, func(t *testing.T, engine string) {
		s, r := serve(t, engine, Options{})
		w := dialWS(t, s)
		w.send(t, true, ws.OpText, []byte(`{}`))
		r.message(t)
		done := make(chan error, 1)
		go func() { done <- s.Shutdown(context.Background(), ReasonShutdown) }()
		if code := w.closeCode(t); code != ws.StatusGoingAway {
			t.Fatalf("close code %d", code)
		}
		w.send(t, true, ws.OpClose, ws.NewCloseFrameBody(ws.StatusGoingAway, ""))
		readToEOF(t, w)
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
		case <-time.After(waitFor):
			t.Fatal("Shutdown did not return")
		}
		if got := r.closed(t); got.reason != ReasonShutdown {
			t.Fatalf("closed with %v", got.reason)
		}
	})
}

// logHandler records calls as text, for a test that drives a Conn's read
// path on its own goroutine.
type logHandler struct{ events []string }

func (h *logHandler) OnMessage(_ *Conn, p []byte) { h.events = append(h.events, "msg:"+string(p)) }
func (h *logHandler) OnFramingError(_ *Conn, err error) {
	h.events = append(h.events, "err:"+err.Error())
}
func (h *logHandler) OnClose(*Conn, CloseReason) {}

// nopEngine stands in for an engine when the test feeds the read path.
type nopEngine struct{}

func (nopEngine) start() error         { return nil }
func (nopEngine) register(*Conn) error { return nil }
func (nopEngine) writeBlocked(*Conn)   {}
func (nopEngine) writeShut(*Conn)      {}
func (nopEngine) unregister(*Conn)     {}
func (nopEngine) closeFd(*Conn)        {}
func (nopEngine) stopAccepting()       {}
func (nopEngine) stop()                {}

var pairMetrics = newMetrics(nil)

// pairConn is a Conn writing to one end of a socket pair; the other end is
// returned, to read what it wrote. Call c.onData to feed its read path.
func pairConn(t *testing.T, opts Options, h Handler) (c *Conn, peer int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		if err := unix.SetNonblock(fd, true); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	opts.setDefaults()
	s := &Server{opts: opts, handler: h, metrics: pairMetrics, engine: nopEngine{}, conns: map[int]*Conn{}}
	return &Conn{fd: fds[0], srv: s}, fds[1]
}

// drain reads what is waiting on a non-blocking socket.
func drain(t *testing.T, fd int) []byte {
	t.Helper()
	var out []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(fd, buf)
		switch {
		case n > 0:
			out = append(out, buf[:n]...)
		case errors.Is(err, unix.EINTR):
		case err == nil || errors.Is(err, unix.EAGAIN):
			return out
		default:
			t.Fatal(err)
		}
	}
}
