package conn

// TLS on the client port, sniffed next to plain connections: a first byte
// of 0x16 (a TLS handshake record) starts TLS; the transport inside (raw TCP
// or WebSocket) is then sniffed from the decrypted bytes as usual.
//
// crypto/tls wants a net.Conn. tlsSocket is one over the connection's own
// descriptor and queue:
//   - Writes never block: each ciphertext record is copied into the
//     connection's output queue, which the engine flushes as usual. So a
//     tls.Conn write never waits on the peer, and tls.Conn is never called
//     with Conn.mu held (the lock order is tls.Conn's own locks, then
//     Conn.mu).
//   - Reads, once the handshake is done, return errWouldBlock on EAGAIN. It
//     is a temporary net.Error, which tls.Conn does not keep as a failure: a
//     record cut in the middle stays in its buffer for the next read. So the
//     epoll workers read TLS exactly as they read plain sockets, and an idle
//     TLS connection holds no goroutine either.
//   - The handshake cannot be resumed that way (crypto/tls keeps a handshake
//     error for good), so under the epoll engine it runs on a goroutine of
//     its own that waits for the poller between reads; HandshakeTimeout
//     bounds it. The goroutine engine's reader simply blocks.

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// tlsRecordHandshake is the first byte of every TLS connection (a handshake
// record); no raw TCP JSON stream or HTTP request starts with it.
const tlsRecordHandshake = 0x16

// tlsState is a connection's TLS layer.
type tlsState struct {
	conn        *tls.Conn
	sock        *tlsSocket
	handshaking atomic.Bool
	wake        chan struct{} // the poller's "readable" for the handshake goroutine; capacity 1
}

// signal wakes the handshake goroutine, if it waits; a wake-up that comes
// before it waits is kept.
func (ts *tlsState) signal() {
	select {
	case ts.wake <- struct{}{}:
	default:
	}
}

// beginTLS starts TLS on a connection whose first bytes (p, all of them)
// are a TLS record. It runs on the read side.
func (c *Conn) beginTLS(p []byte) int {
	ts := &tlsState{wake: make(chan struct{}, 1)}
	ts.sock = &tlsSocket{c: c, ts: ts, pre: append([]byte(nil), p...), wait: c.g == nil}
	ts.conn = tls.Server(ts.sock, c.srv.tlsConfig)
	ts.handshaking.Store(true)
	c.tls.Store(ts)
	c.tlsHandoff = c.g == nil // epoll: the read side passes to the handshake goroutine
	return len(p)
}

// handshakeTLS runs the handshake on its own goroutine (epoll engine), then
// reads what came with it and gives the read side back to the poller. It
// owns the read side meanwhile: only it may tear the connection down.
func (c *Conn) handshakeTLS(ts *tlsState, p *pool) {
	defer c.srv.handshakes.Done()
	err := ts.conn.Handshake()
	ts.handshaking.Store(false)
	ts.sock.wait = false
	c.tlsHandoff = false
	c.srv.metrics.tlsHandshake(err)
	if err != nil {
		c.markClosing(ReasonTLSError)
		c.teardown()
		return
	}
	buf := readBuffers.Get().(*[]byte)
	c.readTurn(*buf, p)
	readBuffers.Put(buf)
}

// readTLS is readAvailable for a TLS connection.
func (c *Conn) readTLS(ts *tlsState, buf []byte) readStatus {
	for range maxReadsPerTurn {
		n, err := ts.conn.Read(buf)
		if n > 0 {
			c.onData(buf[:n])
		}
		if err == nil {
			continue
		}
		if errors.Is(err, errWouldBlock) {
			return readDrained
		}
		c.markClosing(tlsReadReason(err))
		return readClosed
	}
	return readBusy
}

// tlsReadReason names why a TLS read ended.
func tlsReadReason(err error) CloseReason {
	var errno syscall.Errno
	switch {
	case errors.Is(err, io.EOF):
		return ReasonClientClosed
	case errors.As(err, &errno):
		return ReasonIOError
	}
	return ReasonTLSError // a bad record, an alert, a failed handshake
}

// writeTLS encrypts one framed message into the output queue. The queue
// limit is applied to the message as a whole, as for plain connections (see
// enqueueLocked), since its records must all go.
func (c *Conn) writeTLS(ts *tlsState, it *outItem) bool {
	size := it.size() + queuedItemCost // at least one record, one slot
	if q, limit := c.queuedCost(), c.srv.opts.MaxQueueBytes; q > 0 && q+size > limit {
		c.srv.metrics.queueOverflows.Inc()
		c.Abort(ReasonSlowConsumer)
		return false
	}
	msg := make([]byte, 0, size)
	msg = append(msg, it.head[:it.headLen]...)
	msg = append(msg, it.data...)
	if it.newline {
		msg = append(msg, '\n')
	}
	_, err := ts.conn.Write(msg)
	return err == nil
}

// errWouldBlock is what tlsSocket.Read returns on EAGAIN outside the
// handshake: temporary, so tls.Conn keeps its state and returns it.
var errWouldBlock error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "would block" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

var errQueueClosed = errors.New("connection closing")

// tlsSocket is the net.Conn under a connection's tls.Conn; see the top of
// this file.
type tlsSocket struct {
	c    *Conn
	ts   *tlsState
	pre  []byte // bytes read while sniffing, delivered first
	wait bool   // epoll handshake: on EAGAIN wait for the poller, don't return
}

func (s *tlsSocket) Read(p []byte) (int, error) {
	if len(s.pre) > 0 {
		n := copy(p, s.pre)
		if s.pre = s.pre[n:]; len(s.pre) == 0 {
			s.pre = nil
		}
		return n, nil
	}
	c := s.c
	if c.g != nil {
		return c.g.read(p)
	}
	for {
		n, err := unix.Read(c.fd, p)
		switch {
		case n > 0:
			return n, nil
		case err == nil:
			return 0, io.EOF
		case errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.EAGAIN):
			if !s.wait {
				return 0, errWouldBlock
			}
			<-s.ts.wake // the poller saw input, or the connection is aborted
		default:
			return 0, err
		}
	}
}

// Write queues a copy of a ciphertext record (tls.Conn reuses its buffer).
func (s *tlsSocket) Write(p []byte) (int, error) {
	if !s.c.enqueueOwned(append([]byte(nil), p...)) {
		return 0, errQueueClosed
	}
	return len(p), nil
}

// Close does nothing: the connection's lifecycle owns the descriptor.
func (s *tlsSocket) Close() error { return nil }

func (s *tlsSocket) LocalAddr() net.Addr  { return &net.TCPAddr{} }
func (s *tlsSocket) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(s.c.remote) }

// Deadlines are the sweeper's business (HandshakeTimeout and the rest).
func (s *tlsSocket) SetDeadline(time.Time) error      { return nil }
func (s *tlsSocket) SetReadDeadline(time.Time) error  { return nil }
func (s *tlsSocket) SetWriteDeadline(time.Time) error { return nil }
