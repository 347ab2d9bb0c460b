package conn

import (
	"bytes"
	"errors"
	"time"

	"golang.org/x/sys/unix"
)

// maxReadsPerTurn bounds how long one connection holds a worker: a client
// that never stops sending is put back at the end of the pool's queue.
const maxReadsPerTurn = 16

func nowNano() int64 { return time.Now().UnixNano() }

type readStatus uint8

const (
	readDrained   readStatus = iota // the kernel buffer is empty (EAGAIN, or a read short of the buffer)
	readBusy                        // more may be waiting; yield the worker
	readClosed                      // EOF or error: tear down
	readHandedOff                   // TLS starts: the handshake goroutine owns the read side now
)

// readTurn runs on a pool worker of the epoll engine that owns the read side.
func (c *Conn) readTurn(buf []byte, p *pool) {
	for {
		switch c.readAvailable(buf) {
		case readClosed:
			c.teardown()
			return
		case readHandedOff:
			c.srv.handshakes.Add(1)
			go c.handshakeTLS(c.tls.Load(), p)
			return
		case readBusy:
			if p.trySubmit(c) {
				return
			}
			continue // the queue is full: keep the turn rather than block
		}
		if c.releaseRead() {
			return
		}
	}
}

func (c *Conn) readAvailable(buf []byte) readStatus {
	if ts := c.tls.Load(); ts != nil {
		return c.readTLS(ts, buf)
	}
	for range maxReadsPerTurn {
		n, err := unix.Read(c.fd, buf)
		if n > 0 {
			c.onData(buf[:n])
			if c.tlsHandoff {
				return readHandedOff
			}
			if n < len(buf) && !c.hungUp.Load() {
				// The socket held less than the buffer: it is empty now,
				// and input arriving after this read raises a new edge
				// (scheduleRead then has the owner read again). Reading on
				// to EAGAIN would cost a system call per request.
				return readDrained
			}
			continue
		}
		switch {
		case err == nil: // n == 0: the peer's FIN
			if c.peerFinished() {
				return readDrained
			}
			c.markClosing(ReasonClientClosed)
			return readClosed
		case errors.Is(err, unix.EAGAIN):
			return readDrained
		case errors.Is(err, unix.EINTR):
			continue
		default:
			c.markClosing(ReasonIOError)
			return readClosed
		}
	}
	return readBusy
}

