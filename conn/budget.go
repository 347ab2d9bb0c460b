package conn

// Node-wide memory budgets.
//
// Each connection is bounded on its own (MaxMessageBytes for a message on
// its way in, MaxQueueBytes for its output), but their sum is not: many
// connections each holding a large half-received message, or many devices
// that do not read each holding a large answer, would take the node's
// memory. Two budgets bound the sums:
//
//   - input (InputBudgetBytes): the capacity of every connection's buffers
//     for messages not yet whole (c.in, and a fragmented WebSocket message
//     in c.ws.msg). A buffer's growth is reserved before it is allocated, so
//     the count never passes the budget.
//   - output (OutputBudgetBytes): every connection's queued output, each
//     item counted from its enqueue until it is written whole or dropped
//     (its bytes are held that long); a Shared payload is counted once
//     however many queues hold it. Checked before the enqueue.
//
// When a reservation would pass a budget, the connections holding the most
// are cut first (the oldest first among equals) until it fits; when the
// connection asking would hold the most itself, it is the one cut. A client
// is therefore cut only after every connection holding more than it: a
// small client cannot be cut by a large one. The scan that finds them runs
// only when a budget is full, and each scan cuts at least one connection.
//
// Ownership: inHeld is changed by the read side (reserve, release) and set
// to zero by whoever cuts the connection, always with the same change to the
// budget, so that the budget is the sum of inHeld. The output fields are
// changed under Conn.mu; outWeight is read without it to choose whom to cut.

import (
	"cmp"
	"errors"
	"math/bits"
	"slices"
	"sync/atomic"
)

// ErrInputBudget is sent (through Handler.OnFramingError) to an identified
// client cut because the node's budget for half-received messages is full
// and its connection held the most.
var ErrInputBudget = errors.New("server busy: too much unfinished input held on this server; connection closed, send smaller messages or retry later")

// budget is a node-wide count of bytes with an optional bound.
type budget struct {
	limit int64 // 0 or less: counted, never enforced
	used  atomic.Int64
}

