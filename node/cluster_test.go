package node_test

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kronos-sync/kronos-server/cluster"
	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/bolt"
	"github.com/kronos-sync/kronos-server/feed/postgres"
	"github.com/kronos-sync/kronos-server/feed/rethinkdb"
	"github.com/kronos-sync/kronos-server/internal/gossiptest"
	"github.com/kronos-sync/kronos-server/internal/nodetest"
	"github.com/kronos-sync/kronos-server/internal/pgtest"
	"github.com/kronos-sync/kronos-server/internal/rethinktest"
	"github.com/kronos-sync/kronos-server/internal/tcppipe"
	"github.com/kronos-sync/kronos-server/node"
	"github.com/kronos-sync/kronos-server/node/client"
)

// member is one node of an in-process cluster on loopback.
type member struct {
	node    *node.Node
	cluster *cluster.Cluster
	addr    string
	key     []byte // the cluster's gossip key
}

// startMember starts a node that joins seed's cluster, or starts one (with
// a random key) if seed is nil.
func startMember(t *testing.T, store feed.Backend, opts node.Options, seed *member) *member {
	t.Helper()
	o := nodetest.Options{Node: opts, Backend: &store, Join: []string{}}
	if seed != nil {
		o.Join, o.Key = []string{seed.cluster.Addr()}, seed.key
	}
	n := nodetest.Start(t, o)
	return &member{node: n.Node, cluster: n.Cluster, addr: n.Addr, key: n.Key}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not after %v", what, within)
		}
		<-tick.C
	}
	return time.Since(start)
}

func statusOf(m *member, name string) (string, string) {
	for _, mem := range m.cluster.Members() {
		if mem.Name == name {
			return mem.Status, mem.State
		}
	}
	return "gone", ""
}

