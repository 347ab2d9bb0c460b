package node

import "time"

// rateLimiter is a token bucket: rate requests a second, bursts up to burst.
// It belongs to one connection's read side and needs no lock.
type rateLimiter struct {
	tokens float64
	last   time.Time
}

func (r *rateLimiter) allow(now time.Time, rate, burst float64) bool {
	if r.last.IsZero() {
		r.tokens = burst
	} else {
		r.tokens = min(burst, r.tokens+now.Sub(r.last).Seconds()*rate)
	}
	r.last = now
	if r.tokens < 1 {
		return false
	}
	r.tokens--
	return true
}
