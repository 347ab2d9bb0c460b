// Package conn accepts client connections on one port, tells raw-TCP JSON
// streams from WebSocket upgrades, frames messages both ways, and queues
// output per connection. It is built on epoll so that an idle connection
// costs no goroutine and no buffer.
package conn

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// Handler receives the messages of connections.
//
// For one Conn, OnMessage and OnFramingError calls from the read side never
// overlap and come in stream order; different Conns are handled concurrently
// on the pool's workers. A handler may block (a store write, say) at the cost
// of one worker. OnFramingError may also be called by the timeout sweeper.
type Handler interface {
	// OnMessage gets one request: a JSON value cut from a raw TCP stream, or
	// one reassembled WebSocket data message. p is valid only until return.
	OnMessage(c *Conn, p []byte)
	// OnFramingError reports input that broke the framing (its text is safe
	// to send to the client). The conn decides what follows: a raw TCP
	// stream closes after the answer, a WebSocket stays open.
	OnFramingError(c *Conn, err error)
	// OnClose is called once per Conn, after its socket is closed.
	OnClose(c *Conn, reason CloseReason)
}

// Options configure a Server. The zero value of a field means its default.
type Options struct {
	// Listen is the client address, host:port. Default ":5000".
	Listen string
	// Workers is the number of goroutines reading from sockets and running
	// handlers. Default 64.
	Workers int
	// MaxMessageBytes bounds one incoming message. Default 4 MiB.
	MaxMessageBytes int
	// MaxQueueBytes bounds a connection's unsent output; a client that lets
	// it fill is disconnected. Default 8 MiB.
	MaxQueueBytes int
	// MaxConns refuses connections past this count. Default 0: no limit
	// other than the process's descriptor limit.
	MaxConns int
	// ReadTimeout is how long a started message may take to arrive whole.
	// Default 30s.
	ReadTimeout time.Duration
	// WriteTimeout is how long a closing connection may take to send what
	// is queued. Default 10s.
	WriteTimeout time.Duration
	// LingerTimeout is how long a closed write side waits for the peer to
	// close before the socket is closed. Default 2s.
	LingerTimeout time.Duration
	// KeepAlive is the TCP keepalive idle time. Default 30s.
	KeepAlive time.Duration

	Logger     zerolog.Logger
	Registerer prometheus.Registerer // nil: metrics are not registered
}

func (o *Options) setDefaults() {
	if o.Listen == "" {
		o.Listen = ":5000"
	}
	if o.Workers <= 0 {
		o.Workers = 64
	}
	if o.MaxMessageBytes <= 0 {
		o.MaxMessageBytes = 4 << 20
	}
	if o.MaxQueueBytes <= 0 {
		o.MaxQueueBytes = 8 << 20
	}
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = 30 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 10 * time.Second
	}
	if o.LingerTimeout <= 0 {
		o.LingerTimeout = 2 * time.Second
	}
	if o.KeepAlive <= 0 {
		o.KeepAlive = 30 * time.Second
	}
}

// Server owns the listener, the epoll loop, the worker pool and every Conn.
type Server struct {
	opts     Options
	handler  Handler
	log      zerolog.Logger
	metrics  *metrics
	upgrader ws.Upgrader

	ln       *net.TCPListener
	listenFd int
	poller   *poller
	pool     *pool

	mu     sync.RWMutex
	conns  map[int]*Conn // by fd
	nextID atomic.Uint64

	// lnMu guards the listening fd: accept4 runs under it, shared, so the
	// fd is never closed (and its number reused) while the poller accepts.
	lnMu      sync.RWMutex
	accepting bool
	count     atomic.Int64

	acceptBackoff time.Duration
	stopSweep     chan struct{}
	done          sync.WaitGroup
	stopOnce      sync.Once
}

