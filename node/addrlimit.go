package node

import (
	"net/netip"
	"sync"
	"time"
)

// addrLimiter is a token bucket per client address, for what a stranger
// could otherwise do without bound (creating users). Buckets that are full
// again are forgotten, so memory follows the addresses active in the last
// refill period.
type addrLimiter struct {
	rate, burst float64 // tokens per second, bucket size; rate <= 0: no limit
	mu          sync.Mutex
	buckets     map[netip.Addr]*rateLimiter
	lastSweep   time.Time
}

func newAddrLimiter(rate, burst float64) *addrLimiter {
	return &addrLimiter{rate: rate, burst: burst, buckets: map[netip.Addr]*rateLimiter{}}
}

func (l *addrLimiter) allow(addr netip.Addr, now time.Time) bool {
	if l.rate <= 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.lastSweep) > time.Minute {
		l.sweep(now)
	}
	b := l.buckets[addr]
	if b == nil {
		b = &rateLimiter{}
		l.buckets[addr] = b
	}
	return b.allow(now, l.rate, l.burst)
}

// sweep forgets the buckets that have refilled: a new one is the same.
// l.mu must be held.
func (l *addrLimiter) sweep(now time.Time) {
	t := now.Sub(clockBase)
	for addr, b := range l.buckets {
		if float64(t-b.last) >= b.debt {
			delete(l.buckets, addr)
		}
	}
	l.lastSweep = now
}
