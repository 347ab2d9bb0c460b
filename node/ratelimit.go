package node

import "time"

// rateLimiter is a token bucket: rate requests a second, bursts up to burst.
// It belongs to one connection's read side and needs no lock.
type rateLimiter struct {
	tokens float64
	last   int64 // unix nanos of the last request; 0 before the first
}

func (r *rateLimiter) allow(now time.Time, rate, burst float64) bool {
	t := now.UnixNano()
	if r.last == 0 {
		r.tokens = burst
	} else {
		r.tokens = min(burst, r.tokens+float64(t-r.last)/1e9*rate)
	}
	r.last = t
	if r.tokens < 1 {
		return false
	}
	r.tokens--
	return true
}
