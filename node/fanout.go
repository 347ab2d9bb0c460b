package node

import (
	"hash/maphash"
	"runtime"
	"sync"

	"github.com/kronos-sync/kronos-server/conn"
	"github.com/kronos-sync/kronos-server/feed"
)

// fanout is the feed's Sink: it hands committed changes to the sessions of
// their users. Fan-out is mostly socket writes, which on a busy node take
// more than one core, so changes are spread over a few goroutines (shards)
// by user: each user's changes always go through the same goroutine, in
// the order the feed gave them. The feed waits only while a bounded queue
// is full.
//
// By default there is one shard per P (Options.FanoutShards), so that a
// commit's notifications are written on several threads.
type fanout struct {
	seed    maphash.Seed
	shards  []chan []feed.Change
	deliver func([]feed.Change, *conn.Batch)
	flush   func(*conn.Batch) // writes a round's batch: (*conn.Batch).Flush, but in tests
	wg      sync.WaitGroup

	// closing guards the queues: a feed goroutine that outlives the node's
	// stop must find them closed, not send on them. It is held shared
	// across channel sends; close takes it exclusively.
	closing sync.RWMutex
	closed  bool
}

// fanoutQueue bounds the batches waiting for each shard.
const fanoutQueue = 1024

// defaultFanoutShards is one shard per P.
func defaultFanoutShards() int { return runtime.GOMAXPROCS(0) }

func newFanout(shards int, deliver func([]feed.Change, *conn.Batch)) *fanout {
	f := &fanout{seed: maphash.MakeSeed(), shards: make([]chan []feed.Change, shards), deliver: deliver,
		flush: (*conn.Batch).Flush}
	for i := range f.shards {
		f.shards[i] = make(chan []feed.Change, fanoutQueue)
		f.wg.Add(1)
		go f.run(f.shards[i])
	}
	return f
}

// run delivers the shard's batches. When it has fallen behind, it takes
// everything queued (at most fanoutQueue batches) in one round and writes
// each connection's notifications together, one writev for all, which is
// what lets a busy node catch up: the longer the backlog, the more a round
// merges. When it keeps up, a round is one batch and nothing waits. A
// round's first notifications wait for the rest to be queued, which costs
// microseconds each against the writev it saves.
func (f *fanout) run(queue chan []feed.Change) {
	defer f.wg.Done()
	var b conn.Batch
	for changes := range queue {
		f.deliver(changes, &b)
	more:
		for range fanoutQueue - 1 {
			select {
			case next, ok := <-queue:
				if !ok {
					break more
				}
				f.deliver(next, &b)
			default:
				break more
			}
		}
		f.flush(&b)
	}
}

// queued is the batches waiting in the shards' queues, for the metrics.
func (f *fanout) queued() int {
	n := 0
	for _, q := range f.shards {
		n += len(q)
	}
	return n
}

func (f *fanout) shardOf(userID string) int {
	return int(maphash.String(f.seed, userID) % uint64(len(f.shards)))
}

// publish queues a batch; it implements feed.Sink.
func (f *fanout) publish(changes []feed.Change) {
	if len(changes) == 0 {
		return
	}
	f.closing.RLock()
	defer f.closing.RUnlock()
	if f.closed {
		return
	}
	if len(f.shards) == 1 {
		f.shards[0] <- changes
		return
	}
	// Most batches hold one user's changes: send them whole.
	first := f.shardOf(changes[0].UserID)
	same := true
	for i := range changes[1:] {
		if changes[i+1].UserID != changes[0].UserID {
			same = false
			break
		}
	}
	if same {
		f.shards[first] <- changes
		return
	}
	split := make([][]feed.Change, len(f.shards))
	for _, c := range changes {
		i := f.shardOf(c.UserID)
		split[i] = append(split[i], c)
	}
	for i, part := range split {
		if len(part) > 0 {
			f.shards[i] <- part
		}
	}
}

// close delivers what is queued and stops; later batches are dropped.
func (f *fanout) close() {
	f.closing.Lock()
	if f.closed {
		f.closing.Unlock()
		return
	}
	f.closed = true
	for _, q := range f.shards {
		close(q)
	}
	f.closing.Unlock()
	f.wg.Wait()
}
