package conn

import (
	"errors"
	"unsafe"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"
)

// outItem is one queued message. data may be shared by many connections (a
// notification is encoded once for all devices of a user), so it is never
// modified; framing lives beside it.
type outItem struct {
	head    [maxWSHeader]byte // WebSocket frame header, if any
	headLen uint8
	newline bool // raw TCP: a "\n" follows data
	pong    bool // a WebSocket pong, which a later ping's pong may replace while unsent
	data    []byte
	shared  *Shared // data's owner when counted once for many queues (SendShared)
}

func (it *outItem) size() int {
	n := int(it.headLen) + len(it.data)
	if it.newline {
		n++
	}
	return n
}

// queuedItemCost is what a queued message costs beyond its bytes: its slot
// in the queue, whose backing array may be twice as long as the queue. It is
// counted against the queue's limit and the output budget, or a flood of
// tiny messages (pongs, short error answers) would hold many times the
// memory the counts show.
const queuedItemCost = 2 * int(unsafe.Sizeof(outItem{}))

var newline = []byte{'\n'}

// maxIovecs bounds one writev call; the kernel's IOV_MAX is 1024.
const maxIovecs = 128

// Send queues one JSON message for the client, framed for its transport: a
// text frame for a WebSocket, the bytes and "\n" for raw TCP. payload is
// retained until written and must not be modified afterwards; it may be
// shared between connections. Send never blocks: it writes what the socket
// takes now and queues the rest. It returns false when the connection is
// closing, or when the queue would pass its byte limit, in which case the
// connection is aborted (a client that does not read must not grow memory).
func (c *Conn) Send(payload []byte) bool {
	it := c.framed(payload)
	if c.Closing() {
		return false
	}
	return c.emit(&it)
}

// framed frames payload for the connection's transport: a text frame's
// header for a WebSocket, a "\n" after it for raw TCP.
func (c *Conn) framed(payload []byte) outItem {
	it := outItem{data: payload}
	if c.Transport() == TransportWebSocket {
		it.headLen = uint8(putWSTextHeader(it.head[:], len(payload)))
	} else {
		it.newline = true
	}
	return it
}

// sendRaw queues bytes framed already (handshake answers, control frames).
func (c *Conn) sendRaw(p []byte) bool {
	return c.emit(&outItem{data: p})
}

// emit queues a framed message: encrypted first on a TLS connection. It
// must not be called with c.mu held (tls.Conn's locks come first).
func (c *Conn) emit(it *outItem) bool {
	if ts := c.tls.Load(); ts != nil {
		return c.writeTLS(ts, it)
	}
	return c.enqueue(it)
}

