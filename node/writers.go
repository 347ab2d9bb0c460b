package node

import (
	rtmetrics "runtime/metrics"
	"sync"
	"time"
)

// The fan-out's shards write in parallel while the node has CPU to spare:
// a commit's notifications go out on several threads. Once the node is
// short of CPU, that starves its read workers: the writes wait unread in
// the sockets, where nothing merges them. The node then lets only half the
// shards write at once. The others wait for a turn, their queues grow, and
// their next rounds merge each connection's notifications into one writev
// (docs/benchmarks.md, "Fewer fan-out shards than Ps").

// writerLimit bounds how many fan-out shards write at once. A shard takes
// a turn for each round and gives it back after the round's flush. Each
// user stays in its shard, so its changes keep their order.
type writerLimit struct {
	mu     sync.Mutex
	cond   sync.Cond
	limit  int
	active int
}

func newWriterLimit(n int) *writerLimit {
	w := &writerLimit{limit: n}
	w.cond.L = &w.mu
	return w
}

func (w *writerLimit) acquire() {
	w.mu.Lock()
	for w.active >= w.limit {
		w.cond.Wait()
	}
	w.active++
	w.mu.Unlock()
}

func (w *writerLimit) release() {
	w.mu.Lock()
	w.active--
	w.mu.Unlock()
	w.cond.Signal()
}

func (w *writerLimit) set(n int) {
	w.mu.Lock()
	raised := n > w.limit
	w.limit = n
	w.mu.Unlock()
	if raised {
		w.cond.Broadcast()
	}
}

func (w *writerLimit) current() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.limit
}

const (
	// saturationWindow is how often the scheduler's latencies are read.
	saturationWindow = 500 * time.Millisecond
	// starvedWait: a goroutine that waited this long for a P was starved.
	starvedWait = time.Millisecond
	// starvedShare of the waits sampled in a window mean the node is
	// saturated. Measured at 10,000 writes/s on two CPUs, the reads
	// starved: 60–80 % of the waits were longer than 1 ms; below
	// saturation (4,500 writes/s) 8 %.
	starvedShare = 0.5
	// starvedSamples: fewer samples in a window say nothing.
	starvedSamples = 20
	// saturationHold: the limit stays at least this long after the last
	// starved window, and until the fan-out's queues are empty.
	saturationHold = time.Second
)

// saturation decides from each window's figures whether the fan-out's
// writers are limited.
type saturation struct {
	limited     bool
	lastStarved time.Time
}

// observe takes a window's share of starved waits (of samples), the
// batches queued in the fan-out, and the time; it reports whether the
// writers are limited now.
func (s *saturation) observe(share float64, samples uint64, queued int, now time.Time) bool {
	switch {
	case samples >= starvedSamples && share >= starvedShare:
		s.limited, s.lastStarved = true, now
	case s.limited && queued == 0 && now.Sub(s.lastStarved) >= saturationHold:
		s.limited = false
	}
	return s.limited
}

// schedWaits reads the runtime's sampled /sched/latencies histogram.
type schedWaits struct {
	sample []rtmetrics.Sample
	prev   []uint64
}

func newSchedWaits() *schedWaits {
	return &schedWaits{sample: []rtmetrics.Sample{{Name: "/sched/latencies:seconds"}}}
}

// window returns the share of the waits sampled since the last call that
// lasted starvedWait or more, and how many were sampled.
func (s *schedWaits) window() (float64, uint64) {
	rtmetrics.Read(s.sample)
	if s.sample[0].Value.Kind() != rtmetrics.KindFloat64Histogram {
		return 0, 0
	}
	h := s.sample[0].Value.Float64Histogram()
	share, n := starvedSince(s.prev, h.Counts, h.Buckets)
	s.prev = append(s.prev[:0], h.Counts...)
	return share, n
}

// starvedSince is the share of waits of starvedWait or more between two
// readings of a cumulative histogram (buckets[i] is bucket i's lower
// bound), and their number. With no earlier reading it counts nothing.
func starvedSince(prev, counts []uint64, buckets []float64) (float64, uint64) {
	if len(prev) != len(counts) {
		return 0, 0
	}
	var slow, all uint64
	for i, c := range counts {
		d := c - prev[i]
		all += d
		if buckets[i] >= starvedWait.Seconds() {
			slow += d
		}
	}
	if all == 0 {
		return 0, 0
	}
	return float64(slow) / float64(all), all
}
