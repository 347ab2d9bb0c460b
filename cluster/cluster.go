// Package cluster lets the nodes of a Kronos deployment know each other,
// over memberlist gossip (UDP and TCP on one port): who is up, each node's
// client address, open connections and state, and a way to tell every node
// that a device logged in elsewhere.
package cluster

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/kronos-sync/kronos-server/internal/check"
)

// ErrNoKey: Start refuses to run without a gossip key unless told to.
var ErrNoKey = errors.New("cluster: no gossip key: set Options.Key, or Options.Insecure on a network only Kronos nodes reach")

// Options configure a Cluster. Zero fields take their defaults.
type Options struct {
	// Bind is the gossip address, UDP and TCP. Default ":7946".
	Bind string
	// Advertise is the address other nodes reach this one at. Default:
	// memberlist's choice from Bind (the first private address).
	Advertise string
	// Join lists host:port or DNS names of other nodes; a name stands for
	// all its addresses (a Kubernetes headless Service) and is resolved
	// again every RejoinInterval, so nodes that start later are found.
	Join []string
	// NodeName must be unique. Default: the hostname and a random suffix,
	// so a restarted pod never collides with its old entry.
	NodeName string
	// Key encrypts and authenticates gossip and messages between nodes:
	// 16, 24 or 32 bytes. Required unless Insecure.
	Key []byte
	// Insecure lets the node cluster without a Key. Then anyone who
	// reaches the gossip port can join, read the membership, gossip
	// figures, receive every takeover (device ids) and send messages as a
	// member: only for a network that nothing but Kronos nodes can reach.
	// Default false: Start returns ErrNoKey.
	Insecure bool
	// ClientAddr is this node's client address, gossiped to the others.
	ClientAddr string
	// Version is the software version, gossiped.
	Version string
	// RejoinInterval is how often Join is resolved and joined again.
	// Default 30s.
	RejoinInterval time.Duration
	// Fast shortens memberlist's timers for tests on one host: a dead node
	// is declared within about a second instead of several.
	Fast bool

	Logger     zerolog.Logger
	Registerer prometheus.Registerer
}

// Member is one node as this node sees it.
type Member struct {
	Name   string `json:"name"`
	Gossip string `json:"gossip"`
	Status string `json:"status"` // alive (nodes that left or died are dropped)
	Meta
	// Ignored says why the node's figures must not be acted on: its
	// metadata is invalid, or stale (see staleAfter). Empty when they can;
	// always empty for this node.
	Ignored string `json:"ignored,omitempty"`
}

// Handler is the node's side: what to gossip, and what to do when a device
// logs in elsewhere. Its methods may be called from memberlist goroutines,
// concurrently, and must not block.
type Handler interface {
	// Local returns the node's open connections and state.
	Local() (conns int, state string)
	// TakeOver closes this node's connections of device that logged in
	// before loggedInAt (unix nanoseconds).
	TakeOver(device string, loggedInAt int64)
}

// Cluster is this node's membership.
type Cluster struct {
	opts     Options
	log      zerolog.Logger
	list     *memberlist.Memberlist
	handler  Handler
	metrics  *metrics
	warn     warnLimiter
	insecure bool // no key: a message's sender must be a member
	limits   sendLimits
	// send is memberlist's SendReliable; tests replace it.
	send func(*memberlist.Node, []byte) error

	// mu guards the fields below. Lock order: mu, then a peer's mu. It is
	// never held while calling memberlist or the Handler.
	mu       sync.Mutex
	meta     Meta
	gossiped time.Time // when NodeMeta last handed memberlist the metadata
	// view is this node's copy of the membership, kept from memberlist's
	// events: memberlist.Members returns pointers into its own table,
	// which its goroutines go on changing, so they cannot be read later.
	view    map[string]member
	addr    string           // own gossip address
	peers   map[string]*peer // a sender per other member
	stopped bool             // Leave or Kill began: no sender starts
	flush   bool             // senders send what is queued before they stop (Leave)

	// peerList is peers' values, replaced on every change, so that
	// BroadcastTakeover (on every login) takes no lock of the Cluster.
	peerList atomic.Pointer[[]*peer]

	stop chan struct{}
	done sync.WaitGroup // rejoinLoop and every peer's run
}

