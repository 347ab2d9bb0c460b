// Package conn accepts client connections on one port, tells raw-TCP JSON
// streams from WebSocket upgrades, frames messages both ways, and queues
// output per connection. On Linux it is built on epoll so that an idle
// connection costs no goroutine and no buffer; elsewhere it runs a reader
// and a writer goroutine per connection.
package conn

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// Handler receives the messages of connections.
//
// For one Conn, OnMessage and OnFramingError calls from the read side never
// overlap and come in stream order; different Conns are handled concurrently
// on the pool's workers. A handler may block (a store write, say) at the cost
// of one worker. OnFramingError may also be called by the timeout sweeper,
// and by the goroutine that cuts the connection for the input budget.
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

// InputEndHandler is a Handler told when a peer has sent all it will: its
// FIN reached an open connection (a half-close: `nc -N`, a script that
// shuts its side after its requests, and still reads), without TLS.
// OnInputEnd runs on the read side (a pool worker, or the connection's
// reader goroutine), before the connection closes gracefully: what it
// queues, or waits for, is sent before the close.
type InputEndHandler interface {
	OnInputEnd(c *Conn)
}

// Server owns the listener, the epoll loop, the worker pool and every Conn.
type Server struct {
	opts     Options
	handler  Handler
	log      zerolog.Logger
	metrics  *metrics
	upgrader ws.Upgrader

	tlsConfig  *tls.Config    // nil: no TLS
	certs      *certificates  // with tlsConfig
	handshakes sync.WaitGroup // TLS handshake goroutines (epoll engine)

	ln     *net.TCPListener
	engine engine

	mu     sync.RWMutex
	conns  map[int]*Conn // by fd
	nextID atomic.Uint64

	ipMu  sync.Mutex         // leaf
	perIP map[netip.Addr]int // open connections by address, with MaxConnsPerIP

	accepting atomic.Bool
	count     atomic.Int64

	inBudget, outBudget budget // node-wide memory bounds (budget.go)

	stopSweep chan struct{}
	done      sync.WaitGroup
	stopOnce  sync.Once
}

// Listen binds the client port and starts serving.
func Listen(opts Options, h Handler) (*Server, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts.setDefaults()
	s := &Server{
		opts:      opts,
		handler:   h,
		log:       opts.Logger,
		metrics:   newMetrics(opts.Registerer),
		upgrader:  newUpgrader(),
		conns:     make(map[int]*Conn),
		perIP:     make(map[netip.Addr]int),
		stopSweep: make(chan struct{}),
	}
	s.accepting.Store(true)
	s.initBudgets()
	if opts.TLSCertFile != "" {
		certs, err := loadCertificates(opts.TLSCertFile, opts.TLSKeyFile, s.log, s.metrics)
		if err != nil {
			return nil, err
		}
		s.certs, s.tlsConfig = certs, certs.config()
	}
	switch opts.Engine {
	case EngineEpoll:
		var err error
		if s.engine, err = newEpollEngine(s); err != nil {
			return nil, err
		}
	case EngineGoroutine:
		s.engine = &goroutineEngine{s: s}
	default:
		return nil, fmt.Errorf("unknown engine %q (want %s or %s)", opts.Engine, EngineEpoll, EngineGoroutine)
	}
	ln, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", opts.Listen, err)
	}
	s.ln = ln.(*net.TCPListener)
	if err := s.engine.start(); err != nil {
		s.ln.Close()
		return nil, err
	}
	s.done.Add(1)
	go s.sweep()
	return s, nil
}

// Addr is the address the client port is bound to.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Count is the number of open connections.
func (s *Server) Count() int { return int(s.count.Load()) }

// admit reports whether one more connection fits under MaxConns and, from
// its address, under MaxConnsPerIP. With ProxyProtocol the address is the
// balancer's until the header names the client: it is counted then.
func (s *Server) admit(c *Conn) bool {
	s.metrics.accepted.Inc()
	if s.opts.MaxConns > 0 && s.Count() >= s.opts.MaxConns {
		s.metrics.refused.WithLabelValues("max_conns").Inc()
		return false
	}
	return s.opts.ProxyProtocol || s.admitAddr(c)
}