// enqueueOwned queues bytes that belong to this connection alone (TLS
// records) with no limit check: the caller checked the message they carry.
func (c *Conn) enqueueOwned(p []byte) bool {
	it := outItem{data: p}
	if !c.roomForOut(&it) {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state >= stateWriteShut {
		return false
	}
	c.out = append(c.out, it)
	c.outBytes += len(p)
	if len(c.out) == 1 {
		c.flushLocked()
	}
	c.publishOut()
	return true
}

func (c *Conn) enqueue(it *outItem) bool {
	if !c.roomForOut(it) {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.enqueueLocked(it)
}

// enqueueLocked queues it and writes what the socket takes. c.mu must be
// held.
func (c *Conn) enqueueLocked(it *outItem) bool {
	if c.state >= stateWriteShut {
		return false
	}
	size := it.size()
	if c.overflowsLocked(size) {
		return false
	}
	written := 0
	if len(c.out) == 0 {
		// The common case: the socket takes the whole message now, and it
		// is never queued (no allocation, no budget accounting).
		if written = c.writeNow(it, size); written == size {
			return true
		}
	}
	c.out = append(c.out, *it)
	c.outBytes += size
	c.holdOut(it)
	if written > 0 {
		c.advance(written)
	}
	if len(c.out) == 1 {
		c.flushLocked() // EAGAIN and errors are handled there
	}
	c.publishOut()
	return true
}

// overflowsLocked reports whether size more bytes would pass the queue's
// limit, and if so drops the connection as a slow consumer. One message
// larger than the whole limit still goes out on an empty queue, so a big
// read-all answer is never refused by itself. c.mu must be held.
func (c *Conn) overflowsLocked(size int) bool {
	if c.outBytes == 0 || size+queuedItemCost <= c.srv.opts.MaxQueueBytes-c.queuedCostLocked() { // no sum of the client's sizes: no overflow whatever the limit
		return false
	}
	c.markClosing(ReasonSlowConsumer)
	c.srv.metrics.queueOverflows.Inc()
	c.abortLocked()
	return true
}

// writeNow writes it straight to the socket and returns how much went. c.mu
// must be held and the queue must be empty.
func (c *Conn) writeNow(it *outItem, size int) int {
	if c.state == stateDead {
		return 0
	}
	n, _ := writev3(c.fd, [3][]byte{it.head[:it.headLen], it.data, nlIf(it.newline)})
	if n <= 0 {
		return 0
	}
	now := nowNano()
	c.active.Store(now)
	if n == size {
		c.stalledSince.Store(0)
	}
	return n
}

// onWritable runs when epoll reports the socket writable again.
func (c *Conn) onWritable() {
	c.mu.Lock()
	if len(c.out) > 0 {
		c.flushLocked()
		c.publishOut()
	}
	c.mu.Unlock()
}

// flushLocked writes queued output until done or the socket is full. On
// EAGAIN it returns; epoll's edge-triggered EPOLLOUT calls onWritable later.
// c.mu must be held.
func (c *Conn) flushLocked() {
	var iovs [maxIovecs][]byte
	for len(c.out) > 0 && c.state != stateDead {
		n := c.fillIovecs(iovs[:0])
		written, err := unix.Writev(c.fd, iovs[:n])
		if written > 0 {
			c.advance(written)
			now := nowNano()
			c.active.Store(now)
			if c.stalledSince.Load() != 0 {
				c.stalledSince.Store(now) // progress: the clock starts again
			}
		}
		if err == nil || errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			if c.stalledSince.Load() == 0 {
				c.stalledSince.Store(nowNano())
			}
			c.srv.engine.writeBlocked(c)
			return
		}
		// EPIPE, ECONNRESET…: the read side will see it too and tear down.
		c.markClosing(ReasonIOError)
		c.abortLocked()
		return
	}
	if len(c.out) == 0 {
		c.stalledSince.Store(0)
		c.out = nil // an idle connection keeps no buffer
		if c.state == stateClosing {
			c.shutWriteLocked()
		}
	}
}

func (c *Conn) fillIovecs(iovs [][]byte) int {
	skip := c.outOff
	for i := range c.out {
		it := &c.out[i]
		for _, part := range [3][]byte{it.head[:it.headLen], it.data, nlIf(it.newline)} {
			if len(part) == 0 {
				continue
			}
			if skip >= len(part) {
				skip -= len(part)
				continue
			}
			iovs = append(iovs, part[skip:])
			skip = 0
			if len(iovs) == cap(iovs) {
				return len(iovs)
			}
		}
	}
	return len(iovs)
}

func nlIf(b bool) []byte {
	if b {
		return newline
	}
	return nil
}

// advance drops n written bytes from the front of the queue.
func (c *Conn) advance(n int) {
	c.outBytes -= n
	n += c.outOff
	i := 0
	for ; i < len(c.out); i++ {
		size := c.out[i].size()
		if n < size {
			break
		}
		n -= size
		c.letGoOut(&c.out[i])
		c.out[i] = outItem{} // let shared payloads go
	}
	c.out = c.out[i:]
	c.outOff = n
}

// queuedCostLocked is what c's queue holds: its unwritten bytes and each
// message's slot. c.mu must be held.
func (c *Conn) queuedCostLocked() int { return c.outBytes + len(c.out)*queuedItemCost }

func (c *Conn) queuedCost() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queuedCostLocked()
}

// sendPong answers a ping. RFC 6455 5.5.3 lets an endpoint answer only the
// most recent of several pings: a pong still waiting unsent at the end of
// the queue takes the new payload instead of a second pong being queued, so
// a client that pings and never reads cannot grow the queue by a message per
// ping. (On TLS the pong is already a sealed record; there each counts.)
func (c *Conn) sendPong(payload []byte) {
	frame := wsControlFrame(ws.OpPong, payload)
	if c.tls.Load() == nil {
		c.mu.Lock()
		if n := len(c.out); n > 0 && c.out[n-1].pong && (n > 1 || c.outOff == 0) {
			last := &c.out[n-1]
			c.outBytes += len(frame) - len(last.data)
			last.data = frame
			c.publishOut()
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
	}
	c.emit(&outItem{data: frame, pong: true})
}

// QueuedBytes is the size of the output not yet written to the socket.
func (c *Conn) QueuedBytes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.outBytes
}
