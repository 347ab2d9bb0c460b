package conn

// A connection's life: who may do what, and when.
//
// Lifecycle states (Conn.state, under Conn.mu; they only move forward):
//
//	open ──Close──▶ closing ──queue drained──▶ writeShut
//	  │                                           ▲
//	  └──────────────── Abort ────────────────────┘
//	any of them ──the read side meets EOF or an error──▶ dead
//
// One exception to the last line: the peer's FIN on an open connection is
// a half-close. The handler queues what is still due (InputEndHandler), the
// read side calls Close, and it tears the connection down only once the
// state is writeShut (peerFinished): the epoll engine's read side is
// brought back by the event that follows the shutdown, the goroutine
// engine's reader waits for the engine's writeShut.
//
//   - open: messages flow both ways. Any goroutine may Send, Close or Abort.
//   - closing: a graceful close was asked (Close, or the read side after the
//     peer's close frame, a protocol error or a refused HTTP request). Send
//     refuses new messages; what was queued before, and the frames that end
//     the conversation (a close frame, an HTTP answer, pongs), drain; then
//     the write side is shut. Still open after WriteTimeout: the sweeper
//     aborts it.
//   - writeShut: FIN sent, lingering. The read side reads and drops what the
//     peer still sends until it closes, because closing with unread input
//     makes the kernel send a reset that can destroy the last reply. Still
//     open after LingerTimeout: the sweeper aborts it. Abort also lands here,
//     with the queue dropped and the read direction shut too, so that the
//     read side sees EOF at once. Nothing more is queued.
//   - dead: teardown closed the descriptor, forgot the Conn and called
//     OnClose, once. Nothing may touch the descriptor.
//
// The close reason is set once, by the first markClosing: Close, Abort, or
// the read or write side meeting the end of the stream, an error, a protocol
// violation or an overflowing queue. It is counted then, reported by
// CloseReason and OnClose, and Closing is true from then on, whatever the
// state: the reason says why, the state how far the close has gone.
//
// Ownership, which is what keeps a descriptor from being used after close:
//   - The read side (readState, in, scan, ws, discardIn, the PROXY header
//     and remote, the TLS handshake) belongs to one goroutine at a time: the
//     pool worker holding readState (epoll engine), a TLS connection's
//     handshake goroutine (epoll engine, until the handshake ends), the
//     connection's reader goroutine (goroutine engine), or, once the engine
//     has stopped, Server.Shutdown. Only that owner calls teardown,
//     so only it closes the descriptor.
//   - state and the output queue may be touched by any goroutine under mu.
//     A syscall on the descriptor outside the read side (write, shutdown)
//     happens under mu after checking that the state is not dead; teardown
//     sets dead under mu before it closes.
//   - reason and closeBy are atomics, read without the lock by Closing, Send
//     and the sweeper.

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// connState is how far a connection's close has gone; see the top of this
// file. Only increasing transitions are made.
type connState uint8

const (
	stateOpen      connState = iota
	stateClosing             // draining the queue before FIN
	stateWriteShut           // FIN sent (or aborted): reading until the peer closes
	stateDead                // descriptor closed
)

