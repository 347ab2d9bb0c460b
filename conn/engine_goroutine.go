package conn

import (
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// goroutineEngine is the classic design: per connection, a reader goroutine
// with its own buffer, blocked in Go's netpoller, and a writer goroutine
// that waits for the socket to drain. It runs the same framing and queues
// as the epoll engine and exists to measure what epoll saves.
type goroutineEngine struct {
	s          *Server
	wg         sync.WaitGroup // connection goroutines
	acceptDone chan struct{}  // closed when the accept loop ends
}

// goroutineConn is the per-connection state only this engine needs.
type goroutineConn struct {
	nc   *net.TCPConn
	raw  syscall.RawConn
	wake chan struct{} // the writer waits on it; closed at teardown
	shut chan struct{} // closed once the state is writeShut (engine.writeShut)
}

// goroutineReadBuffer is each connection's own read buffer.
const goroutineReadBuffer = 4 << 10

func (e *goroutineEngine) start() error {
	e.acceptDone = make(chan struct{})
	go e.acceptLoop()
	return nil
}

func (e *goroutineEngine) acceptLoop() {
	defer close(e.acceptDone)
	s := e.s
	var backoff time.Duration
	for {
		nc, err := s.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			backoff = min(max(2*backoff, 10*time.Millisecond), time.Second)
			s.metrics.acceptErrors.Inc()
			s.log.Warn().Err(err).Dur("backoff", backoff).Msg("accept paused")
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		remote, _ := netip4or6(nc.RemoteAddr())
		c := &Conn{remote: remote}
		if !s.admit(c) {
			nc.Close()
			continue
		}
		raw, err := nc.SyscallConn()
		if err == nil {
			err = raw.Control(func(f uintptr) { c.fd = int(f) })
		}
		if err != nil {
			s.release(c)
			nc.Close()
			continue
		}
		c.g = &goroutineConn{nc: nc, raw: raw, wake: make(chan struct{}, 1), shut: make(chan struct{})}
		s.attach(c)
	}
}

func (e *goroutineEngine) register(c *Conn) error {
	e.wg.Add(2)
	go e.readLoop(c)
	go e.writeLoop(c)
	return nil
}

func (e *goroutineEngine) readLoop(c *Conn) {
	defer e.wg.Done()
	buf := make([]byte, goroutineReadBuffer)
	for {
		var n int
		var err error
		ts := c.tls.Load()
		if ts != nil {
			n, err = ts.conn.Read(buf) // blocks in tlsSocket.Read: see c.g.read
		} else {
			n, err = c.g.read(buf)
		}
		if n > 0 {
			c.onData(buf[:n])
		}
		if ts != nil && ts.handshaking.Load() && ts.conn.ConnectionState().HandshakeComplete {
			ts.handshaking.Store(false)
			c.srv.metrics.tlsHandshake(nil)
		}
		switch {
		case err == nil:
			continue
		case errors.Is(err, io.EOF):
			if ts == nil && c.peerFinished() {
				// A half-close (without TLS, as on the epoll engine): the
				// answers still due drain, then the write side is shut
				// (or the sweeper aborts). Reading on would only meet
				// the EOF again.
				<-c.g.shut
			}
			c.markClosing(ReasonClientClosed)
		case ts != nil:
			if ts.handshaking.Load() {
				c.srv.metrics.tlsHandshake(err)
			}
			c.markClosing(tlsReadReason(err))
		default:
			c.markClosing(ReasonIOError)
		}
		c.teardown()
		return
	}
}

// read blocks until the socket has input, and reads it.
func (g *goroutineConn) read(p []byte) (int, error) {
	for {
		var n int
		var rerr error
		err := g.raw.Read(func(fd uintptr) bool {
			n, rerr = unix.Read(int(fd), p)
			return !errors.Is(rerr, unix.EAGAIN)
		})
		switch {
		case err != nil:
			return 0, err
		case n > 0:
			return n, nil
		case rerr == nil:
			return 0, io.EOF
		case errors.Is(rerr, unix.EINTR):
			continue
		}
		return 0, rerr
	}
}

// writeLoop waits until a write came back short, then until the socket
// takes more.
func (e *goroutineEngine) writeLoop(c *Conn) {
	defer e.wg.Done()
	for range c.g.wake {
		_ = c.g.raw.Write(func(uintptr) bool {
			c.onWritable()
			return c.QueuedBytes() == 0
		})
	}
}

func (e *goroutineEngine) writeBlocked(c *Conn) {
	select {
	case c.g.wake <- struct{}{}:
	default:
	}
}

func (e *goroutineEngine) writeShut(c *Conn) { close(c.g.shut) }

func (e *goroutineEngine) unregister(c *Conn) {}

func (e *goroutineEngine) closeFd(c *Conn) {
	close(c.g.wake)
	c.g.nc.Close()
}

// stopAccepting closes the listener, which ends Accept, and waits for the
// loop: a connection it was attaching would otherwise appear after
// Shutdown's last look.
func (e *goroutineEngine) stopAccepting() {
	e.s.ln.Close()
	<-e.acceptDone
}

func (e *goroutineEngine) stop() { e.wg.Wait() }