// Join, takeover and drain, on each shared store.
func TestClusterMembershipTakeoverAndDrain(t *testing.T) {
	t.Run("postgres", func(t *testing.T) {
		url := pgtest.URL(t)
		testMembershipTakeoverAndDrain(t, func() feed.Backend {
			s, err := postgres.Open(context.Background(), url, feed.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return feed.Backend{Store: s, Feed: s}
		})
	})
	t.Run("rethinkdb", func(t *testing.T) {
		url := rethinktest.URL(t)
		testMembershipTakeoverAndDrain(t, func() feed.Backend {
			s, err := rethinkdb.Open(context.Background(), url, feed.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return feed.Backend{Store: s, Feed: s}
		})
	})
}

func testMembershipTakeoverAndDrain(t *testing.T, open func() feed.Backend) {
	opts := node.Options{DrainPeriod: time.Second}
	a := startMember(t, open(), opts, nil)
	b := startMember(t, open(), opts, a)
	c := startMember(t, open(), opts, a)
	// Three nodes join through one seed, and see each other's metadata.
	eventually(t, 10*time.Second, "three members on every node", func() bool {
		for _, m := range []*member{a, b, c} {
			alive := 0
			for _, mem := range m.cluster.Members() {
				if mem.Status == "alive" && mem.State == cluster.StateReady && mem.Client != "" {
					alive++
				}
			}
			if alive != 3 {
				return false
			}
		}
		return true
	})

	// Takeover: the same device logs in on another node; its older
	// connection, on the first node, is closed.
	old, err := client.Dial(context.Background(), client.TCP, a.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	login, err := old.Login("", "", wait)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	fresh, err := client.Dial(context.Background(), client.WebSocket, b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if _, err := fresh.Login(login.Str("user_id"), login.Str("device_id"), wait); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, old)
	t.Logf("takeover across nodes closed the old connection after %v", time.Since(start))

	// A node that dies without leaving is declared dead by the others.
	cName := c.cluster.Name()
	c.cluster.Kill()
	took := eventually(t, 10*time.Second, "the killed node declared dead", func() bool {
		s, _ := statusOf(a, cName)
		return s == "dead" || s == "gone"
	})
	t.Logf("dead node detected after %v", took)

	// Drain: b's clients are closed (and may reconnect to a), b gossips
	// draining, then leaves.
	clients := make([]*client.Client, 5)
	for i := range clients {
		cl, err := client.Dial(context.Background(), client.TCP, b.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		if _, err := cl.Login("", "", wait); err != nil {
			t.Fatal(err)
		}
		clients[i] = cl
	}
	bName := b.cluster.Name()
	drained := make(chan error, 1)
	go func() { drained <- b.node.Drain(context.Background()) }()
	eventually(t, 5*time.Second, "b seen draining", func() bool {
		_, state := statusOf(a, bName)
		return state == cluster.StateDraining
	})
	for _, cl := range append(clients, fresh) {
		expectClosed(t, cl)
	}
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	b.cluster.Leave(time.Second)
	eventually(t, 5*time.Second, "b seen leaving", func() bool {
		s, _ := statusOf(a, bName)
		return s == "left" || s == "gone"
	})
}

// roundRobin is a TCP load balancer for tests: each new connection goes to
// the next backend.
type roundRobin struct {
	ln       net.Listener
	mu       sync.Mutex
	backends []string
	next     int
}

func newRoundRobin(t *testing.T, backends ...string) *roundRobin {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lb := &roundRobin{ln: ln, backends: backends}
	t.Cleanup(func() { ln.Close() })
	go tcppipe.Forward(ln, func() string {
		lb.mu.Lock()
		defer lb.mu.Unlock()
		lb.next++
		return lb.backends[(lb.next-1)%len(lb.backends)]
	})
	return lb
}

func (lb *roundRobin) add(backend string) {
	lb.mu.Lock()
	lb.backends = append(lb.backends, backend)
	lb.mu.Unlock()
}

// One node holds 3,000 clients (1,000 under the race detector); two nodes
// are added behind the same load balancer. The loaded node sheds
// connections at a bounded rate, the clients reconnect, and all three end
// within 20% of the mean.
func TestRebalanceAfterScaleOut(t *testing.T) {
	clients := 3000
	if raceEnabled {
		clients = 1000
	}
	openBolt := func(name string) feed.Backend {
		s, err := bolt.Open(filepath.Join(t.TempDir(), name), feed.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return feed.Backend{Store: s, Feed: s}
	}
	opts := node.Options{RebalanceThreshold: 0.2, RebalanceRate: 300}
	a := startMember(t, openBolt("a.db"), opts, nil)
	lb := newRoundRobin(t, a.addr)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var connected atomic.Int64
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() { // a client that logs in again whenever it is dropped
			defer wg.Done()
			tr := client.TCP
			if i%2 == 1 {
				tr = client.WebSocket
			}
			for ctx.Err() == nil {
				c, err := client.Dial(ctx, tr, lb.ln.Addr().String())
				if err != nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				if _, err := c.Login("", "", 10*time.Second); err == nil {
					connected.Add(1)
					for ctx.Err() == nil {
						if _, err := c.NextRaw(time.Second); err != nil {
							if ne, ok := err.(net.Error); ok && ne.Timeout() {
								continue
							}
							break
						}
					}
					connected.Add(-1)
				}
				c.Close()
			}
		}()
	}
	eventually(t, 2*time.Minute, fmt.Sprintf("%d clients on the first node", clients), func() bool {
		return a.node.Connections() == clients
	})
	b := startMember(t, openBolt("b.db"), opts, a)
	c := startMember(t, openBolt("c.db"), opts, a)
	lb.add(b.addr)
	lb.add(c.addr)
	took := eventually(t, 2*time.Minute, "three nodes within 20% of the mean", func() bool {
		counts := []int{a.node.Connections(), b.node.Connections(), c.node.Connections()}
		total := counts[0] + counts[1] + counts[2]
		mean := float64(total) / 3
		for _, n := range counts {
			if float64(n) > mean*1.2 || float64(n) < mean*0.8 {
				return false
			}
		}
		return total >= clients*9/10
	})
	t.Logf("balanced after %v: %d %d %d", took, a.node.Connections(), b.node.Connections(), c.node.Connections())
	cancel()
}

// counterValue reads a counter of the registry.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

// waitRebalances returns once the node has run its cluster loop (gossip,
// then rebalance) twice more: its own metadata Seq, bumped by each gossip,
// has gone up by two.
func waitRebalances(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	seq := func() uint64 {
		for _, m := range c.Members() {
			if m.Name == c.Name() {
				return m.Seq
			}
		}
		return 0
	}
	from := seq()
	eventually(t, 20*time.Second, "two more rounds of the cluster loop", func() bool { return seq() >= from+2 })
}

// keepConnected runs clients that log in again whenever they are closed,
// straight to addr, as when a stranger that is not behind the load
// balancer draws clients away: they can only come back. They stop when the test ends.
func keepConnected(t *testing.T, addr string, clients int) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				c, err := client.Dial(ctx, client.TCP, addr)
				if err != nil {
					time.Sleep(50 * time.Millisecond) // a pause before retrying, as a client would
					continue
				}
				if _, err := c.Login("", "", 10*time.Second); err == nil {
					for ctx.Err() == nil {
						if _, err := c.NextRaw(time.Second); err != nil {
							if ne, ok := err.(net.Error); ok && ne.Timeout() {
								continue
							}
							break
						}
					}
				}
				c.Close()
			}
		}()
	}
}