// Validate reports every field that is neither zero (its default) nor
// valid, in declaration order.
func (o *Options) Validate() error {
	var c check.List
	if o.Bind != "" {
		_, _, err := splitHostPort(o.Bind, 7946)
		c.Add(err != nil, "Bind", o.Bind, "must be host:port")
	}
	if o.Advertise != "" {
		_, _, err := splitHostPort(o.Advertise, 7946)
		c.Add(err != nil, "Advertise", o.Advertise, "must be host:port")
	}
	c.Add(len(o.Key) != 0 && len(o.Key) != 16 && len(o.Key) != 24 && len(o.Key) != 32, "Key",
		fmt.Sprintf("(%d bytes)", len(o.Key)), "must be 16, 24 or 32 bytes")
	c.Add(o.RejoinInterval < 0, "RejoinInterval", o.RejoinInterval, "must be 0 (default 30s) or more")
	return c.Err()
}

// Start creates the local member, joins the others and keeps rejoining.
func Start(opts Options, h Handler) (*Cluster, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if len(opts.Key) == 0 && !opts.Insecure {
		return nil, ErrNoKey
	}
	if opts.Bind == "" {
		opts.Bind = ":7946"
	}
	if opts.RejoinInterval == 0 {
		opts.RejoinInterval = 30 * time.Second
	}
	if opts.NodeName == "" {
		opts.NodeName = DefaultNodeName()
	}
	c := &Cluster{opts: opts, log: opts.Logger.With().Str("component", "cluster").Logger(), handler: h,
		metrics: newMetrics(opts.Registerer), insecure: len(opts.Key) == 0, limits: defaultLimits,
		view: map[string]member{}, peers: map[string]*peer{}, stop: make(chan struct{})}
	c.send = func(n *memberlist.Node, msg []byte) error { return c.list.SendReliable(n, msg) }
	c.meta = Meta{Client: opts.ClientAddr, State: StateReady, Version: opts.Version}
	if err := c.checkMetaSize(); err != nil {
		return nil, err
	}

	conf := memberlist.DefaultLANConfig()
	if opts.Fast {
		conf = memberlist.DefaultLocalConfig()
		conf.ProbeInterval = 200 * time.Millisecond
		conf.ProbeTimeout = 100 * time.Millisecond
		conf.SuspicionMult = 2
		conf.GossipInterval = 50 * time.Millisecond
		conf.PushPullInterval = time.Second
		// Not the local config's 1s: on a loaded test host a batch of
		// thousands of messages can take longer to get through.
		conf.TCPTimeout = 10 * time.Second
	}
	conf.Name = opts.NodeName
	host, port, _ := splitHostPort(opts.Bind, 7946) // checked by Validate
	conf.BindAddr, conf.BindPort = host, port
	if opts.Advertise != "" {
		conf.AdvertiseAddr, conf.AdvertisePort, _ = splitHostPort(opts.Advertise, port)
	}
	if len(opts.Key) > 0 {
		conf.SecretKey = opts.Key
	}
	conf.Delegate = &delegate{c}
	conf.Events = &events{c}
	conf.Logger = nil
	conf.LogOutput = &logWriter{log: c.log}
	var err error
	if c.list, err = memberlist.Create(conf); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	c.mu.Lock()
	c.addr = c.view[opts.NodeName].Gossip
	c.mu.Unlock()
	c.log.Info().Str("node", opts.NodeName).Str("gossip", c.addr).Bool("encrypted", !c.insecure).Msg("cluster member started")
	if c.insecure {
		c.log.Warn().Msg("clustering without a key: anyone who reaches the gossip port can join, gossip figures and send messages as a member")
	}
	c.join()
	c.done.Add(1)
	go c.rejoinLoop()
	return c, nil
}

