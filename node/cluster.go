package node

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"slices"
	"time"

	"github.com/kronos-sync/kronos-server/cluster"
	"github.com/kronos-sync/kronos-server/conn"
)

// JoinCluster makes the node a cluster member: it gossips its connections
// and state, takes over devices that log in elsewhere, and sheds
// connections when it holds more than its share.
func (n *Node) JoinCluster(opts cluster.Options) (*cluster.Cluster, error) {
	opts.ClientAddr = n.Addr().String()
	c, err := cluster.Start(opts, n)
	if err != nil {
		return nil, err
	}
	n.cluster.Store(c)
	n.loops.Add(1)
	go n.clusterLoop()
	return c, nil
}

// Local reports connections and state for the cluster's metadata.
func (n *Node) Local() (int, string) {
	state := cluster.StateReady
	if n.draining.Load() {
		state = cluster.StateDraining
	}
	conns := 0
	if n.srv != nil {
		conns = n.srv.Count()
	}
	return conns, state
}

// clusterLoop gossips this node's load and rebalances, once a second.
func (n *Node) clusterLoop() {
	defer n.loops.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var r rebalancer // this goroutine's alone
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		conns, state := n.Local()
		c := n.cluster.Load()
		c.Update(conns, state)
		if n.opts.RebalanceThreshold > 0 && state == cluster.StateReady {
			n.rebalance(c, &r, conns, time.Now())
		}
	}
}

// Rebalancing acts on figures other nodes gossip, which a node cannot
// check, and without a cluster key anyone may gossip: a member that
// reports 0 connections makes every node look overloaded. So:
//
//   - only members with valid metadata that changed within the last
//     seconds count (cluster.Member.Ignored), and at least one such ready
//     peer besides this node;
//   - this node sheds to the mean, at most RebalanceRate a second;
//   - its own count, the one figure it can trust, must confirm that
//     shedding works. A peer that just joined and reports 0 is what a
//     scale-out looks like, and also what a foreign member looks like, so
//     being new proves nothing either way; but clients closed here
//     reconnect through the load balancer, and if the low peers are real
//     many land there and this node's count falls. When it does not (the
//     peer is not behind the balancer, or lies), the clients are only
//     churning. Beyond rebalanceAllowance seconds' worth of closes, the
//     node sheds only while its count has fallen, since shedding began,
//     by a 1/rebalanceConfirm of all it closed beyond those. Else
//     rebalancing pauses, for rebalancePause, doubling while it keeps
//     failing, up to rebalancePauseMax.
//
// With round-robin balancing over k nodes, (k-1)/k of the closed clients
// land elsewhere: a fall of at least half what was shed, well above a
// third. A member lying with fresh, plausible figures can thus cause about
// rebalanceAllowance seconds of shedding per pause, no more.
const (
	rebalanceAllowance = 5
	rebalanceConfirm   = 3
	rebalancePause     = 30 * time.Second
	rebalancePauseMax  = 10 * time.Minute
)

// rebalanceWindow is how many of its own per-second counts a node compares
// with its peers'. Their figures are a gossip round or two old: while every
// node grows (a ramp, the reconnects after an outage), this node's live
// count is ahead of them and would look above the mean. The lowest of its
// recent counts is about as old as theirs when it grows, and its count when
// it holds steady.
const rebalanceWindow = 3

// rebalancer is the state of shedding that began at startConns.
type rebalancer struct {
	recent [rebalanceWindow]int // this node's last counts, by tick
	ticks  int

	active      bool
	startConns  int
	shed        int
	pause       time.Duration // the last pause; 0 after a balance is reached
	pausedUntil time.Time
}

