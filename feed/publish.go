package feed

import "sync"

// publisher hands committed changes to the Sink from one goroutine, in the
// order they were published. A backend's committer waits only while the
// bounded queue is full, never on fan-out itself.
type publisher struct {
	queue chan []Change
	mu    sync.Mutex
	sink  Sink
	done  chan struct{}
}

func newPublisher() *publisher {
	p := &publisher{queue: make(chan []Change, 1024), done: make(chan struct{})}
	go p.run()
	return p
}

func (p *publisher) subscribe(s Sink) {
	p.mu.Lock()
	p.sink = s
	p.mu.Unlock()
}

func (p *publisher) run() {
	defer close(p.done)
	for changes := range p.queue {
		p.mu.Lock()
		sink := p.sink
		p.mu.Unlock()
		if sink != nil {
			sink(changes)
		}
	}
}

// publish queues a batch; the caller must not modify it afterwards.
func (p *publisher) publish(changes []Change) {
	if len(changes) > 0 {
		p.queue <- changes
	}
}

// close delivers what is queued and stops. No publish may follow.
func (p *publisher) close() {
	close(p.queue)
	<-p.done
}