// DefaultNodeName is the hostname with a random suffix.
func DefaultNodeName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "kronos"
	}
	var b [4]byte
	rand.Read(b[:])
	return host + "-" + hex.EncodeToString(b[:])
}

func splitHostPort(addr string, defPort int) (string, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		if strings.Contains(err.Error(), "missing port") {
			return addr, defPort, nil
		}
		return "", 0, err
	}
	if host == "" {
		host = "0.0.0.0"
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", portStr)
	}
	return host, port, nil
}

// Name is this node's name.
func (c *Cluster) Name() string { return c.opts.NodeName }

// Addr is the gossip address other nodes join.
func (c *Cluster) Addr() string { return c.addr }

// resolveJoin turns Join into addresses: a DNS name gives all of its.
func (c *Cluster) resolveJoin() []string {
	var out []string
	for _, j := range c.opts.Join {
		host, port, err := splitHostPort(j, 7946)
		if err != nil {
			c.log.Warn().Str("join", j).Err(err).Msg("bad --join entry")
			continue
		}
		if net.ParseIP(host) != nil {
			out = append(out, net.JoinHostPort(host, strconv.Itoa(port)))
			continue
		}
		ips, err := net.LookupHost(host)
		if err != nil {
			c.log.Debug().Str("join", j).Err(err).Msg("resolving a --join name failed")
			continue
		}
		for _, ip := range ips {
			out = append(out, net.JoinHostPort(ip, strconv.Itoa(port)))
		}
	}
	return out
}

func (c *Cluster) join() {
	addrs := c.resolveJoin()
	if len(addrs) == 0 {
		return
	}
	n, err := c.list.Join(addrs)
	if err != nil && n == 0 {
		c.log.Warn().Err(err).Int("addresses", len(addrs)).Msg("joining the cluster failed; will retry")
		return
	}
	c.log.Debug().Int("reached", n).Msg("joined")
}

func (c *Cluster) rejoinLoop() {
	defer c.done.Done()
	t := time.NewTicker(c.opts.RejoinInterval)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.join()
		}
	}
}

// Update gossips the node's current connections and state, and refreshes
// the membership metrics. Call it about once a second, not from a Handler
// method: it gossips when a figure changed, and at least every metaRefresh
// so that the others see the node's figures stay current.
func (c *Cluster) Update(conns int, state string) {
	c.metrics.update(c.Members())
	c.mu.Lock()
	due := c.meta.Conns != conns || c.meta.State != state || time.Since(c.gossiped) >= metaRefresh
	c.meta.Conns, c.meta.State = conns, state
	c.mu.Unlock()
	if due {
		if err := c.list.UpdateNode(time.Second); err != nil {
			c.log.Debug().Err(err).Msg("metadata update")
		}
	}
}

func (c *Cluster) encodeMeta() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, _ := json.Marshal(c.meta)
	return b
}

func (c *Cluster) checkMetaSize() error {
	if n := len(c.encodeMeta()); n > memberlist.MetaMaxSize {
		return fmt.Errorf("cluster metadata is %d bytes, over memberlist's %d (client address or version too long)", n, memberlist.MetaMaxSize)
	}
	return nil
}

// member is a Member with what is needed to judge and reach it.
type member struct {
	Member
	node     memberlist.Node // a copy: Name, Addr, Port
	problem  string          // why the metadata is invalid; empty if valid
	advanced time.Time       // when its Seq last changed; zero: not since it joined
}

