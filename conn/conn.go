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
// lifecycle.go describes its states and which goroutine owns what.
type Conn struct {
	// The fields are ordered by size, so that padding does not push a Conn
	// into a larger allocation class: it is most of an idle connection's
	// memory (TestConnFitsItsSizeClass).
	id     uint64
	fd     int
	srv    *Server
	remote netip.AddrPort

	created int64        // unix nanos
	closeBy atomic.Int64 // unix nanos: a closing Conn still open then is aborted; 0 = not closing

	// Deadlines watched by the sweeper (unix nanos, 0 = none).
	active       atomic.Int64 // last byte read or written, or last ping sent
	inSince      atomic.Int64 // when c.in became non-empty
	stalledSince atomic.Int64 // when a write last left output queued with no progress since

	// Read side, owned by one goroutine at a time (see lifecycle.go).
	in   []byte    // bytes received but not yet consumed; nil when idle
	ws   *wsReader // a fragmented or skipped WebSocket message in progress; nil when none
	scan jsonScanner
	tls  atomic.Pointer[tlsState] // set once by the read side; nil for plain connections

	ctx any            // the handler's session; see SetContext
	g   *goroutineConn // only with the goroutine engine

	mu       sync.Mutex
	out      []outItem // queued output, oldest first
	outOff   int       // bytes of out[0] already written
	outBytes int       // bytes queued (including out[0]'s unwritten part)

	bud connBudget // its share of the node-wide memory budgets (budget.go)

	transport  atomic.Uint32 // Transport; set once by the read side
	reason     atomic.Uint32 // CloseReason; the first one set wins (markClosing)
	readState  atomic.Int32  // readState; epoll engine only
	identified atomic.Bool   // the handler said the peer identified itself (SetIdentified)
	// hungUp: the poller saw the peer close or the socket fail, so a read
	// that fills less than its buffer no longer ends the read turn: no new
	// edge would come for the end of the stream (epoll engine only).
	hungUp atomic.Bool

	state      connState // under mu
	inBatch    bool      // under mu: queued by a Batch that has not flushed yet
	discardIn  bool      // read side: closing: read and drop whatever the peer still sends
	proxyDone  bool      // read side: the PROXY header was read (Options.ProxyProtocol)
	inputEnded bool      // read side: the peer's FIN came while open (peerFinished)
	ipCounted  bool      // counted under MaxConnsPerIP (Server.admitAddr)
	// tlsHandoff: the read side passes to the TLS handshake goroutine at
	// the end of this read (epoll engine).
	tlsHandoff bool
}

// SetIdentified tells the connection that its peer identified itself (a
// login succeeded): LoginTimeout no longer applies.
func (c *Conn) SetIdentified() { c.identified.Store(true) }

// ID is a process-unique number for logs.
func (c *Conn) ID() uint64 { return c.id }

// RemoteAddr is the client's address: the socket's, or the one a PROXY
// protocol header gave. Call it from the read side (OnMessage, OnClose): the
// header is read there, before the first message.
func (c *Conn) RemoteAddr() netip.AddrPort { return c.remote }

// TLS reports whether the connection is encrypted by the node.
func (c *Conn) TLS() bool { return c.tls.Load() != nil }

// Transport is the connection's framing, known before the first OnMessage.
func (c *Conn) Transport() Transport { return Transport(c.transport.Load()) }

// SetContext attaches the handler's state. Call it from OnMessage before the
// Conn is published to other goroutines (which then see it through that
// publication's synchronisation).
func (c *Conn) SetContext(v any) { c.ctx = v }

// Context returns what SetContext stored.
func (c *Conn) Context() any { return c.ctx }