func (s connState) String() string {
	switch s {
	case stateOpen:
		return "open"
	case stateClosing:
		return "closing"
	case stateWriteShut:
		return "write_shut"
	case stateDead:
		return "dead"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// readState says who owns the read side under the epoll engine. The
// goroutine engine's reader owns it for the connection's whole life and
// never changes it.
type readState int32

const (
	readIdle    readState = iota // no owner: the next input event hands the connection to a worker
	readRunning                  // a worker owns the read side
	readAgain                    // owned, and input arrived meanwhile: the owner reads once more
)

func (s readState) String() string {
	switch s {
	case readIdle:
		return "idle"
	case readRunning:
		return "running"
	case readAgain:
		return "again"
	}
	return fmt.Sprintf("readState(%d)", int32(s))
}

// scheduleRead hands the connection to a worker unless one already owns its
// read side; in that case it tells the owner to read once more, so an edge
// that arrives while the owner is finishing is never lost. Only the poller
// calls it.
func (c *Conn) scheduleRead(p *pool) {
	for {
		switch readState(c.readState.Load()) {
		case readIdle:
			if c.readState.CompareAndSwap(int32(readIdle), int32(readRunning)) {
				p.submit(c)
				return
			}
		case readRunning:
			if c.readState.CompareAndSwap(int32(readRunning), int32(readAgain)) {
				return
			}
		default:
			return
		}
	}
}

// releaseRead gives up the read side after the owner read to EAGAIN. It
// reports false when input arrived meanwhile: the caller keeps the read side
// and reads again.
func (c *Conn) releaseRead() bool {
	if c.readState.CompareAndSwap(int32(readRunning), int32(readIdle)) {
		return true
	}
	c.readState.Store(int32(readRunning)) // was readAgain
	return false
}

// CloseReason is the reason the connection is closing, or ReasonNone.
func (c *Conn) CloseReason() CloseReason { return CloseReason(c.reason.Load()) }

// Closing reports whether a close has been asked for or has happened.
func (c *Conn) Closing() bool { return c.reason.Load() != uint32(ReasonNone) }

// markClosing records why the connection ends and counts it. The first
// reason wins; it reports whether this call's did. It changes no state: the
// caller decides how the connection closes.
func (c *Conn) markClosing(r CloseReason) bool {
	if !c.reason.CompareAndSwap(uint32(ReasonNone), uint32(r)) {
		return false
	}
	c.srv.metrics.closing(r)
	return true
}

// Close closes the connection gracefully: what is queued is sent first (for a
// WebSocket, followed by a close frame), then the write side is shut and the
// socket is closed when the peer closes or after a short linger. Safe to call
// from any goroutine, any number of times; the first reason wins.
func (c *Conn) Close(reason CloseReason) {
	if !c.markClosing(reason) {
		return
	}
	var last []byte
	if c.Transport() == TransportWebSocket {
		last = wsCloseFrame(reason.wsStatus(), "")
	}
	c.closeAfterSend(last)
}

// closeAfterSend queues last (if not nil), then moves an open connection to
// closing: the write side is shut once the queue drains. The caller has set
// the reason.
func (c *Conn) closeAfterSend(last []byte) {
	if last != nil {
		c.emit(&outItem{data: last}) // outside mu: TLS encrypts first
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateOpen {
		return
	}
	c.state = stateClosing
	c.closeWithin(c.srv.opts.WriteTimeout)
	if len(c.out) == 0 {
		c.shutWriteLocked()
	}
}

// Abort closes the connection now, dropping queued output. Safe to call from
// any goroutine, any number of times; the first reason wins.
func (c *Conn) Abort(reason CloseReason) {
	c.markClosing(reason)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.abortLocked()
}

// abortLocked drops the output and shuts both directions; the read side sees
// EOF and tears the connection down. It shuts again when already lingering:
// that is how the linger timeout ends a peer that never closes. c.mu must be
// held.
func (c *Conn) abortLocked() {
	if c.state == stateDead {
		return
	}
	c.dropOutLocked()
	if r := c.CloseReason(); r == ReasonSlowConsumer || (r == ReasonMemoryBudget && !c.bud.cut.Load()) {
		// The peer does not take what it is sent (or holds the most output
		// when the budget is full): closing resets, so the kernel drops the
		// bytes still in the socket's send buffer (up to megabytes, charged
		// to the node's memory cgroup) instead of keeping them while it
		// probes a window that never opens. A cut for the input budget
		// closes normally: its explanation must still reach the client.
		_ = unix.SetsockoptLinger(c.fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	}
	first := c.state < stateWriteShut
	c.state = stateWriteShut
	shutdownFd(c.fd, true)
	if first {
		c.srv.engine.writeShut(c)
	}
	if ts := c.tls.Load(); ts != nil {
		ts.signal() // a handshake waiting for input reads the EOF
	}
}

// shutWriteLocked sends FIN after the queued bytes and starts the linger
// (see writeShut above). c.mu must be held.
func (c *Conn) shutWriteLocked() {
	if c.state >= stateWriteShut {
		return
	}
	c.state = stateWriteShut
	c.closeWithin(c.srv.opts.LingerTimeout)
	shutdownFd(c.fd, false)
	c.srv.engine.writeShut(c)
}

// closeWithin brings the abort deadline of a closing connection to at most
// d from now. c.mu must be held (closeBy is only written under it).
func (c *Conn) closeWithin(d time.Duration) {
	by := nowNano() + int64(d)
	if old := c.closeBy.Load(); old == 0 || by < old {
		c.closeBy.Store(by)
	}
}

// closeExpired reports whether a closing connection has outlived its
// deadline; the sweeper then aborts it.
func (c *Conn) closeExpired(now int64) bool {
	by := c.closeBy.Load()
	return by != 0 && now > by
}

func shutdownFd(fd int, both bool) {
	how := unix.SHUT_WR
	if both {
		how = unix.SHUT_RDWR
	}
	_ = unix.Shutdown(fd, how) // ENOTCONN after the peer's reset is expected
}

// teardown closes the socket and forgets the connection, then tells the
// handler. Only the read side's owner calls it; a second call does nothing,
// so OnClose runs once per Conn.
func (c *Conn) teardown() {
	c.mu.Lock()
	if c.state == stateDead {
		c.mu.Unlock()
		return
	}
	c.state = stateDead
	c.dropOutLocked()
	c.mu.Unlock()
	s := c.srv
	s.engine.unregister(c)
	s.mu.Lock()
	if s.conns[c.fd] == c {
		delete(s.conns, c.fd)
	}
	s.mu.Unlock()
	// Close before the handler's cleanup, which may be slow: the peer
	// learns at once, and the descriptor is free for the next accept.
	s.engine.closeFd(c)
	s.release(c)
	c.in, c.ws = nil, nil
	c.tls.Store(nil)
	c.syncIn()
	s.count.Add(-1)
	s.metrics.closed(c.Transport())
	s.handler.OnClose(c, c.CloseReason())
}