// admitAddr counts c under its address's MaxConnsPerIP, or reports that it
// is over. release gives the count back.
func (s *Server) admitAddr(c *Conn) bool {
	if s.opts.MaxConnsPerIP <= 0 {
		return true
	}
	from := c.remote.Addr()
	s.ipMu.Lock()
	defer s.ipMu.Unlock()
	if s.perIP[from] >= s.opts.MaxConnsPerIP {
		s.metrics.refused.WithLabelValues("max_conns_per_ip").Inc()
		return false
	}
	s.perIP[from]++
	c.ipCounted = true
	return true
}

// release gives back the address count taken by admitAddr.
func (s *Server) release(c *Conn) {
	if !c.ipCounted {
		return
	}
	c.ipCounted = false
	from := c.remote.Addr()
	s.ipMu.Lock()
	if s.perIP[from]--; s.perIP[from] <= 0 {
		delete(s.perIP, from)
	}
	s.ipMu.Unlock()
}

// attach tracks a new connection and hands it to the engine.
func (s *Server) attach(c *Conn) bool {
	setSocketOptions(c.fd, s.opts.KeepAlive)
	c.id, c.srv, c.created = s.nextID.Add(1), s, nowNano()
	s.mu.Lock()
	s.conns[c.fd] = c
	s.mu.Unlock()
	s.count.Add(1)
	s.metrics.opened()
	if err := s.engine.register(c); err != nil {
		// No event can come for c: this goroutine owns its read side.
		s.log.Error().Err(err).Msg("register connection")
		c.markClosing(ReasonIOError)
		c.teardown()
		return false
	}
	return true
}

func netip4or6(a net.Addr) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), err
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
		if s.certs != nil {
			s.certs.refresh()
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
	case c.closeExpired(now):
		c.Abort(ReasonTimeout)
	case !c.Closing() && c.Transport() == TransportUnknown && expired(c.created, s.opts.HandshakeTimeout):
		// Not a byte, or not a whole request line, in time: nothing to
		// answer, and a silent connection must not hold a descriptor.
		c.Abort(ReasonTimeout)
	case !c.Closing() && !c.identified.Load() && s.opts.LoginTimeout > 0 &&
		(c.Transport() == TransportTCP || c.Transport() == TransportWebSocket) && expired(c.created, s.opts.LoginTimeout):
		s.handler.OnFramingError(c, ErrLoginTimeout)
		c.Close(ReasonTimeout)
	case !c.Closing() && expired(c.stalledSince.Load(), s.opts.WriteTimeout):
		// The peer took nothing for WriteTimeout while output waited.
		s.metrics.queueOverflows.Inc()
		c.Abort(ReasonSlowConsumer)
	case !c.Closing() && expired(c.inSince.Load(), s.opts.ReadTimeout):
		if c.Transport() == TransportTCP || c.Transport() == TransportWebSocket {
			s.handler.OnFramingError(c, ErrIncompleteTimeout)
		}
		c.Close(ReasonTimeout)
	case s.opts.PingInterval > 0 && c.Transport() == TransportWebSocket && !c.Closing() &&
		expired(max(c.active.Load(), c.created), s.opts.PingInterval):
		c.active.Store(now)
		c.sendRaw(wsPing)
	}
}

// StopAccepting closes the client port; open connections stay.
func (s *Server) StopAccepting() {
	if s.accepting.CompareAndSwap(true, false) {
		s.engine.stopAccepting()
		s.ln.Close()
	}
}

// Accepting reports whether the client port is open.
func (s *Server) Accepting() bool { return s.accepting.Load() }

// Shutdown stops accepting, closes every connection gracefully with reason
// (a WebSocket gets a close frame) and waits until they are gone or ctx ends;
// then it aborts what is left, stops the workers and the epoll loop, and
// tears down the connections no worker got to. OnClose is called once for
// every connection.
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
		s.done.Wait()
		// Both directions shut: a reader blocked on a silent peer sees EOF
		// and ends, so stopping the engine cannot wait on a client.
		s.Each(func(c *Conn) bool { c.Abort(reason); return true })
		s.engine.stop()
		// No worker or reader runs any more: this goroutine owns every read
		// side left, so it may tear those connections down.
		s.Each(func(c *Conn) bool { c.teardown(); return true })
	})
	return err
}
