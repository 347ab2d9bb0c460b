package cluster

import (
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Why a sender per peer, and not memberlist's broadcast queue
// (Delegate.GetBroadcasts, TransmitLimitedQueue):
//
// A drain moves a node's clients, up to 19,000, to the other nodes within
// 30s: 600 logins a second, each a takeover for every other node, for
// thousands of records a second in a larger cluster. Broadcasts ride on
// gossip: UDP packets of at most 1,400 bytes (about 25 takeovers of 46
// bytes), sent every 200ms to 3 random nodes, each record repeated
// RetransmitMult×log(N+1) times. By that arithmetic gossip carries some 150
// takeovers a second per node, far below the need, so the queue would only
// grow; each record also waits for a gossip round and for a random pick of
// the right node, and UDP may lose it.
//
// A sender per peer instead sends whatever is queued for that node as one
// message over memberlist's TCP stream (encrypted with the cluster key).
// Sends are paced to one per sendInterval per peer: a takeover after a quiet
// spell goes at once (a dial and a write: about 1ms on a LAN), and during a
// burst everything that arrives within the interval shares one dial. At
// 20ms a peer gets at most 50 dials a second however many takeovers there
// are (before: one dial and one goroutine per takeover and peer, 38,000 for
// a drain into two nodes), leaving at most 3,000 sockets in TIME_WAIT per
// peer, and a takeover waits at most 20ms more than it did.
//
// Measured between two nodes on loopback: a lone takeover arrives in
// 0.6-1ms; 5,000 queued at once go in one send and all arrive within
// 25-35ms; 700, 2,000 or 5,000 a second for 3s take 48 sends a second and
// arrive with a delay of 11ms (p50), 21ms (p99), 25ms at most. The dial per
// takeover kept up at 2,000 a second (p99 13ms), but at 5,000 it lost 10%
// and the rest waited 0.7s (p50), 2.3s at most.
const (
	sendInterval = 20 * time.Millisecond
	// maxBatchBytes bounds one message: about 5,500 takeovers, 2ms on a
	// 1Gb/s link. memberlist accepts up to 20MB.
	maxBatchBytes = 256 << 10
	// maxQueueBytes bounds what waits for one peer: about 22,000
	// takeovers, more than a whole node's drain. A peer that stays
	// unreachable loses the oldest first: a takeover matters less the
	// longer the device's new connection has been up.
	maxQueueBytes = 1 << 20
)

// sendLimits are the constants above; tests use smaller ones.
type sendLimits struct {
	interval time.Duration
	batch    int
	queue    int
}

var defaultLimits = sendLimits{interval: sendInterval, batch: maxBatchBytes, queue: maxQueueBytes}

// peer sends this node's messages to one other node. Its goroutine (run)
// is started when the node joins and belongs to the Cluster, which waits
// for it in Leave and Kill; it ends when the node leaves or dies, or this
// one stops.
type peer struct {
	c    *Cluster
	name string
	wake chan struct{} // cap 1: records are waiting
	left chan struct{} // closed when the node leaves or dies

	mu      sync.Mutex      // taken after the Cluster's mu, if both
	node    memberlist.Node // where to send; updated if the node moves
	pending []byte          // records not yet sent, in wire form
	records int             // in pending
}

func newPeer(c *Cluster, n memberlist.Node) *peer {
	return &peer{c: c, name: n.Name, node: n, wake: make(chan struct{}, 1), left: make(chan struct{})}
}

// enqueue adds one encoded record, dropping the oldest if the queue is
// full. It never blocks: it runs on the login path.
func (p *peer) enqueue(rec []byte) {
	dropped := 0
	p.mu.Lock()
	for len(p.pending) > 0 && len(p.pending)+len(rec) > p.c.limits.queue {
		_, _, rest, _ := nextRecord(p.pending) // well-formed: written here
		p.pending = rest
		p.records--
		dropped++
	}
	p.pending = append(p.pending, rec...)
	p.records++
	p.mu.Unlock()
	if dropped > 0 {
		p.c.metrics.dropped.WithLabelValues("queue_full").Add(float64(dropped))
		p.c.warn.do("queue_full "+p.name, func() {
			p.c.log.Warn().Str("node", p.name).Int("dropped", dropped).
				Msg("messages for a node dropped: its queue is full (the node is slow or unreachable)")
		})
	}
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// take moves up to one batch of records into msg, after the header, and
// returns it with the number of records; msg is the sender's own buffer.
func (p *peer) take(msg []byte) ([]byte, int, memberlist.Node) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.records == 0 {
		return msg[:0], 0, p.node
	}
	cut, n := len(p.pending), p.records
	if cut > p.c.limits.batch { // whole records up to the limit, at least one
		cut, n = 0, 0
		for rest := p.pending; len(rest) > 0; {
			_, _, next, _ := nextRecord(rest)
			end := len(p.pending) - len(next)
			if end > p.c.limits.batch && n > 0 {
				break
			}
			cut, rest, n = end, next, n+1
		}
	}
	msg = appendHeader(msg[:0], p.c.opts.NodeName)
	msg = append(msg, p.pending[:cut]...)
	if cut == len(p.pending) {
		p.pending = p.pending[:0]
	} else {
		p.pending = p.pending[cut:]
	}
	p.records -= n
	return msg, n, p.node
}

func (p *peer) move(n memberlist.Node) {
	p.mu.Lock()
	p.node = n
	p.mu.Unlock()
}

// run sends batches until the node leaves or this one stops.
func (p *peer) run() {
	defer p.c.done.Done()
	var msg []byte
	var last time.Time
	pace := time.NewTimer(time.Hour)
	pace.Stop()
	defer pace.Stop()
	for {
		select {
		case <-p.wake:
		case <-p.left:
			p.drop("peer_left")
			return
		case <-p.c.stop:
			p.finish(msg)
			return
		}
		// Let what arrives within the interval join this batch.
		if wait := p.c.limits.interval - time.Since(last); wait > 0 {
			pace.Reset(wait)
			select {
			case <-pace.C:
			case <-p.left:
				p.drop("peer_left")
				return
			case <-p.c.stop:
				p.finish(msg)
				return
			}
		}
		var n int
		var to memberlist.Node
		msg, n, to = p.take(msg)
		if n == 0 {
			continue
		}
		if !p.send(&to, msg, n, false) {
			// A send can time out while the node is fine (a stall on
			// either side). Records are idempotent: try once more.
			pace.Reset(p.c.limits.interval)
			select {
			case <-pace.C:
			case <-p.left:
				p.c.metrics.dropped.WithLabelValues("peer_left").Add(float64(n))
				p.drop("peer_left")
				return
			case <-p.c.stop:
				p.send(&to, msg, n, true)
				p.finish(msg)
				return
			}
			p.send(&to, msg, n, true)
		}
		last = time.Now()
		p.mu.Lock()
		more := p.records > 0
		p.mu.Unlock()
		if more {
			select {
			case p.wake <- struct{}{}:
			default:
			}
		}
	}
}

// send sends a batch of n records; if it fails and this was the last
// attempt, the records are dropped.
func (p *peer) send(to *memberlist.Node, msg []byte, n int, last bool) bool {
	if err := p.c.send(to, msg); err != nil {
		p.c.metrics.sends.WithLabelValues("error").Inc()
		if last {
			p.c.metrics.dropped.WithLabelValues("send_failed").Add(float64(n))
			p.c.warn.do("send "+p.name, func() {
				p.c.log.Warn().Err(err).Str("node", p.name).Int("messages", n).Msg("messages for a node not sent")
			})
		}
		return false
	}
	p.c.metrics.sends.WithLabelValues("ok").Inc()
	p.c.metrics.sent.Add(float64(n))
	return true
}

// finish sends what is queued when the node leaves the cluster (Leave), so
// that logins just before a drain still take over; a Kill drops it, as a
// crash would.
func (p *peer) finish(msg []byte) {
	if !p.c.flush {
		p.drop("stopped")
		return
	}
	for {
		var n int
		var to memberlist.Node
		if msg, n, to = p.take(msg); n == 0 {
			return
		}
		p.send(&to, msg, n, true)
	}
}

func (p *peer) drop(reason string) {
	p.mu.Lock()
	n := p.records
	p.pending, p.records = nil, 0
	p.mu.Unlock()
	if n > 0 {
		p.c.metrics.dropped.WithLabelValues(reason).Add(float64(n))
	}
}