// A cluster without a key (Insecure): strangers join and gossip that they
// hold no connections. With figures that are invalid or never change the
// node sheds nothing. Fresh, plausible figures it cannot tell from a new
// node's: it sheds, sees the clients come back, and pauses.
func TestStrangersCannotShedClients(t *testing.T) {
	const clients = 200
	reg := prometheus.NewRegistry()
	opts := node.Options{RebalanceThreshold: 0.2, RebalanceRate: 20, Registerer: reg}
	n := nodetest.Start(t, nodetest.Options{Node: opts, Join: []string{}, Insecure: true})
	keepConnected(t, n.Addr, clients)
	eventually(t, 30*time.Second, "clients connected", func() bool { return n.Connections() == clients })

	invalid := gossiptest.Start(t, gossiptest.Options{Name: "invalid", Meta: []byte(`{"c":0,"s":"ready"}`)})
	static := gossiptest.Start(t, gossiptest.Options{Name: "static", Meta: []byte(`{"a":"127.0.0.1:5000","c":0,"s":"ready","n":1}`)})
	for _, s := range []*gossiptest.Member{invalid, static} {
		if err := s.Join(n.Cluster.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "strangers listed", func() bool { return len(n.Cluster.Members()) == 3 })
	waitRebalances(t, n.Cluster)
	if shed := counterValue(t, reg, "kronos_rebalance_closed_total"); shed != 0 {
		t.Fatalf("%v clients shed for strangers with invalid or stale figures", shed)
	}

	static.Heartbeat(200*time.Millisecond, func(i int) []byte {
		return fmt.Appendf(nil, `{"a":"127.0.0.1:5000","c":0,"s":"ready","n":%d}`, i+1)
	})
	eventually(t, 30*time.Second, "rebalancing paused", func() bool {
		return counterValue(t, reg, "kronos_rebalance_paused_total") >= 1
	})
	shed := counterValue(t, reg, "kronos_rebalance_closed_total")
	waitRebalances(t, n.Cluster)
	if after := counterValue(t, reg, "kronos_rebalance_closed_total"); after != shed {
		t.Fatalf("shed %v, then %v more while paused", shed, after-shed)
	}
	if shed >= clients {
		t.Errorf("shed %v of %d clients before pausing", shed, clients)
	}
	t.Logf("a stranger with fresh figures made the node shed %v of %d clients before it paused", shed, clients)
	eventually(t, 30*time.Second, "the clients back", func() bool { return n.Connections() == clients })
}

// While clients pour in (a ramp, the reconnects after an outage), every
// node grows and peers' gossiped counts lag a round or two behind the
// node's own live count. A peer growing at the same pace, seen 1.5 s late,
// must not make the node shed.
func TestRampDoesNotShed(t *testing.T) {
	const clients, step = 600, 30
	reg := prometheus.NewRegistry()
	opts := node.Options{RebalanceThreshold: 0.2, RebalanceRate: 50, Registerer: reg}
	n := nodetest.Start(t, nodetest.Options{Node: opts, Join: []string{}, Insecure: true})

	// The peer reports what the node held 1.5 s earlier.
	var mu sync.Mutex
	var history []int
	sampler := time.NewTicker(100 * time.Millisecond)
	defer sampler.Stop()
	go func() {
		for range sampler.C {
			mu.Lock()
			history = append(history, n.Connections())
			mu.Unlock()
		}
	}()
	peer := gossiptest.Start(t, gossiptest.Options{Name: "peer", Meta: []byte(`{"a":"127.0.0.1:5000","c":0,"s":"ready","n":1}`)})
	if err := peer.Join(n.Cluster.Addr()); err != nil {
		t.Fatal(err)
	}
	peer.Heartbeat(200*time.Millisecond, func(i int) []byte {
		mu.Lock()
		defer mu.Unlock()
		lagged := 0
		if len(history) > 15 {
			lagged = history[len(history)-16]
		}
		return fmt.Appendf(nil, `{"a":"127.0.0.1:5000","c":%d,"s":"ready","n":%d}`, lagged, i+2)
	})
	eventually(t, 10*time.Second, "peer listed", func() bool { return len(n.Cluster.Members()) == 2 })
	waitRebalances(t, n.Cluster)

	for open := step; open <= clients; open += step {
		keepConnected(t, n.Addr, step)
		eventually(t, 30*time.Second, "step connected", func() bool { return n.Connections() >= open })
		time.Sleep(150 * time.Millisecond) // the ramp's pace, not a synchronisation
	}
	waitRebalances(t, n.Cluster)
	if shed := counterValue(t, reg, "kronos_rebalance_closed_total"); shed != 0 {
		t.Fatalf("%v clients shed during a ramp the peer followed 1.5 s late", shed)
	}
}
