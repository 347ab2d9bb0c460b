package conn

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// epollEngine keeps every socket in one epoll instance. An idle connection
// is a few hundred bytes in the Server's table: no goroutine, no buffer.
type epollEngine struct {
	s        *Server
	poller   *poller
	pool     *pool
	listenFd int
	backoff  time.Duration // owned by the poller goroutine
	loopDone chan struct{}
}

func (e *epollEngine) start() error {
	// Accept ourselves on the listener's non-blocking fd through our epoll,
	// so accepted sockets never enter Go's netpoller (taking them out again
	// would need a dup: twice the descriptors). The fd stays valid until
	// s.ln.Close, which happens only after it leaves our epoll.
	raw, err := e.s.ln.SyscallConn()
	if err == nil {
		err = raw.Control(func(fd uintptr) { e.listenFd = int(fd) })
	}
	if err != nil {
		return fmt.Errorf("listener fd: %w", err)
	}
	if e.poller, err = newPoller(); err != nil {
		return err
	}
	if err := e.poller.ctl(unix.EPOLL_CTL_ADD, e.listenFd, listenEvents); err != nil {
		e.poller.close()
		return err
	}
	e.pool = newPool(e.s.opts.Workers, e.s.opts.Workers*64)
	e.loopDone = make(chan struct{})
	go e.loop()
	return nil
}

func (e *epollEngine) loop() {
	defer close(e.loopDone)
	s := e.s
	err := e.poller.wait(func(fd int, events uint32) {
		if fd == e.listenFd {
			e.accept()
			return
		}
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
			c.scheduleRead(e.pool)
		}
	})
	if err != nil {
		s.log.Error().Err(err).Msg("epoll loop stopped")
	}
}

// maxAcceptsPerEvent keeps a connection storm from starving other events;
// the listener is level-triggered, so the rest are picked up next round.
const maxAcceptsPerEvent = 128

func (e *epollEngine) accept() {
	s := e.s
	s.lnMu.RLock()
	defer s.lnMu.RUnlock()
	if !s.accepting {
		return
	}
	for range maxAcceptsPerEvent {
		fd, sa, err := unix.Accept4(e.listenFd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			switch {
			case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR),
				errors.Is(err, unix.ECONNABORTED):
			case errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE),
				errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.ENOMEM):
				e.pauseAccepting(err)
			default:
				s.log.Error().Err(err).Msg("accept failed")
			}
			return
		}
		e.backoff = 0
		if !s.admit() {
			unix.Close(fd)
			continue
		}
		s.attach(&Conn{fd: fd, remote: addrPort(sa)})
	}
}

// pauseAccepting stops polling the listener for a while after running out
// of descriptors or memory, instead of spinning on a level-triggered event.
func (e *epollEngine) pauseAccepting(err error) {
	s := e.s
	e.backoff = min(max(2*e.backoff, 10*time.Millisecond), time.Second)
	s.metrics.acceptErrors.Inc()
	s.log.Warn().Err(err).Dur("backoff", e.backoff).Msg("accept paused")
	_ = e.poller.ctl(unix.EPOLL_CTL_MOD, e.listenFd, 0)
	time.AfterFunc(e.backoff, func() {
		s.lnMu.RLock()
		defer s.lnMu.RUnlock()
		if s.accepting {
			_ = e.poller.ctl(unix.EPOLL_CTL_MOD, e.listenFd, listenEvents)
		}
	})
}

func (e *epollEngine) register(c *Conn) error { return e.poller.add(c.fd) }

// writeBlocked needs nothing: sockets are registered for EPOLLOUT,
// edge-triggered, so the poller calls onWritable when space frees up.
func (e *epollEngine) writeBlocked(*Conn) {}

func (e *epollEngine) unregister(c *Conn) { e.poller.remove(c.fd) }

func (e *epollEngine) closeFd(c *Conn) { unix.Close(c.fd) }

func (e *epollEngine) stopAccepting() { e.poller.remove(e.listenFd) }

func (e *epollEngine) stop() {
	e.poller.wake()
	<-e.loopDone
	e.pool.stop()
	e.poller.close()
}