// tryReserve adds n unless that would pass the limit.
func (b *budget) tryReserve(n int64) bool {
	if b.limit <= 0 {
		b.used.Add(n)
		return true
	}
	for {
		cur := b.used.Load()
		if n > b.limit-cur { // not cur+n: no overflow whatever the limit
			return false
		}
		if b.used.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

// full reports whether n more bytes would pass the limit.
func (b *budget) full(n int64) bool { return b.limit > 0 && n > b.limit-b.used.Load() }

// connBudget is a connection's share of the budgets.
type connBudget struct {
	inHeld atomic.Int64 // bytes counted in the input budget
	cut    atomic.Bool  // cut for the input budget: the read side drops its input

	outWeight  atomic.Int64 // full size of the queued items (outBytes+outOff, and their slots): whom to cut
	outShared  int          // under mu: bytes of Shared payloads queued here (counted once, not here)
	outCounted int64        // under mu: bytes this connection counts in the output budget
}

func (s *Server) initBudgets() {
	s.inBudget.limit = int64(s.opts.InputBudgetBytes)
	s.outBudget.limit = int64(s.opts.OutputBudgetBytes)
	s.metrics.watchBudgets(s.opts.Registerer, &s.inBudget, &s.outBudget)
}

// InputBuffered is the node's input held for messages not yet whole, the
// sum the input budget bounds (kronos_input_buffered_bytes).
func (s *Server) InputBuffered() int64 { return s.inBudget.used.Load() }

// OutputQueued is the node's queued output, the sum the output budget
// bounds (kronos_output_queued_bytes).
func (s *Server) OutputQueued() int64 { return s.outBudget.used.Load() }

// --- Input ---------------------------------------------------------------

// inShrinkAbove: a buffer this large that grew for a large message is not
// kept for a small tail.
const inShrinkAbove = 64 << 10

// inPow2Above: input buffers past this size are powers of two.
const inPow2Above = 64 << 10

// inCeiling caps the doubling of an input buffer: no message needs more
// than the largest message and a read on either side of it (a need past
// that still gets what it needs; saturating, so a huge MaxMessageBytes
// cannot overflow).
func (s *Server) inCeiling() int {
	const slack = 2 * readBufferSize
	if m := s.opts.MaxMessageBytes; m < maxInt-slack {
		return m + slack
	}
	return maxInt
}

const maxInt = int(^uint(0) >> 1)

// appendIn appends src to dst, an input buffer of c's read side counted in
// the input budget, growing it when full; the growth is reserved first. If
// the reservation cuts c instead, dst is returned as it was and c.discardIn
// is set: the caller drops its input. Only the read side calls it.
func (c *Conn) appendIn(dst, src []byte) []byte {
	need := len(dst) + len(src) // both bounded by MaxMessageBytes and a read
	if need > cap(dst) {
		// Doubling (twice the first piece for a new buffer) keeps the
		// copies linear in the message's size. Past inPow2Above, powers of
		// two: a large message's buffer does not depend on how the network
		// cut it into reads.
		grow := 2 * cap(dst)
		if cap(dst) == 0 {
			grow = 2 * len(src)
		}
		if need > inPow2Above {
			grow = 1 << bits.Len(uint(need-1))
		}
		newCap := max(need, min(grow, c.srv.inCeiling()), 512)
		if !c.reserveIn(int64(newCap - cap(dst))) {
			return dst
		}
		grown := make([]byte, len(dst), newCap)
		copy(grown, dst)
		dst = grown
	}
	return append(dst, src...)
}

// shrinkIn moves a small tail out of a large buffer. Only the read side
// calls it, and syncIn then gives the difference back.
func (c *Conn) shrinkIn() {
	if cap(c.in) > inShrinkAbove && len(c.in) < cap(c.in)/4 {
		c.in = append(make([]byte, 0, max(2*len(c.in), 512)), c.in...)
	}
}

// reserveIn counts n more bytes of input buffer for c before they are
// allocated, cutting the connections that hold the most if the budget is
// full. It reports false when c itself was cut (it would hold the most, or
// another connection cut it meanwhile): c.discardIn is then set.
func (c *Conn) reserveIn(n int64) bool {
	s := c.srv
	for !c.bud.cut.Load() {
		if s.inBudget.tryReserve(n) {
			c.bud.inHeld.Add(n)
			if !c.bud.cut.Load() {
				return true
			}
			break // cut while reserving: syncIn gives it back
		}
		if !s.cutLargest(&s.inBudget, inputWeight, s.cutInput, c, c.bud.inHeld.Load()+n, n) {
			s.cutInput(c)
			break
		}
	}
	c.discardIn = true
	return false
}

// syncIn gives back what c counts beyond its input buffers' capacity. Only
// the read side calls it, after its buffers shrank or were dropped. Growth
// is reserved before it happens, so the count is never below the capacity
// unless c was cut (its count zeroed) and has not dropped its buffers yet.
func (c *Conn) syncIn() {
	actual := int64(cap(c.in) + c.wsMsgCap())
	for {
		held := c.bud.inHeld.Load()
		if held <= actual {
			return
		}
		if c.bud.inHeld.CompareAndSwap(held, actual) {
			c.srv.inBudget.used.Add(actual - held)
			return
		}
	}
}

// cutInput closes v, which holds the most unfinished input, and takes its
// buffers out of the budget at once: its read side drops them when it next
// runs, which the abort makes it do. An identified client is told why
// first. Any goroutine may call it, with no lock held.
func (s *Server) cutInput(v *Conn) {
	first := !v.bud.cut.Swap(true)
	s.inBudget.used.Add(-v.bud.inHeld.Swap(0))
	if !first {
		return
	}
	s.metrics.budgetCuts.WithLabelValues("input").Inc()
	if v.identified.Load() && !v.Closing() {
		s.handler.OnFramingError(v, ErrInputBudget)
	}
	v.Abort(ReasonMemoryBudget)
}

func inputWeight(c *Conn) int64 { return c.bud.inHeld.Load() }

// --- Output --------------------------------------------------------------

// Shared is a payload sent to several connections, such as a user's
// read-all answer asked by several of its devices: its bytes are held once,
// and counted once in the output budget however many queues hold them. Its
// bytes must not be modified once made.
type Shared struct {
	data   []byte
	queued atomic.Int64 // queues holding it
}

// NewShared makes a Shared payload of p, which the caller gives up.
func NewShared(p []byte) *Shared { return &Shared{data: p} }

// Bytes is the payload; it must not be modified.
func (sh *Shared) Bytes() []byte { return sh.data }

// SendShared is Send for a payload shared between connections.
func (c *Conn) SendShared(sh *Shared) bool {
	it := c.framed(sh.data)
	it.shared = sh
	if c.Closing() {
		return false
	}
	return c.emit(&it) // TLS encrypts per connection: nothing is shared then
}

// roomForOut makes room in the output budget for it, cutting the
// connections with the largest queues first. It reports false when c's own
// queue would be the largest: c is then cut. No lock may be held (cutting
// takes other connections' mu).
func (c *Conn) roomForOut(it *outItem) bool {
	s := c.srv
	cost := int64(it.size() + queuedItemCost)
	if sh := it.shared; sh != nil && sh.queued.Load() > 0 {
		cost -= int64(len(sh.data)) // already counted
	}
	for s.outBudget.full(cost) {
		if !s.cutLargest(&s.outBudget, outputWeight, s.cutOutput, c, c.bud.outWeight.Load()+int64(it.size()+queuedItemCost), cost) {
			s.cutOutput(c)
			return false
		}
	}
	return true
}

// cutOutput aborts v, whose queue is the largest: the queue is dropped at
// once. No message is added first: one half written cannot be followed by
// another.
func (s *Server) cutOutput(v *Conn) {
	if v.markClosing(ReasonMemoryBudget) {
		s.metrics.budgetCuts.WithLabelValues("output").Inc()
	}
	v.Abort(ReasonMemoryBudget)
}

func outputWeight(c *Conn) int64 { return c.bud.outWeight.Load() }

// holdOut counts an item entering c's queue. c.mu must be held.
func (c *Conn) holdOut(it *outItem) {
	if sh := it.shared; sh != nil {
		c.bud.outShared += len(sh.data)
		if sh.queued.Add(1) == 1 {
			c.srv.outBudget.used.Add(int64(len(sh.data)))
		}
	}
}

// letGoOut uncounts an item leaving c's queue. c.mu must be held.
func (c *Conn) letGoOut(it *outItem) {
	if sh := it.shared; sh != nil {
		c.bud.outShared -= len(sh.data)
		if sh.queued.Add(-1) == 0 {
			c.srv.outBudget.used.Add(-int64(len(sh.data)))
		}
	}
}

// dropOutLocked drops c's queued output. c.mu must be held.
func (c *Conn) dropOutLocked() {
	for i := range c.out {
		c.letGoOut(&c.out[i])
	}
	c.out, c.outOff, c.outBytes = nil, 0, 0
	c.publishOut()
}

// publishOut brings c's share of the output budget up to date after its
// queue changed. Nothing is written when nothing changed: a message the
// socket takes at once costs no shared write. c.mu must be held.
func (c *Conn) publishOut() {
	held := int64(c.outBytes + c.outOff + len(c.out)*queuedItemCost)
	if c.bud.outWeight.Load() != held {
		c.bud.outWeight.Store(held)
	}
	counted := held - int64(c.bud.outShared)
	if d := counted - c.bud.outCounted; d != 0 {
		c.srv.outBudget.used.Add(d)
		c.bud.outCounted = counted
	}
}

// --- Choosing whom to cut ------------------------------------------------

type holding struct {
	c     *Conn
	bytes int64
}

// cutLargest cuts the connections holding the most of b (by weight),
// largest first, the oldest first among equals, until need fits. grower is
// the connection asking, ranked with growerBytes. It reports false, having
// cut nothing more, when grower's turn comes: grower holds the most.
func (s *Server) cutLargest(b *budget, weight func(*Conn) int64, cut func(*Conn), grower *Conn, growerBytes, need int64) bool {
	list := []holding{{grower, growerBytes}}
	s.mu.RLock()
	for _, c := range s.conns {
		if w := weight(c); w > 0 && c != grower {
			list = append(list, holding{c, w})
		}
	}
	s.mu.RUnlock()
	slices.SortFunc(list, func(x, y holding) int {
		if c := cmp.Compare(y.bytes, x.bytes); c != 0 {
			return c
		}
		if c := cmp.Compare(x.c.created, y.c.created); c != 0 {
			return c
		}
		return cmp.Compare(x.c.id, y.c.id)
	})
	for _, h := range list {
		if !b.full(need) {
			return true
		}
		if h.c == grower {
			return false
		}
		cut(h.c)
	}
	return true
}