// peerFinished handles the peer's FIN. On an open connection it is a
// half-close: the peer has sent all it will and may still read. The
// handler queues the answers still due (InputEndHandler), the connection
// closes gracefully, and the read side waits while the queue drains: the
// event that follows the write side's shutdown brings it back here. It
// reports false when the read side should tear the connection down now:
// the FIN came while the connection was closing for another reason, or
// the half-close's own close has shut the write side.
func (c *Conn) peerFinished() bool {
	if !c.inputEnded {
		if c.Closing() {
			return false
		}
		c.inputEnded = true
		if h, ok := c.srv.handler.(InputEndHandler); ok {
			h.OnInputEnd(c)
		}
		c.Close(ReasonClientClosed)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state < stateWriteShut
}

// testHookRead, set only by tests (before any Server starts), is called by
// the read side after it has handled n bytes, to watch what it keeps.
var testHookRead func(c *Conn, n int)

// onData handles bytes just read. Complete messages go to the handler
// straight from the worker's buffer; only an incomplete tail is copied into
// c.in, and c.in is released as soon as it is consumed. Every growth of c.in
// is reserved in the input budget first (appendIn), which may cut this
// connection instead.
func (c *Conn) onData(p []byte) {
	c.active.Store(nowNano())
	if c.bud.cut.Load() && !c.discardIn {
		c.discardIn = true // cut for the input budget: drop what is held, below
	}
	if c.discardIn {
		if c.in != nil || c.ws != nil {
			c.in, c.ws = nil, nil
			c.inSince.Store(0)
			c.syncIn()
		}
		return
	}
	data := p
	buffered := len(c.in) > 0
	if buffered {
		c.in = c.appendIn(c.in, p)
		data = c.in
	}
	used := 0
	if !c.discardIn {
		used = c.consume(data)
	}
	rest := data[used:]
	switch {
	case len(rest) == 0 || c.discardIn:
		c.in = nil
		c.inSince.Store(0)
	case buffered:
		c.in = c.in[:copy(c.in, rest)]
		c.shrinkIn()
		if used > 0 {
			c.inSince.Store(nowNano())
		}
	default:
		if c.in = c.appendIn(nil, rest); !c.discardIn {
			c.inSince.Store(nowNano())
		}
	}
	if c.discardIn {
		c.in, c.ws = nil, nil // nothing more is read from it: its buffers go now
		c.inSince.Store(0)
	}
	if since := c.wsOpenSince(); since != 0 {
		// A fragmented message is timed from its first frame: frames that
		// each arrive whole must not keep an unfinished message alive.
		if cur := c.inSince.Load(); cur == 0 || since < cur {
			c.inSince.Store(since)
		}
	}
	c.syncIn()
	if testHookRead != nil {
		testHookRead(c, len(p))
	}
}

func (c *Conn) consume(p []byte) int {
	switch c.Transport() {
	case TransportUnknown:
		return c.sniff(p)
	case TransportTCP:
		return c.consumeTCP(p)
	case TransportWebSocket:
		return c.consumeWS(p)
	}
	c.discardIn = true
	return len(p)
}

func (c *Conn) setTransport(t Transport) {
	c.transport.Store(uint32(t))
	c.srv.metrics.transportKnown(t)
}

// consumeTCP hands each complete JSON value to the handler and returns how
// many bytes it used.
func (c *Conn) consumeTCP(p []byte) int {
	limit := c.srv.opts.MaxMessageBytes
	used := 0
	for !c.discardIn {
		start, end, res := c.scan.next(p[used:])
		switch res {
		case scanBlank:
			return len(p)
		case scanMore:
			if len(p)-used-start > limit {
				c.tcpFail(&TooBigError{Limit: limit})
				return len(p)
			}
			return used
		case scanBadStart:
			if startsScalar(p[used+start:]) {
				c.tcpFail(ErrNotObject)
			} else {
				c.tcpFail(ErrInvalidJSON)
			}
			return len(p)
		case scanNotJSON:
			c.tcpFail(ErrInvalidJSON)
			return len(p)
		}
		msg := p[used+start : used+end]
		used += end
		if len(msg) > limit {
			c.tcpFail(&TooBigError{Limit: limit})
			return len(p)
		}
		if c.Closing() {
			c.discardIn = true
			break
		}
		c.messageDone()
		c.srv.handler.OnMessage(c, msg)
	}
	return len(p)
}

// messageDone stops the read timeout's clock as a message is handed over
// whole: however long the handler takes (a store call), the message is not
// incomplete. onData starts the clock again for any rest it keeps.
func (c *Conn) messageDone() { c.inSince.Store(0) }

// tcpFail reports a framing error; a raw stream cannot be re-synchronised,
// so the connection closes once the answer is sent.
func (c *Conn) tcpFail(err error) {
	c.srv.handler.OnFramingError(c, err)
	c.discardIn = true
	c.Close(ReasonProtocolError)
}

// httpMethods are the request lines that mark a connection as HTTP. Anything
// else is a raw JSON stream.
var httpMethods = [][]byte{
	[]byte("GET "), []byte("HEAD "), []byte("POST "), []byte("PUT "), []byte("DELETE "),
	[]byte("OPTIONS "), []byte("PATCH "), []byte("CONNECT "), []byte("TRACE "),
}

// sniff decides the transport from the first bytes, after the PROXY header
// when one is expected: a TLS record starts TLS (the transport inside is
// sniffed from the decrypted bytes); an HTTP request line is a WebSocket
// upgrade (or a plain HTTP request to refuse); anything else, `{` or
// whitespace first, is a raw TCP client.
func (c *Conn) sniff(p []byte) int {
	used := 0
	if c.srv.opts.ProxyProtocol && !c.proxyDone {
		n, ok := c.readProxyHeader(p)
		if !ok || n == 0 {
			return n
		}
		if used, p = n, p[n:]; len(p) == 0 {
			return used
		}
	}
	if c.srv.tlsConfig != nil && c.tls.Load() == nil {
		switch {
		case p[0] == tlsRecordHandshake:
			return used + c.beginTLS(p)
		case c.srv.opts.TLSRequired:
			c.refuse(ReasonTLSRequired)
			return used + len(p)
		}
	}
	return used + c.sniffTransport(p)
}

func (c *Conn) sniffTransport(p []byte) int {
	http, undecided := false, false
	for _, m := range httpMethods {
		n := min(len(p), len(m))
		if bytes.Equal(p[:n], m[:n]) {
			if n == len(m) {
				http = true
			} else {
				undecided = true
			}
		}
	}
	switch {
	case http:
		return c.readHTTPHead(p)
	case undecided:
		return 0
	}
	c.setTransport(TransportTCP)
	return c.consumeTCP(p)
}

// maxHTTPHead bounds the request head of a WebSocket handshake.
const maxHTTPHead = 8 << 10

func (c *Conn) readHTTPHead(p []byte) int {
	end := bytes.Index(p, []byte("\r\n\r\n"))
	if end < 0 {
		if len(p) > maxHTTPHead {
			c.rejectHTTP(httpHeadTooLarge)
			return len(p)
		}
		return 0
	}
	end += 4
	if end > maxHTTPHead { // whether it came in one read or in many
		c.rejectHTTP(httpHeadTooLarge)
		return len(p)
	}
	if !c.upgrade(p[:end]) {
		return len(p)
	}
	return end + c.consumeWS(p[end:])
}
