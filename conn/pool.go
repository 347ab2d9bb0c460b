package conn

import "sync"

// readBufferSize is the buffer a worker reads into. A worker takes one for
// each read turn and gives it back after, so neither idle connections nor
// idle workers hold one.
const readBufferSize = 16 << 10

var readBuffers = sync.Pool{New: func() any { b := make([]byte, readBufferSize); return &b }}

// pool is a fixed set of workers that run connections' read turns. Its queue
// is bounded: when it is full the poller waits, which stops reading from the
// network instead of growing memory.
type pool struct {
	queue chan *Conn
	quit  chan struct{}
	wg    sync.WaitGroup
}

func newPool(workers, queueLen int) *pool {
	p := &pool{queue: make(chan *Conn, queueLen), quit: make(chan struct{})}
	p.wg.Add(workers)
	for range workers {
		go p.work()
	}
	return p
}

func (p *pool) work() {
	defer p.wg.Done()
	for {
		select {
		case <-p.quit:
			return
		case c := <-p.queue:
			buf := readBuffers.Get().(*[]byte)
			c.readTurn(*buf, p)
			readBuffers.Put(buf)
		}
	}
}

// submit blocks while the queue is full. Only the poller calls it, and
// workers never wait for the poller, so this cannot deadlock.
func (p *pool) submit(c *Conn) {
	select {
	case p.queue <- c:
	case <-p.quit:
	}
}

// trySubmit queues c unless the queue is full.
func (p *pool) trySubmit(c *Conn) bool {
	select {
	case p.queue <- c:
		return true
	default:
		return false
	}
}

// stop waits for the workers to finish their current turns. What is still
// queued is dropped: the server closes those connections itself.
func (p *pool) stop() {
	close(p.quit)
	p.wg.Wait()
}
