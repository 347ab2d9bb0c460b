package conn

// Batch collects sends to write later, each connection's at once: when a
// fan-out goroutine has fallen behind, several notifications often wait for
// the same connection, and one writev for all of them costs one syscall
// instead of one each (the syscall, with the loopback or network stack
// under it, is most of a notification's cost). Only one goroutine uses a
// Batch; Flush must follow, soon: until then the connection's queue holds
// the messages unwritten.
type Batch struct {
	conns []*Conn
}

// batchFlushAt is how much a Batch lets wait for one connection before it
// writes: several notifications, a writev's worth, never enough to count
// against the connection's queue limit.
const batchFlushAt = 64 << 10

// SendBatched is Send, except that the message is only queued: b.Flush
// writes it. A TLS connection writes at once (its records are made on the
// way into the queue).
func (c *Conn) SendBatched(payload []byte, b *Batch) bool {
	if c.tls.Load() != nil {
		return c.Send(payload)
	}
	it := c.framed(payload)
	if c.Closing() || !c.roomForOut(&it) {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state >= stateWriteShut {
		return false
	}
	size := it.size()
	if c.inBatch && c.queuedCostLocked()+size > min(batchFlushAt, c.srv.opts.MaxQueueBytes/2) {
		// Enough waits to fill a writev: write it now, so that only what
		// the socket does not take counts against MaxQueueBytes, as with
		// Send.
		c.flushLocked()
	}
	if c.overflowsLocked(size) {
		return false
	}
	c.out = append(c.out, it)
	c.outBytes += size
	c.holdOut(&it)
	c.publishOut()
	if !c.inBatch {
		c.inBatch = true
		b.conns = append(b.conns, c)
	}
	return true
}

// Flush writes what the batch queued, each connection's in one writev
// (more if the socket is full: then as after any short write, the rest
// goes when the socket drains).
func (b *Batch) Flush() {
	for i, c := range b.conns {
		c.mu.Lock()
		c.inBatch = false
		if len(c.out) > 0 {
			c.flushLocked()
			c.publishOut()
		}
		c.mu.Unlock()
		b.conns[i] = nil
	}
	b.conns = b.conns[:0]
}
