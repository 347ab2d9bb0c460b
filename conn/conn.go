package conn

import (
	"net/netip"
	"sync"
	"sync/atomic"
)

// Transport is how a connection frames its messages, decided by sniffing its
// first bytes.
type Transport uint32

const (
	TransportUnknown Transport = iota // not sniffed yet
	TransportTCP                      // raw JSON stream, one object + "\n" per message out
	TransportWebSocket
	transportHTTP // a plain HTTP request being answered and closed
)

func (t Transport) String() string {
	switch t {
	case TransportTCP:
		return "tcp"
	case TransportWebSocket:
		return "websocket"
	case transportHTTP:
		return "http"
	}
	return "unknown"
}

// Conn is one client connection. An idle Conn holds no goroutine and no
// buffer: input is read by a pool worker when epoll reports it, and output is
// written straight to the socket until the socket is full.
//
// Ownership: the read side (in, scan, ws) belongs to the single worker that
// holds readState; only that worker closes the descriptor (teardown), so no
// other goroutine can use a closed or reused fd. Everything under mu may be
// touched by any goroutine; fd syscalls outside the read side happen under mu
// after checking dead.
type Conn struct {
	id     uint64
	fd     int
	srv    *Server
	remote netip.AddrPort

	transport atomic.Uint32 // Transport; set once by the read side
	reason    atomic.Uint32 // CloseReason; the first one set wins
	created   int64         // unix nanos

	// Read side, owned by the worker holding readState (see scheduleRead).
	readState atomic.Int32
	in        []byte // bytes received but not yet consumed; nil when idle
	scan      jsonScanner
	ws        wsReader
	discardIn bool // closing: read and drop whatever the peer still sends

	// Deadlines watched by the sweeper (unix nanos, 0 = none).
	active    atomic.Int64 // last byte read or written, or last ping sent
	inSince   atomic.Int64 // when c.in became non-empty
	shutWrAt  atomic.Int64 // when the write side was shut (lingering close)
	closingAt atomic.Int64 // when a graceful close was asked for

	mu            sync.Mutex
	out           []outItem // queued output, oldest first
	outOff        int       // bytes of out[0] already written
	outBytes      int       // bytes queued (including out[0]'s unwritten part)
	closeWhenSent bool      // shut the write side once out drains
	writeShut     bool
	dead          bool // torn down: the fd is closed, never touch it

	ctx any // the handler's session; see SetContext

	g *goroutineConn // only with the goroutine engine
}

// ID is a process-unique number for logs.
func (c *Conn) ID() uint64 { return c.id }

// RemoteAddr is the peer's address.
func (c *Conn) RemoteAddr() netip.AddrPort { return c.remote }

// Transport is the connection's framing, known before the first OnMessage.
func (c *Conn) Transport() Transport { return Transport(c.transport.Load()) }

// SetContext attaches the handler's state. Call it from OnMessage before the
// Conn is published to other goroutines (which then see it through that
// publication's synchronisation).
func (c *Conn) SetContext(v any) { c.ctx = v }

// Context returns what SetContext stored.
func (c *Conn) Context() any { return c.ctx }

// CloseReason is the reason the connection is closing, or ReasonNone.
func (c *Conn) CloseReason() CloseReason { return CloseReason(c.reason.Load()) }

// Closing reports whether a close has been asked for.
func (c *Conn) Closing() bool { return c.reason.Load() != uint32(ReasonNone) }

func (c *Conn) setReason(r CloseReason) bool {
	return c.reason.CompareAndSwap(uint32(ReasonNone), uint32(r))
}

// Close closes the connection gracefully: what is queued is sent first (for a
// WebSocket, followed by a close frame), then the write side is shut and the
// socket is closed when the peer closes or after a short linger. Safe to call
// from any goroutine, any number of times; the first reason wins.
func (c *Conn) Close(reason CloseReason) {
	if !c.setReason(reason) {
		return
	}
	c.closingAt.CompareAndSwap(0, nowNano())
	c.srv.metrics.closing(reason)
	if c.Transport() == TransportWebSocket {
		c.sendRaw(wsCloseFrame(reason.wsStatus(), ""))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return
	}
	c.closeWhenSent = true
	if len(c.out) == 0 {
		c.shutWriteLocked()
	}
}

// Abort closes the connection now, dropping queued output.
func (c *Conn) Abort(reason CloseReason) {
	first := c.setReason(reason)
	if first {
		c.srv.metrics.closing(reason)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.abortLocked()
}

// abortLocked drops the output and shuts both directions; the read side sees
// EOF and tears the connection down. c.mu must be held.
func (c *Conn) abortLocked() {
	if c.dead {
		return
	}
	c.out, c.outOff, c.outBytes = nil, 0, 0
	shutdownFd(c.fd, true)
}

// shutWriteLocked sends FIN after the queued bytes. The read side keeps
// draining input until the peer closes, so that unread input does not turn
// our close into a reset that would destroy the last reply (lingering close).
// c.mu must be held.
func (c *Conn) shutWriteLocked() {
	if c.writeShut || c.dead {
		return
	}
	c.writeShut = true
	c.shutWrAt.Store(nowNano())
	shutdownFd(c.fd, false)
}
