package feed

import (
	"hash/maphash"
	"runtime"
	"sync"
)

// publisher hands committed changes to the Sink. Fan-out is mostly socket
// writes, which on a busy node take more than one core, so changes are
// spread over one goroutine per CPU by user: each user's changes always go
// through the same goroutine, in the order they were published. A
// backend's committer waits only while a bounded queue is full.
type publisher struct {
	seed   maphash.Seed
	shards []chan []Change
	mu     sync.Mutex
	sink   Sink
	wg     sync.WaitGroup

	// closing guards the queues: a feed goroutine that outlives its
	// store's Close (a cursor that would not close in time) must find
	// them closed, not send on them.
	closing sync.RWMutex
	closed  bool
}

func newPublisher() *publisher {
	p := &publisher{seed: maphash.MakeSeed(), shards: make([]chan []Change, runtime.GOMAXPROCS(0))}
	for i := range p.shards {
		p.shards[i] = make(chan []Change, 1024)
		p.wg.Add(1)
		go p.run(p.shards[i])
	}
	return p
}

func (p *publisher) subscribe(s Sink) {
	p.mu.Lock()
	p.sink = s
	p.mu.Unlock()
}

func (p *publisher) run(queue chan []Change) {
	defer p.wg.Done()
	for changes := range queue {
		p.mu.Lock()
		sink := p.sink
		p.mu.Unlock()
		if sink != nil {
			sink(changes)
		}
	}
}

func (p *publisher) shardOf(userID string) int {
	return int(maphash.String(p.seed, userID) % uint64(len(p.shards)))
}

// publish queues a batch; the caller must not modify it afterwards.
func (p *publisher) publish(changes []Change) {
	if len(changes) == 0 {
		return
	}
	p.closing.RLock()
	defer p.closing.RUnlock()
	if p.closed {
		return
	}
	if len(p.shards) == 1 {
		p.shards[0] <- changes
		return
	}
	// Most batches hold one user's changes: send them whole.
	first := p.shardOf(changes[0].UserID)
	same := true
	for i := range changes[1:] {
		if changes[i+1].UserID != changes[0].UserID {
			same = false
			break
		}
	}
	if same {
		p.shards[first] <- changes
		return
	}
	split := make([][]Change, len(p.shards))
	for _, c := range changes {
		i := p.shardOf(c.UserID)
		split[i] = append(split[i], c)
	}
	for i, part := range split {
		if len(part) > 0 {
			p.shards[i] <- part
		}
	}
}

// close delivers what is queued and stops; later publishes are dropped.
func (p *publisher) close() {
	p.closing.Lock()
	if p.closed {
		p.closing.Unlock()
		return
	}
	p.closed = true
	for _, q := range p.shards {
		close(q)
	}
	p.closing.Unlock()
	p.wg.Wait()
}
