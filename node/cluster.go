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
// they reconnect across the other nodes. Writes in progress finish.
func (n *Node) Drain(ctx context.Context) error {
	n.ready.Store(false)
	n.draining.Store(true)
	members := n.cluster.Load()
	if members != nil {
		members.Update(n.Local())
	}
	if n.srv == nil {
		return nil
	}
	n.srv.StopAccepting()
	if members != nil && members.Peers() {
		const step = 100 * time.Millisecond
		steps := max(int(n.opts.DrainPeriod/step), 1)
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
			select {
			case <-ctx.Done():
				return n.Shutdown(context.Background())
			case <-t.C:
			}
			if left == batch { // all are closing: wait for them below
				break
			}
		}
	}
	return n.Shutdown(ctx)
}

func (n *Node) stopLoops() {
	select {
	case <-n.stop:
	default:
		close(n.stop)
	}
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
