// Package node speaks the Kronos protocol: it keeps a session per
// connection, checks and dispatches requests to the store, and fans the
// feed's changes out to the devices connected to this node.
package node

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/kronos-sync/kronos-server/cluster"
	"github.com/kronos-sync/kronos-server/conn"
	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/internal/check"
)

// Options configure a Node. Zero fields take their defaults; Validate
// refuses values that are neither zero nor valid.
type Options struct {
	Conn   conn.Options // listener, framing and queue limits
	Limits feed.Limits  // per-user limits, shared with the store
	// RateLimit is each connection's sustained request rate, per second.
	// Default 100.
	RateLimit float64
	// RateBurst is how many requests a connection may send at once.
	// Default 200: a real client sends bursts of tens.
	RateBurst int
	// StoreTimeout bounds one store call. Default 10s.
	StoreTimeout time.Duration
	// DrainPeriod spreads the closing of clients on a clustered stop, so
	// they reconnect across the other nodes without a storm. Default 30s.
	DrainPeriod time.Duration
	// RebalanceThreshold: a node above the cluster's mean connection
	// count by more than this fraction sheds connections. Default 0.2;
	// negative turns rebalancing off.
	RebalanceThreshold float64
	// RebalanceRate bounds the connections shed per second. Default 50.
	RebalanceRate int
	// NewUsersPerMinute bounds the users one client address may create per
	// minute (a login without user_id), in bursts of as many. Default 0: no
	// limit (behind a load balancer every client has its address, unless
	// the balancer passes the client's own).
	NewUsersPerMinute int
	// AdminPprof serves /debug/pprof on the admin handler. Default off.
	AdminPprof bool
	// DeviceTouchInterval is how often the store is told which devices
	// are connected here (feed.Store.TouchDevices), spread over the
	// interval. The store's feed.Options.DeviceIdleAfter must be a few
	// times longer: a device seen within it is never retired. Default 10m.
	DeviceTouchInterval time.Duration
	// FanoutShards is how many goroutines write notifications to the
	// node's connections, each user's always through the same one.
	// Default: GOMAXPROCS.
	FanoutShards int

	Logger     zerolog.Logger
	Registerer prometheus.Registerer // nil: metrics are not registered
}

// maxFanoutShards bounds Options.FanoutShards: each shard is a goroutine
// and a queue of fanoutQueue batches.
const maxFanoutShards = 256

func (o *Options) setDefaults() {
	o.Limits.SetDefaults()
	if o.RateLimit == 0 {
		o.RateLimit = 100
	}
	if o.RateBurst == 0 {
		o.RateBurst = 200
	}
	if o.StoreTimeout == 0 {
		o.StoreTimeout = 10 * time.Second
	}
	if o.DrainPeriod == 0 {
		o.DrainPeriod = 30 * time.Second
	}
	if o.RebalanceThreshold == 0 {
		o.RebalanceThreshold = 0.2
	}
	if o.RebalanceRate == 0 {
		o.RebalanceRate = 50
	}
	if o.DeviceTouchInterval == 0 {
		o.DeviceTouchInterval = 10 * time.Minute
	}
	if o.FanoutShards == 0 {
		o.FanoutShards = defaultFanoutShards()
	}
}

// Validate reports every field that is neither zero (its default) nor
// valid, in declaration order.
func (o *Options) Validate() error {
	var c check.List
	c.Merge("Conn.", o.Conn.Validate())
	c.Merge("Limits.", o.Limits.Validate())
	c.Add(o.RateLimit < 0 || math.IsNaN(o.RateLimit) || math.IsInf(o.RateLimit, 0), "RateLimit", o.RateLimit, "must be 0 (default 100) or a positive number")
	c.Add(o.RateBurst < 0, "RateBurst", o.RateBurst, "must be 0 (default 200) or more")
	c.Add(o.StoreTimeout < 0, "StoreTimeout", o.StoreTimeout, "must be 0 (default 10s) or more")
	c.Add(o.DrainPeriod < 0, "DrainPeriod", o.DrainPeriod, "must be 0 (default 30s) or more")
	c.Add(math.IsNaN(o.RebalanceThreshold) || math.IsInf(o.RebalanceThreshold, 0), "RebalanceThreshold", o.RebalanceThreshold,
		"must be 0 (default 0.2), a positive fraction, or negative (off)")
	c.Add(o.RebalanceRate < 0, "RebalanceRate", o.RebalanceRate, "must be 0 (default 50) or more")
	c.Add(o.NewUsersPerMinute < 0, "NewUsersPerMinute", o.NewUsersPerMinute, "must be 0 (no limit) or more")
	c.Add(o.DeviceTouchInterval < 0, "DeviceTouchInterval", o.DeviceTouchInterval, "must be 0 (default 10m) or more")
	c.Add(o.FanoutShards < 0 || o.FanoutShards > maxFanoutShards, "FanoutShards", o.FanoutShards,
		fmt.Sprintf("must be 0 (default: one per P) or 1 to %d", maxFanoutShards))
	return c.Err()
}