// record copies a node from an event (memberlist holds its lock while it
// calls, so the node can be read here and only here), checks its metadata
// and starts its sender. The node's State field is not kept up to date by
// memberlist: a node in the view is alive, and a node that left or died is
// removed, as memberlist.Members does.
func (c *Cluster) record(n *memberlist.Node) {
	m := member{Member: Member{Name: n.Name, Gossip: n.Address(), Status: "alive"},
		node: memberlist.Node{Name: n.Name, Addr: append(net.IP(nil), n.Addr...), Port: n.Port}}
	self := n.Name == c.opts.NodeName
	var meta Meta
	var err error
	if !self { // our own figures are c.meta
		meta, err = parseMeta(n.Meta)
	}
	now := time.Now()
	c.mu.Lock()
	prev, seen := c.view[n.Name]
	if err != nil {
		m.problem = err.Error()
	} else {
		m.Meta, m.advanced = meta, prev.advanced
		// The first sighting proves nothing: a node's figures are fresh
		// only once they are seen to change.
		if seen && prev.problem == "" && meta.Seq != prev.Seq {
			m.advanced = now
		}
	}
	c.view[n.Name] = m
	if !self && !c.stopped {
		if p := c.peers[n.Name]; p != nil {
			p.move(m.node)
		} else {
			p = newPeer(c, m.node)
			c.peers[n.Name] = p
			c.listPeers()
			c.done.Add(1)
			go p.run()
		}
	}
	c.mu.Unlock()
	if m.problem != "" && m.problem != prev.problem {
		c.warn.do("invalid "+n.Name, func() {
			c.log.Warn().Str("node", n.Name).Str("gossip", m.Gossip).Str("problem", m.problem).
				Msg("a member's metadata is invalid: its figures are ignored")
		})
	}
}

// forget drops a node that left or died and stops its sender.
func (c *Cluster) forget(name string) {
	c.mu.Lock()
	delete(c.view, name)
	p := c.peers[name]
	if p != nil {
		delete(c.peers, name)
		c.listPeers()
	}
	c.mu.Unlock()
	if p != nil {
		close(p.left) // not waited for here: memberlist holds its lock
	}
}

// listPeers publishes peers for BroadcastTakeover. c.mu must be held.
func (c *Cluster) listPeers() {
	list := make([]*peer, 0, len(c.peers))
	for _, p := range c.peers {
		list = append(list, p)
	}
	c.peerList.Store(&list)
}

// isMember reports whether name is another node of the membership.
func (c *Cluster) isMember(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.view[name]
	return ok && name != c.opts.NodeName
}

