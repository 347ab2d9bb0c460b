package conn

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/kronos-sync/kronos-server/internal/check"
)

// Options configure a Server. The zero value of a field means its default;
// Validate refuses values that are neither zero nor valid.
type Options struct {
	// Listen is the client address, host:port. Default ":5000".
	Listen string
	// Engine drives the sockets: "epoll" (no goroutine and no buffer per
	// idle connection; Linux only) or "goroutine" (a reader and a writer
	// goroutine per connection, the classic design, kept as a baseline and
	// for other systems). Default "epoll" on Linux, "goroutine" elsewhere;
	// asking for "epoll" elsewhere makes Listen fail.
	Engine string
	// Workers is the number of goroutines reading from sockets and running
	// handlers. Default 256: a write holds its worker until the store has
	// committed it, so the workers bound the writes in flight, and with
	// them the size of the store's group commits (at 10,000 writes/s and
	// commits of some 25 ms, 64 workers were the limit).
	Workers int
	// MaxMessageBytes bounds one incoming message. Default 4 MiB.
	MaxMessageBytes int
	// MaxQueueBytes bounds a connection's unsent output; a client that lets
	// it fill is disconnected. Default 8 MiB.
	MaxQueueBytes int
	// InputBudgetBytes bounds, node-wide, the memory held for messages not
	// yet received whole (the sum of every connection's input buffers).
	// When a buffer's growth would pass it, the connections holding the most
	// are closed first (ReasonMemoryBudget; an identified client is told
	// why). Default 256 MiB; negative: no bound; otherwise at least
	// MaxMessageBytes, or one whole message could not be held.
	InputBudgetBytes int
	// OutputBudgetBytes bounds, node-wide, the queued output (the sum of
	// every connection's queue, a payload shared by connections counted
	// once). When a message would pass it, the connections with the largest
	// queues are dropped first (ReasonMemoryBudget). Default 1 GiB, above
	// the largest read-all answer of the default per-user limits; negative:
	// no bound; otherwise at least MaxQueueBytes.
	OutputBudgetBytes int
	// MaxConns refuses connections past this count. Default: the
	// process's descriptor limit less 256 (kept for the admin port, the
	// store and the cluster), so that a flood of connections cannot take
	// the descriptors those need; negative: no limit.
	MaxConns int
	// MaxConnsPerIP refuses connections from one address past this count.
	// Default 0: no limit (behind a load balancer every client has its
	// address, unless the balancer passes the client's own).
	MaxConnsPerIP int
	// HandshakeTimeout closes a connection that has not sent its first
	// request line or JSON byte within it. Default 10s.
	HandshakeTimeout time.Duration
	// LoginTimeout closes a connection that has not identified itself
	// (Conn.SetIdentified) within it. Default 60s; negative: never.
	LoginTimeout time.Duration
	// ReadTimeout is how long a started message may take to arrive whole.
	// Default 30s.
	ReadTimeout time.Duration
	// WriteTimeout bounds a write that makes no progress: a connection whose
	// queued output the peer has not taken any of for this long is dropped,
	// and so is a closing one that has not sent all of it. Default 10s.
	WriteTimeout time.Duration
	// LingerTimeout is how long a closed write side waits for the peer to
	// close before the socket is closed. Default 2s.
	LingerTimeout time.Duration
	// KeepAlive is the TCP keepalive idle time. Default 30s.
	KeepAlive time.Duration
	// PingInterval: a WebSocket with no traffic for this long gets a ping,
	// so proxies and load balancers that drop idle connections keep it.
	// Default 30s; negative: no pings.
	PingInterval time.Duration

	// TLSCertFile and TLSKeyFile (PEM) turn on TLS on the client port for
	// both transports, sniffed beside plain connections. The files are
	// checked every second and reloaded when they change.
	TLSCertFile string
	TLSKeyFile  string
	// TLSRequired refuses plain connections.
	TLSRequired bool
	// ProxyProtocol expects a PROXY protocol header (v1 or v2) first on
	// every connection, from a load balancer, and takes the client's
	// address from it; a connection without one is refused.
	ProxyProtocol bool

	Logger     zerolog.Logger
	Registerer prometheus.Registerer // nil: metrics are not registered
}