// Node is one Kronos server node.
type Node struct {
	opts    Options
	log     zerolog.Logger
	dropLog zerolog.Logger // log, at most dropLogBurst events a second
	store   feed.Store
	async   feed.AsyncWriter // the store, when it can queue writes (nil: it cannot)
	writes  sync.WaitGroup   // writes queued on async and not committed yet
	feed    feed.Feed
	hub     *hub
	fanout  *fanout
	signups *addrLimiter // new users per client address
	answers *answers     // large read-all answers, shared while queued
	reads   *readFlights // read-alls of one user's devices, sharing store reads
	metrics *metrics
	srv     *conn.Server
	ready   atomic.Bool

	cluster  atomic.Pointer[cluster.Cluster] // set once the node joins
	draining atomic.Bool
	stop     chan struct{}
	stopOnce sync.Once
	loops    sync.WaitGroup
}

// New makes a node on a backend. The backend must not be shared with
// another Node in this process; the caller closes it after Shutdown.
func New(b feed.Backend, opts Options) (*Node, error) {
	if b.Store == nil || b.Feed == nil {
		return nil, errors.New("node: a store and a feed are required")
	}
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts.setDefaults()
	opts.Conn.Logger = opts.Logger
	opts.Conn.Registerer = opts.Registerer
	n := &Node{
		opts: opts,
		log:  opts.Logger,
		// Past the burst, further drops in the same second are counted
		// (kronos_connections_closed_total) but not logged.
		dropLog: opts.Logger.Sample(&zerolog.BurstSampler{Burst: dropLogBurst, Period: time.Second}),
		store:   b.Store,
		feed:    b.Feed,
		hub:     newHub(),
		stop:    make(chan struct{}),
	}
	n.async, _ = b.Store.(feed.AsyncWriter)
	n.fanout = newFanout(opts.FanoutShards, n.deliver)
	n.metrics = newMetrics(opts.Registerer, n.hub, n.fanout)
	n.answers = newAnswers()
	n.reads = newReadFlights()
	n.signups = newAddrLimiter(float64(opts.NewUsersPerMinute)/60, float64(opts.NewUsersPerMinute))
	b.Feed.Subscribe(n.fanout.publish)
	return n, nil
}

// Start opens the client port.
func (n *Node) Start() error {
	srv, err := conn.Listen(n.opts.Conn, n)
	if err != nil {
		return err
	}
	n.srv = srv
	n.loops.Add(1)
	go n.touchLoop()
	n.ready.Store(true)
	n.log.Info().Str("addr", srv.Addr().String()).Int("fanout_shards", len(n.fanout.shards)).Msg("accepting clients")
	return nil
}

// Addr is the client port's address.
func (n *Node) Addr() net.Addr { return n.srv.Addr() }

// Connections is the number of open client connections.
func (n *Node) Connections() int { return n.srv.Count() }

