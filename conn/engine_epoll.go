//go:build linux

package conn

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// epollAvailable: this engine is built on Linux only (see
// engine_portable.go).
const epollAvailable = true

func newEpollEngine(s *Server) (engine, error) { return &epollEngine{s: s}, nil }

// epollEngine keeps every client socket in one epoll instance. An idle
// connection is a few hundred bytes in the Server's table: no goroutine, no
// buffer. Accepting has a goroutine and an epoll instance of its own, so
// that a reconnect storm is accepted as fast as it arrives instead of
// overflowing the listen queue while the client loop is busy with reads.
type epollEngine struct {
	s        *Server
	poller   *poller // client sockets
	pool     *pool
	loopDone chan struct{}

	listenFd     int
	acceptPoller *poller       // the listening socket only
	accepted     chan struct{} // closed when the accept loop ends
}

func (e *epollEngine) start() error {
	// Accept ourselves on the listener's non-blocking fd, so accepted
	// sockets never enter Go's netpoller (taking them out again would need
	// a dup: twice the descriptors). The fd stays valid until s.ln.Close,
	// which happens only after the accept loop has ended (stopAccepting).
	raw, err := e.s.ln.SyscallConn()
	if err == nil {
		err = raw.Control(func(fd uintptr) { e.listenFd = int(fd) })
	}
	if err != nil {
		return fmt.Errorf("listener fd: %w", err)
	}
	if e.acceptPoller, err = newPoller(); err != nil {
		return err
	}
	// Level-triggered: the loop accepts until EAGAIN, or is told again.
	if err := e.acceptPoller.ctl(unix.EPOLL_CTL_ADD, e.listenFd, unix.EPOLLIN); err != nil {
		e.acceptPoller.close()
		return err
	}
	if e.poller, err = newPoller(); err != nil {
		e.acceptPoller.close()
		return err
	}
	e.pool = newPool(e.s.opts.Workers, e.s.opts.Workers*64)
	e.loopDone = make(chan struct{})
	e.accepted = make(chan struct{})
	go e.loop()
	go e.acceptLoop()
	return nil
}

func (e *epollEngine) acceptLoop() {
	defer close(e.accepted)
	var backoff time.Duration
	err := e.acceptPoller.wait(func(int, uint32) {
		if err := e.acceptAll(); err != nil {
			// Out of descriptors or memory: wait instead of spinning.
			backoff = min(max(2*backoff, 10*time.Millisecond), time.Second)
			e.s.metrics.acceptErrors.Inc()
			e.s.log.Warn().Err(err).Dur("backoff", backoff).Msg("accept paused")
			time.Sleep(backoff)
			return
		}
		backoff = 0
	})
	if err != nil {
		e.s.log.Error().Err(err).Msg("accept loop stopped")
	}
}

// acceptAll accepts until the listen queue is empty. It returns an error
// only when accepting must pause.
func (e *epollEngine) acceptAll() error {
	s := e.s
	for {
		fd, sa, err := unix.Accept4(e.listenFd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		switch {
		case err == nil:
			c := &Conn{fd: fd, remote: addrPort(sa)}
			if !s.admit(c) {
				unix.Close(fd)
				continue
			}
			s.attach(c)
		case errors.Is(err, unix.EAGAIN):
			return nil
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED):
		case errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE),
			errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.ENOMEM):
			return err
		default:
			s.log.Error().Err(err).Msg("accept failed")
			return nil
		}
	}
}

func (e *epollEngine) loop() {
	defer close(e.loopDone)
	s := e.s
	err := e.poller.wait(func(fd int, events uint32) {
		s.mu.RLock()
		c := s.conns[fd]
		s.mu.RUnlock()
		if c == nil {
			return // a stale event for a socket already torn down
		}
		if events&unix.EPOLLOUT != 0 {
			c.onWritable()
		}
		if events&readEvents != 0 {
			if events&hangupEvents != 0 {
				c.hungUp.Store(true)
			}
			if ts := c.tls.Load(); ts != nil && ts.handshaking.Load() {
				ts.signal()
			}
			c.scheduleRead(e.pool)
		}
	})
	if err != nil {
		s.log.Error().Err(err).Msg("epoll loop stopped")
	}
}

func (e *epollEngine) register(c *Conn) error { return e.poller.add(c.fd) }

// writeBlocked needs nothing: sockets are registered for EPOLLOUT,
// edge-triggered, so the poller calls onWritable when space frees up.
func (e *epollEngine) writeBlocked(*Conn) {}

// unregister is skipped once the engine has stopped: the epoll fd is closed
// then, and its number may belong to another file. Closing c.fd removes it
// from the set anyway.
// writeShut needs nothing here: the event that follows the shutdown brings
// a half-closed connection's read side back (peerFinished).
func (e *epollEngine) writeShut(*Conn) {}

func (e *epollEngine) unregister(c *Conn) {
	if e.poller != nil {
		e.poller.remove(c.fd)
	}
}

func (e *epollEngine) closeFd(c *Conn) { unix.Close(c.fd) }

// stopAccepting ends the accept loop; the caller closes the listener.
func (e *epollEngine) stopAccepting() {
	e.acceptPoller.wake()
	<-e.accepted
	e.acceptPoller.close()
}

func (e *epollEngine) stop() {
	e.poller.wake()
	<-e.loopDone
	e.pool.stop()
	// Connections are aborted by now, which ends every handshake; no worker
	// is left to start one. A connection whose handshake succeeded just
	// before is torn down by Shutdown like any other.
	e.s.handshakes.Wait()
	// No goroutine of the engine is left to see this write.
	e.poller.close()
	e.poller = nil
}
