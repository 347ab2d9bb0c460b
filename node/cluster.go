package node

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
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
			n.rebalance(c, conns)
		}
	}
}

// rebalance closes connections, at most RebalanceRate a second, while this
// node holds more than the mean of the ready nodes by the threshold. The
// clients reconnect through the load balancer, which spreads them.
func (n *Node) rebalance(c *cluster.Cluster, conns int) {
	total, ready := 0, 0
	for _, m := range c.Members() {
		if m.Status == "alive" && m.State == cluster.StateReady {
			total += m.Conns
			ready++
		}
	}
	if ready < 2 {
		return
	}
	mean := float64(total) / float64(ready)
	limit := mean * (1 + n.opts.RebalanceThreshold)
	if float64(conns) <= limit {
		return
	}
	// Shed down to the mean, not just under the limit, so a node does not
	// hover at the edge; the rate bounds the reconnects per second.
	shed := min(int(math.Ceil(float64(conns)-mean)), n.opts.RebalanceRate)
	n.metrics.rebalanced.Add(float64(shed))
	n.srv.Each(func(c *conn.Conn) bool {
		if shed <= 0 {
			return false
		}
		if !c.Closing() {
			c.Close(conn.ReasonPolicy)
			shed--
		}
		return true
	})
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