// rebalance closes connections while this node holds more than the mean
// of the ready nodes by the threshold (see above). The clients reconnect
// through the load balancer, which spreads them.
func (n *Node) rebalance(c *cluster.Cluster, r *rebalancer, conns int, now time.Time) {
	r.recent[r.ticks%rebalanceWindow] = conns
	if r.ticks++; r.ticks < rebalanceWindow {
		return
	}
	low := slices.Min(r.recent[:])
	total, ready := 0, 0
	for _, m := range c.Members() {
		if m.Status == "alive" && m.Ignored == "" && m.State == cluster.StateReady {
			total += m.Conns
			ready++
		}
	}
	if ready < 2 {
		r.active = false
		return
	}
	mean := float64(total) / float64(ready)
	if float64(low) <= mean*(1+n.opts.RebalanceThreshold) {
		r.active, r.pause = false, 0
		return
	}
	if now.Before(r.pausedUntil) {
		return
	}
	if !r.active {
		*r = rebalancer{active: true, startConns: conns, pause: r.pause}
	}
	budget := n.opts.RebalanceRate*rebalanceAllowance + rebalanceConfirm*max(r.startConns-conns, 0)
	if r.shed >= budget {
		r.pause = min(max(2*r.pause, rebalancePause), rebalancePauseMax)
		r.pausedUntil, r.active = now.Add(r.pause), false
		n.metrics.rebalancePaused.Inc()
		n.log.Warn().Int("shed", r.shed).Int("connections_before", r.startConns).Int("connections", conns).
			Dur("pause", r.pause).Msg("rebalancing paused: closed clients came back here, so the less loaded nodes are not taking them (or their figures are wrong)")
		return
	}
	// Shed down to the mean, not just under the limit, so a node does not
	// hover at the edge; the rate bounds the reconnects per second.
	shed := min(int(math.Ceil(float64(low)-mean)), n.opts.RebalanceRate, budget-r.shed)
	closed := 0
	n.srv.Each(func(c *conn.Conn) bool {
		if closed >= shed {
			return false
		}
		if !c.Closing() {
			c.Close(conn.ReasonPolicy)
			closed++
		}
		return true
	})
	r.shed += closed
	n.metrics.rebalanced.Add(float64(closed))
}

// Drain stops the node without a reconnect storm: readiness fails, the
// cluster hears "draining", the port closes, and clients are closed in
// batches over the drain period (at once when no other node is up), so
// they reconnect across the other nodes. Writes in progress finish. The
// node then shuts down and leaves the cluster. All of it fits in ctx: the
// drain period is shortened to leave a fifth of the time that remains for
// the rest.
func (n *Node) Drain(ctx context.Context) error {
	n.ready.Store(false)
	n.draining.Store(true)
	members := n.cluster.Load()
	if members != nil {
		members.Update(n.Local())
	}
	if n.srv != nil {
		n.srv.StopAccepting()
		if members != nil && members.Peers() {
			n.closeGradually(ctx, drainWindow(ctx, n.opts.DrainPeriod))
		}
	}
	return n.Shutdown(ctx)
}

// drainWindow is the time clients are spread over: the drain period, or
// four fifths of what ctx leaves, whichever is shorter.
func drainWindow(ctx context.Context, period time.Duration) time.Duration {
	if deadline, ok := ctx.Deadline(); ok {
		period = min(period, time.Until(deadline)*4/5)
	}
	return max(period, 0)
}

// closeGradually closes the clients in batches over window.
func (n *Node) closeGradually(ctx context.Context, window time.Duration) {
	const step = 100 * time.Millisecond
	steps := max(int(window/step), 1)
	batch := max(n.srv.Count()/steps, 1)
	t := time.NewTicker(step)
	defer t.Stop()
	for n.srv.Count() > 0 {
		left := batch
		n.srv.Each(func(c *conn.Conn) bool {
			if !c.Closing() {
				c.Close(conn.ReasonShutdown)
				left--
			}
			return left > 0
		})
		if left == batch { // all are closing already
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// leaveCluster tells the others this node is going, within what ctx leaves
// (at most 5s), then stops gossiping.
func (n *Node) leaveCluster(ctx context.Context) {
	c := n.cluster.Load()
	if c == nil {
		return
	}
	timeout := 5 * time.Second
	if deadline, ok := ctx.Deadline(); ok {
		timeout = max(min(timeout, time.Until(deadline)), 100*time.Millisecond)
	}
	if err := c.Leave(timeout); err != nil {
		n.log.Warn().Err(err).Msg("leaving the cluster")
	}
}

func (n *Node) stopLoops() {
	n.stopOnce.Do(func() { close(n.stop) })
	n.loops.Wait()
}

// clusterHandler serves /cluster: this node and the members it knows.
func (n *Node) clusterHandler(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	c := n.cluster.Load()
	if c == nil {
		json.NewEncoder(w).Encode(map[string]any{"enabled": false})
		return
	}
	json.NewEncoder(w).Encode(map[string]any{
		"enabled": true,
		"self":    c.Name(),
		"members": c.Members(),
	})
}