// Listen binds the client port and starts serving.
func Listen(opts Options, h Handler) (*Server, error) {
	opts.setDefaults()
	s := &Server{
		opts:      opts,
		handler:   h,
		log:       opts.Logger,
		metrics:   newMetrics(opts.Registerer),
		upgrader:  newUpgrader(),
		conns:     make(map[int]*Conn),
		stopSweep: make(chan struct{}),
		accepting: true,
	}
	ln, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", opts.Listen, err)
	}
	s.ln = ln.(*net.TCPListener)
	// Accept ourselves on the listener's non-blocking fd through our epoll,
	// so accepted sockets never enter Go's netpoller (taking them out again
	// would need a dup: twice the descriptors). The fd stays valid until
	// s.ln.Close, which happens only after it leaves our epoll.
	raw, err := s.ln.SyscallConn()
	if err == nil {
		err = raw.Control(func(fd uintptr) { s.listenFd = int(fd) })
	}
	if err != nil {
		s.ln.Close()
		return nil, fmt.Errorf("listener fd: %w", err)
	}
	if s.poller, err = newPoller(); err != nil {
		s.ln.Close()
		return nil, err
	}
	if err := s.poller.ctl(unix.EPOLL_CTL_ADD, s.listenFd, listenEvents); err != nil {
		s.poller.close()
		s.ln.Close()
		return nil, err
	}
	s.pool = newPool(opts.Workers, opts.Workers*64)
	s.done.Add(2)
	go s.loop()
	go s.sweep()
	return s, nil
}

// Addr is the address the client port is bound to.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Count is the number of open connections.
func (s *Server) Count() int { return int(s.count.Load()) }

func (s *Server) loop() {
	defer s.done.Done()
	err := s.poller.wait(func(fd int, events uint32) {
		if fd == s.listenFd {
			s.accept()
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
			c.scheduleRead()
		}
	})
	if err != nil {
		s.log.Error().Err(err).Msg("epoll loop stopped")
	}
}

// maxAcceptsPerEvent keeps a connection storm from starving other events;
// the listener is level-triggered, so the rest are picked up next round.
const maxAcceptsPerEvent = 128

func (s *Server) accept() {
	s.lnMu.RLock()
	defer s.lnMu.RUnlock()
	if !s.accepting {
		return
	}
	for range maxAcceptsPerEvent {
		fd, sa, err := unix.Accept4(s.listenFd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			switch {
			case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR),
				errors.Is(err, unix.ECONNABORTED):
			case errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE),
				errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.ENOMEM):
				s.pauseAccepting(err)
			default:
				s.log.Error().Err(err).Msg("accept failed")
			}
			return
		}
		s.acceptBackoff = 0
		s.metrics.accepted.Inc()
		if s.opts.MaxConns > 0 && s.Count() >= s.opts.MaxConns {
			s.metrics.refused.Inc()
			unix.Close(fd)
			continue
		}
		s.attach(fd, sa)
	}
}

// pauseAccepting stops polling the listener for a while after running out
// of descriptors or memory, instead of spinning on a level-triggered event.
func (s *Server) pauseAccepting(err error) {
	s.acceptBackoff = min(max(2*s.acceptBackoff, 10*time.Millisecond), time.Second)
	s.metrics.acceptErrors.Inc()
	s.log.Warn().Err(err).Dur("backoff", s.acceptBackoff).Msg("accept paused")
	_ = s.poller.ctl(unix.EPOLL_CTL_MOD, s.listenFd, 0)
	time.AfterFunc(s.acceptBackoff, func() {
		s.lnMu.RLock()
		defer s.lnMu.RUnlock()
		if s.accepting {
			_ = s.poller.ctl(unix.EPOLL_CTL_MOD, s.listenFd, listenEvents)
		}
	})
}

func (s *Server) attach(fd int, sa unix.Sockaddr) {
	setSocketOptions(fd, s.opts.KeepAlive)
	c := &Conn{id: s.nextID.Add(1), fd: fd, srv: s, remote: addrPort(sa), created: nowNano()}
	s.mu.Lock()
	s.conns[fd] = c
	s.mu.Unlock()
	s.count.Add(1)
	s.metrics.opened()
	if err := s.poller.add(fd); err != nil {
		s.log.Error().Err(err).Msg("register connection")
		s.mu.Lock()
		delete(s.conns, fd)
		s.mu.Unlock()
		s.count.Add(-1)
		s.metrics.closed(TransportUnknown)
		unix.Close(fd)
	}
}

