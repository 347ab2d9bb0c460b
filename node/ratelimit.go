package node

import (
	"math"
	"time"
)

// clockBase anchors the limiters' clock. The times the node passes come from
// time.Now and carry a monotonic reading, which Sub uses: a step of the wall
// clock (NTP, a resumed VM) neither refuses nor refills every connection.
var clockBase = time.Now()

// rateLimiter is a token bucket: rate requests a second, bursts up to burst.
// It belongs to one connection's read side and needs no lock.
//
// It counts the time until the bucket is full again rather than the tokens
// left: its zero value is a full bucket, so the first request needs no mark
// of its own, and the count is whole nanoseconds, so its arithmetic is exact
// (below 2^53 ns, 104 days) and refills do not drift. Counting fractional
// tokens did: at 0.1/s, a client asking every second got one request per 11
// seconds, as ten refills of 0.1 fell short of a token.
type rateLimiter struct {
	debt float64       // nanoseconds until the bucket is full; 0 when it is
	last time.Duration // since clockBase: when debt was last brought up to date
}

// allow takes a token if there is one. rate must be positive.
func (r *rateLimiter) allow(now time.Time, rate, burst float64) bool {
	t := now.Sub(clockBase)
	switch {
	case r.debt == 0:
		// A full bucket has nothing to refill: its clock starts here.
		r.last = t
	case t > r.last:
		r.debt = max(0, r.debt-float64(t-r.last))
		r.last = t
	}
	// A reading before last (a clock without a monotonic reading went
	// back) refills nothing until the clock passes last again: no sequence
	// of readings yields more than the burst plus rate times their span,
	// and the tokens left stay usable.

	// A token takes 1/rate to refill, rounded up to the nanosecond so that
	// the limiter never allows more than rate.
	interval := math.Ceil(float64(time.Second) / rate)
	if r.debt+interval > burst*interval {
		return false
	}
	r.debt += interval
	return true
}