// Ready reports whether the node accepts clients and its store answers.
func (n *Node) Ready(ctx context.Context) error {
	if !n.ready.Load() || n.srv == nil || !n.srv.Accepting() {
		return errors.New("not accepting clients")
	}
	if err := n.store.Ready(ctx); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// Shutdown stops the node at once: it stops accepting, lets requests in
// progress finish (their writes commit and are notified), closes every
// client cleanly, leaves the cluster, and returns when all is done or ctx
// ends. Drain is the gentler stop for a cluster.
func (n *Node) Shutdown(ctx context.Context) error {
	n.ready.Store(false)
	n.stopLoops()
	var err error
	if n.srv != nil {
		n.log.Info().Int("connections", n.srv.Count()).Msg("shutting down")
		err = n.srv.Shutdown(ctx, conn.ReasonShutdown)
	}
	if werr := n.waitWrites(ctx); err == nil {
		err = werr
	}
	n.fanout.close()
	n.leaveCluster(ctx)
	return err
}

// waitWrites waits for the writes queued on the store to commit, so that
// their changes are delivered before the fan-out stops.
func (n *Node) waitWrites(ctx context.Context) error {
	done := make(chan struct{})
	go func() { n.writes.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("writes still committing: %w", ctx.Err())
	}
}

// OnMessage handles one request. It runs on a pool worker; requests of one
// connection run one at a time, in order.
func (n *Node) OnMessage(c *conn.Conn, p []byte) {
	s, _ := c.Context().(*session)
	if s == nil {
		s = &session{node: n, conn: c}
		c.SetContext(s)
	}
	start := time.Now()
	if typ, outcome := n.handle(s, p, start); outcome != outcomeLater {
		n.observeRequest(typ, outcome, start)
	}
}

// outcomeLater is handle's outcome for a write queued on an AsyncWriter:
// the committer records it.
const outcomeLater = ""

func (n *Node) observeRequest(typ, outcome string, start time.Time) {
	label := typ
	if !knownType(typ) {
		label = "unknown"
	}
	n.metrics.requests.WithLabelValues(label, outcome).Inc()
	n.metrics.latency.WithLabelValues(label).Observe(time.Since(start).Seconds())
}

// isWrite: a request that changes the user's tasks.
func isWrite(t string) bool {
	switch t {
	case typeWriteAll, typeCreate, typeUpdate, typeDelete:
		return true
	}
	return false
}

func knownType(t string) bool {
	switch t {
	case typeLogin, typeReadAll, typeWriteAll, typeCreate, typeUpdate, typeDelete:
		return true
	}
	return false
}

// handle runs one request and returns its type and outcome label. Every
// answer it sends waits for the answers of the session's writes in flight
// (refuse, awaitWrites); a write joins them.
func (n *Node) handle(s *session, p []byte, now time.Time) (string, string) {
	req, typ, err := decodeRequest(p)
	if err == errInvalidJSON && s.conn.Transport() == conn.TransportTCP {
		// A raw stream that is not JSON cannot be re-synchronised.
		s.refuse(typ, err.Error())
		s.conn.Close(conn.ReasonProtocolError)
		return typ, "invalid"
	}
	// Bad requests count too: each costs an answer, and a WebSocket (or
	// a raw stream of valid JSON) stays open after one.
	if !s.allow(now) {
		s.refuse(typ, fmt.Sprintf("rate limit exceeded: at most %g requests per second", n.opts.RateLimit))
		return typ, "rate_limited"
	}
	if err != nil {
		s.refuse(typ, err.Error())
		return typ, "invalid"
	}
	if !knownType(typ) {
		s.refuse(typ, fmt.Sprintf("unknown request type %q", typ))
		return typ, "invalid"
	}
	if isWrite(typ) {
		s.awaitWrites(maxPipelinedWrites - 1)
	} else {
		s.awaitWrites(0)
	}
	if s.conn.Closing() {
		// Closed while it waited (a takeover, a drain): the request is
		// dropped as if it had not been read, so that it cannot land
		// behind the requests of the connection that took over.
		return typ, "closed"
	}
	ctx, cancel := s.storeContext()
	defer cancel()
	if typ == typeLogin {
		s.login(ctx, req)
		return typ, "done"
	}
	if !s.loggedIn {
		s.refuse(typ, "not logged in")
		return typ, "refused"
	}
	if err := s.checkIdentity(req); err != nil {
		s.refuse(typ, err.Error())
		return typ, "refused"
	}
	if typ == typeReadAll {
		s.readAll()
		return typ, "done"
	}
	w, err := s.prepareWrite(typ, req)
	if err != nil {
		s.refuse(typ, err.Error())
		return typ, "refused"
	}
	if n.async != nil {
		s.writeAsync(ctx, typ, w, now)
		if writeBytes(w) > maxPipelinedWriteBytes {
			// A large write holds its worker until it is answered, so that
			// the workers bound how many wait in memory at once.
			s.awaitWrites(0)
		}
		return typ, outcomeLater
	}
	if !s.write(ctx, typ, w) {
		return typ, "refused"
	}
	return typ, "ok"
}

// OnFramingError answers input that broke the framing. From the read
// side, the answer waits for those of the writes before it, as any other
// answer does; the timeout sweeper and the input budget's cut do not wait
// for one connection's commits (they serve every connection, and the
// connection closes after their answer).
func (n *Node) OnFramingError(c *conn.Conn, err error) {
	// Off the read side, the Conn's context is not ours to read.
	if !offReadSide(err) {
		if s, ok := c.Context().(*session); ok {
			s.awaitWrites(0)
		}
	}
	c.Send(encodeError("", err.Error()))
}

var _ conn.InputEndHandler = (*Node)(nil)

// OnInputEnd runs when a client has sent all it will (a raw TCP
// half-close): the answers of its writes still in flight, its own
// notifications included, are queued before the connection closes, so
// that a script that shuts its side after its requests reads them all.
func (n *Node) OnInputEnd(c *conn.Conn) {
	if s, ok := c.Context().(*session); ok {
		s.awaitWrites(0)
	}
}

// offReadSide reports a framing error that conn reports from another
// goroutine than the connection's read side.
func offReadSide(err error) bool {
	return errors.Is(err, conn.ErrLoginTimeout) || errors.Is(err, conn.ErrIncompleteTimeout) ||
		errors.Is(err, conn.ErrInputBudget)
}

// dropLogBurst bounds the "device dropped" lines a second.
const dropLogBurst = 10

// OnClose forgets the connection's session.
func (n *Node) OnClose(c *conn.Conn, reason conn.CloseReason) {
	s, _ := c.Context().(*session)
	if s == nil {
		return
	}
	s.unregister()
	if s.loggedIn {
		s.active.Store(false)
		n.hub.clearDevice(s)
	}
	if s.loggedIn && (reason == conn.ReasonSlowConsumer || reason == conn.ReasonMemoryBudget) {
		// A device cut off by the node, not by its user: an operator wants
		// to know, but an attack must not flood the log (dropLog is sampled).
		s.loggerOn(&n.dropLog, zerolog.InfoLevel).Str("reason", reason.String()).Msg("device dropped")
		return
	}
	s.logger(zerolog.DebugLevel).Str("reason", reason.String()).Msg("connection closed")
}

// takeOver closes older connections of the device that just logged in on
// s, on this node and, through the cluster, on the others.
func (n *Node) takeOver(s *session) {
	for _, other := range n.hub.sessions(s.userID, nil) {
		if other != s && other.active.Load() && other.deviceID == s.deviceID {
			other.conn.Close(conn.ReasonTakeover)
		}
	}
	n.hub.setDevice(s)
	if c := n.cluster.Load(); c != nil {
		c.BroadcastTakeover(s.deviceID, s.loginAt)
	}
}

// TakeOver closes this node's connection of a device that logged in on
// another node after it. It implements cluster.Handler.
func (n *Node) TakeOver(device string, loggedInAt int64) {
	if s := n.hub.device(device); s != nil && s.loginAt < loggedInAt {
		s.conn.Close(conn.ReasonTakeover)
	}
}

// deliver runs on a fan-out goroutine: each change is encoded once and
// queued to every device of its user connected here.
func (n *Node) deliver(changes []feed.Change, b *conn.Batch) {
	var targets []*session
	for i := range changes {
		ch := &changes[i]
		targets = n.hub.sessions(ch.UserID, targets[:0])
		if len(targets) == 0 {
			continue
		}
		if ch.Kind == feed.ChangeResync {
			// Missed changes cannot be replayed: the devices log in again
			// and re-sync by version.
			for _, s := range targets {
				s.conn.Close(conn.ReasonResync)
			}
			continue
		}
		payload := encodeNotification(ch)
		sent := 0
		for _, s := range targets {
			if s.deliver(ch.Seq, payload, b) {
				sent++
			}
		}
		n.metrics.notifications.Add(float64(sent))
	}
}