func setSocketOptions(fd int, keepAlive time.Duration) {
	secs := int(keepAlive / time.Second)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, max(secs/3, 1))
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 3)
}

func addrPort(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port))
	}
	return netip.AddrPort{}
}

// teardown closes the socket. Only the read side's owner calls it, once.
func (c *Conn) teardown() {
	c.mu.Lock()
	c.dead = true
	c.out, c.outOff, c.outBytes = nil, 0, 0
	c.mu.Unlock()
	s := c.srv
	s.poller.remove(c.fd)
	s.mu.Lock()
	if s.conns[c.fd] == c {
		delete(s.conns, c.fd)
	}
	s.mu.Unlock()
	unix.Close(c.fd)
	c.in, c.ws = nil, wsReader{}
	s.count.Add(-1)
	s.metrics.closed(c.Transport())
	s.handler.OnClose(c, c.CloseReason())
}

// Each calls fn for every open connection until fn returns false.
func (s *Server) Each(fn func(*Conn) bool) {
	s.mu.RLock()
	list := make([]*Conn, 0, len(s.conns))
	for _, c := range s.conns {
		list = append(list, c)
	}
	s.mu.RUnlock()
	for _, c := range list {
		if !fn(c) {
			return
		}
	}
}

// sweep enforces the deadlines of connections once a second, so that no
// connection needs a timer of its own.
func (s *Server) sweep() {
	defer s.done.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-s.stopSweep:
			return
		case <-tick.C:
		}
		now := nowNano()
		s.Each(func(c *Conn) bool {
			s.checkDeadlines(c, now)
			return true
		})
	}
}

func (s *Server) checkDeadlines(c *Conn, now int64) {
	expired := func(since int64, d time.Duration) bool {
		return since != 0 && now-since > int64(d)
	}
	switch {
	case expired(c.shutWrAt.Load(), s.opts.LingerTimeout):
		c.Abort(ReasonTimeout)
	case expired(c.closingAt.Load(), s.opts.WriteTimeout):
		c.Abort(ReasonTimeout)
	case !c.Closing() && expired(c.inSince.Load(), s.opts.ReadTimeout):
		if c.Transport() == TransportTCP || c.Transport() == TransportWebSocket {
			s.handler.OnFramingError(c, ErrIncompleteTimeout)
		}
		c.Close(ReasonTimeout)
	}
}

// StopAccepting closes the client port; open connections stay.
func (s *Server) StopAccepting() {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	if s.accepting {
		s.accepting = false
		s.poller.remove(s.listenFd)
		s.ln.Close()
	}
}

// Accepting reports whether the client port is open.
func (s *Server) Accepting() bool {
	s.lnMu.RLock()
	defer s.lnMu.RUnlock()
	return s.accepting
}

// Shutdown stops accepting, closes every connection gracefully with reason
// (a WebSocket gets a close frame) and waits until they are gone or ctx ends;
// then it stops the workers and the epoll loop and closes what is left.
func (s *Server) Shutdown(ctx context.Context, reason CloseReason) error {
	s.StopAccepting()
	s.Each(func(c *Conn) bool { c.Close(reason); return true })
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var err error
wait:
	for s.Count() > 0 {
		select {
		case <-ctx.Done():
			err = fmt.Errorf("%d connections still open: %w", s.Count(), ctx.Err())
			break wait
		case <-tick.C:
		}
	}
	s.stopOnce.Do(func() {
		close(s.stopSweep)
		s.poller.wake()
		s.done.Wait()
		s.pool.stop()
		// No goroutine touches a socket any more: close the stragglers.
		s.Each(func(c *Conn) bool {
			c.mu.Lock()
			c.dead = true
			c.mu.Unlock()
			unix.Close(c.fd)
			s.count.Add(-1)
			s.metrics.closed(c.Transport())
			s.handler.OnClose(c, ReasonShutdown)
			return true
		})
		s.poller.close()
	})
	return err
}