// Members lists the nodes this one knows, itself included, by name.
func (c *Cluster) Members() []Member {
	now := time.Now()
	c.mu.Lock()
	out := make([]Member, 0, len(c.view))
	for _, m := range c.view {
		mem := m.Member
		switch {
		case m.Name == c.opts.NodeName:
			mem.Meta = c.meta // our own is always current
		case m.problem != "":
			mem.Ignored = "invalid metadata: " + m.problem
		case m.advanced.IsZero():
			mem.Ignored = "stale: metadata not updated since it joined"
		case now.Sub(m.advanced) > staleAfter:
			mem.Ignored = fmt.Sprintf("stale: metadata not updated for %v", now.Sub(m.advanced).Round(time.Second))
		}
		out = append(out, mem)
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Peers reports whether another node is alive and ready, with figures
// that can be believed.
func (c *Cluster) Peers() bool {
	for _, m := range c.Members() {
		if m.Name != c.opts.NodeName && m.Status == "alive" && m.Ignored == "" && m.State == StateReady {
			return true
		}
	}
	return false
}

// BroadcastTakeover tells every other node that device logged in here at
// loggedInAt, so that they close its older connections. It only queues:
// each peer's sender batches what it finds (see sendInterval).
func (c *Cluster) BroadcastTakeover(device string, loggedInAt int64) {
	peers := c.peerList.Load()
	if peers == nil || len(*peers) == 0 {
		return
	}
	var buf [64]byte
	rec := appendTakeover(buf[:0], device, loggedInAt)
	if len(rec) > maxRecordBytes {
		c.metrics.dropped.WithLabelValues("too_large").Add(float64(len(*peers)))
		return
	}
	for _, p := range *peers {
		p.enqueue(rec)
	}
}

// receive handles a message from another node (memberlist's NotifyMsg).
func (c *Cluster) receive(msg []byte) {
	sender, records, err := splitHeader(msg)
	if err != nil {
		c.reject("malformed", "")
		return
	}
	// With a key, memberlist has already refused whatever was not sealed
	// with it. Without, a name is all there is to check: it keeps out
	// senders that are not members, not one that claims a member's name.
	// (A node's first messages may come before its join is merged, and
	// are then refused too.)
	if c.insecure && !c.isMember(sender) {
		c.reject("not_member", sender)
		return
	}
	takeovers := 0
	defer func() { c.metrics.received.WithLabelValues(kindTakeover.String()).Add(float64(takeovers)) }()
	for len(records) > 0 {
		var k kind
		var body []byte
		if k, body, records, err = nextRecord(records); err != nil {
			c.reject("malformed", sender)
			return
		}
		switch k {
		case kindTakeover:
			device, at, err := parseTakeover(body)
			if err != nil {
				c.reject("malformed", sender)
				return
			}
			takeovers++
			c.handler.TakeOver(device, at)
		default: // a newer node's kind: skipped
			c.metrics.received.WithLabelValues(k.String()).Inc()
		}
	}
}

func (c *Cluster) reject(reason, sender string) {
	c.metrics.rejected.WithLabelValues(reason).Inc()
	c.warn.do("reject "+reason, func() {
		c.log.Warn().Str("reason", reason).Str("sender", sender).Msg("message from another node rejected")
	})
}

// Leave tells the others this node is going, then stops gossiping. Each
// peer's sender first sends what is queued: a node that does not answer
// can hold Leave up to memberlist's TCPTimeout (10s) beyond timeout.
func (c *Cluster) Leave(timeout time.Duration) error {
	if !c.shut(true) {
		return nil
	}
	c.done.Wait() // the senders: the others hear the last takeovers first
	err := c.list.Leave(timeout)
	if serr := c.list.Shutdown(); err == nil {
		err = serr
	}
	return err
}

// Kill stops gossiping without leaving or sending what is queued, as a
// crash would (tests).
func (c *Cluster) Kill() error {
	c.shut(false)
	c.done.Wait()
	return c.list.Shutdown()
}

// shut stops the rejoin loop and the senders, once; it reports whether it
// did.
func (c *Cluster) shut(flush bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return false
	}
	c.stopped, c.flush = true, flush
	c.peers = map[string]*peer{}
	c.listPeers()
	close(c.stop)
	return true
}

type delegate struct{ c *Cluster }

func (d *delegate) NodeMeta(limit int) []byte {
	conns, state := d.c.handler.Local()
	d.c.mu.Lock()
	d.c.meta.Conns, d.c.meta.State = conns, state
	d.c.meta.Seq++
	d.c.gossiped = time.Now()
	meta := d.c.meta
	d.c.mu.Unlock()
	b, _ := json.Marshal(meta)
	if len(b) > limit { // never hand memberlist more: it panics
		b, _ = json.Marshal(Meta{Conns: conns, State: state, Seq: meta.Seq})
	}
	if len(b) > limit {
		return nil
	}
	return b
}
func (d *delegate) NotifyMsg(msg []byte)                     { d.c.receive(msg) }
func (d *delegate) GetBroadcasts(int, int) [][]byte          { return nil }
func (d *delegate) LocalState(bool) []byte                   { return nil }
func (d *delegate) MergeRemoteState(state []byte, join bool) {}

type events struct{ c *Cluster }

func (e *events) NotifyJoin(n *memberlist.Node) {
	e.c.record(n)
	e.c.log.Info().Str("node", n.Name).Str("gossip", n.Address()).Msg("node joined")
	e.c.metrics.changes.WithLabelValues("join").Inc()
}
func (e *events) NotifyLeave(n *memberlist.Node) {
	e.c.forget(n.Name)
	e.c.log.Info().Str("node", n.Name).Msg("node left or died")
	e.c.metrics.changes.WithLabelValues("leave").Inc()
}
func (e *events) NotifyUpdate(n *memberlist.Node) { e.c.record(n) }