func (o *Options) setDefaults() {
	if o.Listen == "" {
		o.Listen = ":5000"
	}
	if o.Engine == "" {
		o.Engine = EngineGoroutine
		if epollAvailable {
			o.Engine = EngineEpoll
		}
	}
	if o.Workers == 0 {
		o.Workers = 256
	}
	if o.MaxMessageBytes == 0 {
		o.MaxMessageBytes = 4 << 20
	}
	if o.MaxQueueBytes == 0 {
		o.MaxQueueBytes = 8 << 20
	}
	if o.InputBudgetBytes == 0 {
		o.InputBudgetBytes = 256 << 20
	}
	if o.OutputBudgetBytes == 0 {
		o.OutputBudgetBytes = 1 << 30
	}
	if o.ReadTimeout == 0 {
		o.ReadTimeout = 30 * time.Second
	}
	if o.HandshakeTimeout == 0 {
		o.HandshakeTimeout = 10 * time.Second
	}
	if o.LoginTimeout == 0 {
		o.LoginTimeout = 60 * time.Second
	}
	if o.MaxConns == 0 {
		o.MaxConns = defaultMaxConns()
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = 10 * time.Second
	}
	if o.LingerTimeout == 0 {
		o.LingerTimeout = 2 * time.Second
	}
	if o.KeepAlive == 0 {
		o.KeepAlive = 30 * time.Second
	}
	if o.PingInterval == 0 {
		o.PingInterval = 30 * time.Second
	}
}

// Validate reports every field that is neither zero (its default) nor
// valid, in declaration order.
func (o *Options) Validate() error {
	var c check.List
	c.Add(o.Engine != "" && o.Engine != EngineEpoll && o.Engine != EngineGoroutine, "Engine", o.Engine,
		"must be "+EngineEpoll+" or "+EngineGoroutine)
	c.Add(o.Workers < 0, "Workers", o.Workers, "must be 0 (default 256) or more")
	c.Add(o.MaxMessageBytes < 0, "MaxMessageBytes", o.MaxMessageBytes, "must be 0 (default 4 MiB) or more")
	c.Add(o.MaxQueueBytes < 0, "MaxQueueBytes", o.MaxQueueBytes, "must be 0 (default 8 MiB) or more")
	msgLimit, queueLimit := o.MaxMessageBytes, o.MaxQueueBytes
	if msgLimit == 0 {
		msgLimit = 4 << 20
	}
	if queueLimit == 0 {
		queueLimit = 8 << 20
	}
	c.Add(o.InputBudgetBytes > 0 && o.InputBudgetBytes < msgLimit, "InputBudgetBytes", o.InputBudgetBytes,
		fmt.Sprintf("must be 0 (default 256 MiB), negative (no bound), or at least the largest message (%d)", msgLimit))
	c.Add(o.OutputBudgetBytes > 0 && o.OutputBudgetBytes < queueLimit, "OutputBudgetBytes", o.OutputBudgetBytes,
		fmt.Sprintf("must be 0 (default 1 GiB), negative (no bound), or at least the largest queue (%d)", queueLimit))
	c.Add(o.MaxConnsPerIP < 0, "MaxConnsPerIP", o.MaxConnsPerIP, "must be 0 (no limit) or more")
	c.Add(o.HandshakeTimeout < 0, "HandshakeTimeout", o.HandshakeTimeout, "must be 0 (default 10s) or more")
	c.Add(o.ReadTimeout < 0, "ReadTimeout", o.ReadTimeout, "must be 0 (default 30s) or more")
	c.Add(o.WriteTimeout < 0, "WriteTimeout", o.WriteTimeout, "must be 0 (default 10s) or more")
	c.Add(o.LingerTimeout < 0, "LingerTimeout", o.LingerTimeout, "must be 0 (default 2s) or more")
	c.Add(o.KeepAlive < 0, "KeepAlive", o.KeepAlive, "must be 0 (default 30s) or more")
	c.Add((o.TLSCertFile == "") != (o.TLSKeyFile == ""), "TLSCertFile", o.TLSCertFile, "a certificate needs its key file, and a key its certificate")
	c.Add(o.TLSRequired && o.TLSCertFile == "", "TLSRequired", o.TLSRequired, "needs a certificate and its key")
	return c.Err()
}

// fdReserve is the descriptors kept out of MaxConns's default.
const fdReserve = 256

// defaultMaxConns is the descriptor limit less fdReserve, or no limit
// (negative) when the limit cannot be read.
func defaultMaxConns() int {
	n, ok := descriptorLimit()
	if !ok || n <= 2*fdReserve {
		return -1
	}
	return n - fdReserve
}
