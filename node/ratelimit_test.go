package node

import (
	"fmt"
	"math"
	"testing"
	"time"
)

// t0 is an arbitrary fake instant. It has no monotonic reading, so the
// limiter compares wall times, as it does for any injected clock.
var t0 = time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC)

// step is one request to a limiter: at t0+at, n requests in a row, of which
// the first allowed are allowed and the rest refused.
type step struct {
	at      time.Duration
	n       int
	allowed int
}

var rateCases = []struct {
	name        string
	rate, burst float64
	start       time.Time // t0 when zero
	steps       []step
}{
	{
		name: "first request gets the full burst", rate: 1, burst: 5,
		steps: []step{{0, 6, 5}},
	},
	{
		// The zero limiter holds no time: a clock far before or after the
		// process's start gives the same first burst.
		name: "first burst before the process started", rate: 1, burst: 3,
		start: time.Unix(0, 0), steps: []step{{0, 4, 3}, {time.Second, 2, 1}},
	},
	{
		name: "first burst far in the future", rate: 1, burst: 3,
		start: time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC), steps: []step{{0, 4, 3}, {time.Second, 2, 1}},
	},
	{
		name: "refill: half a second at 2/s is one token", rate: 2, burst: 3,
		steps: []step{
			{0, 3, 3},
			{499 * time.Millisecond, 1, 0},
			{500 * time.Millisecond, 2, 1},
			{1500 * time.Millisecond, 3, 2},
		},
	},
	{
		// 1/3 s is not a whole number of nanoseconds: a token is due only
		// once the full third has passed.
		name: "refill: thirds at 3/s", rate: 3, burst: 1,
		steps: []step{
			{0, 1, 1},
			{333333333, 1, 0},
			{333333334, 1, 1},
			{666666667, 1, 0},
			{666666668, 1, 1},
		},
	},
	{
		name: "refill: fractional rate", rate: 0.5, burst: 1,
		steps: []step{{0, 1, 1}, {1999 * time.Millisecond, 1, 0}, {2 * time.Second, 1, 1}},
	},
	{
		// Refused requests cost nothing.
		name: "refusals spend no tokens", rate: 1, burst: 2,
		steps: []step{{0, 100, 2}, {time.Second, 100, 1}, {2 * time.Second, 1, 1}},
	},
	{
		name: "an idle hour refills the burst, not more", rate: 100, burst: 200,
		steps: []step{{0, 200, 200}, {time.Hour, 201, 200}},
	},
	{
		name: "a partly spent bucket refills to the burst only", rate: 10, burst: 5,
		steps: []step{{0, 2, 2}, {time.Minute, 6, 5}},
	},
	{
		name: "burst below one allows nothing", rate: 10, burst: 0.5,
		steps: []step{{0, 1, 0}, {time.Hour, 1, 0}},
	},
	{
		// The clock goes back after the bucket is spent: nothing refills
		// until the clock passes the last reading again.
		name: "clock back after spending mints nothing", rate: 1, burst: 2,
		steps: []step{
			{10 * time.Second, 2, 2},
			{0, 1, 0},
			{5 * time.Second, 1, 0},
			{10 * time.Second, 1, 0},
			{11 * time.Second, 2, 1},
		},
	},
	{
		// The tokens left before the clock went back are still there, and
		// the time the clock spent behind does not refill anything.
		name: "clock back keeps the tokens left", rate: 1, burst: 5,
		steps: []step{
			{10 * time.Second, 2, 2},
			{-time.Hour, 4, 3},
			{-time.Hour + 30*time.Minute, 1, 0},
			{10 * time.Second, 1, 0},
			{12 * time.Second, 3, 2},
		},
	},
	{
		name: "clock back and forth repeatedly", rate: 1, burst: 1,
		steps: []step{
			{100 * time.Second, 1, 1},
			{0, 1, 0}, {100 * time.Second, 1, 0},
			{50 * time.Second, 1, 0}, {100 * time.Second, 1, 0},
			{101 * time.Second, 1, 1},
		},
	},
}

func TestRateLimiter(t *testing.T) {
	for _, tc := range rateCases {
		t.Run(tc.name, func(t *testing.T) {
			start := tc.start
			if start.IsZero() {
				start = t0
			}
			var r rateLimiter
			for i, s := range tc.steps {
				got := 0
				for j := range s.n {
					ok := r.allow(start.Add(s.at), tc.rate, tc.burst)
					if ok && j != got {
						t.Fatalf("step %d (at %v): request %d allowed after a refusal", i, s.at, j)
					}
					if ok {
						got++
					}
				}
				if got != s.allowed {
					t.Fatalf("step %d (at %v): %d of %d allowed, want %d", i, s.at, got, s.n, s.allowed)
				}
			}
		})
	}
}

// Over a long fake interval, a client asking faster than the rate gets the
// burst plus one request per token interval (1/rate, rounded up to the
// nanosecond) that passed by its last request: exactly, as the limiter's
// arithmetic is in whole nanoseconds and does not drift.
func TestRateLimiterSustained(t *testing.T) {
	for _, tc := range []struct {
		rate  float64
		burst int
		every time.Duration // at most the token interval
		span  time.Duration
	}{
		{rate: 100, burst: 200, every: time.Millisecond, span: time.Hour},
		{rate: 100, burst: 200, every: 7 * time.Millisecond, span: time.Hour},
		{rate: 3, burst: 10, every: 100 * time.Millisecond, span: 24 * time.Hour},
		{rate: 0.1, burst: 1, every: time.Second, span: 24 * time.Hour},
		{rate: 1e6, burst: 1000, every: 100 * time.Nanosecond, span: 100 * time.Millisecond},
	} {
		t.Run(fmt.Sprintf("%g/s burst %d every %v", tc.rate, tc.burst, tc.every), func(t *testing.T) {
			var r rateLimiter
			allowed := 0
			var at time.Duration
			for ; at <= tc.span; at += tc.every {
				if r.allow(t0.Add(at), tc.rate, float64(tc.burst)) {
					allowed++
				}
			}
			lastAt := at - tc.every
			interval := time.Duration(math.Ceil(float64(time.Second) / tc.rate))
			want := tc.burst + int(lastAt/interval)
			if allowed != want {
				t.Fatalf("%d allowed over %v, want %d", allowed, tc.span, want)
			}
		})
	}
}

func BenchmarkRateLimiter(b *testing.B) {
	b.ReportAllocs()
	var r rateLimiter
	now := t0
	for b.Loop() {
		now = now.Add(time.Millisecond)
		r.allow(now, 100, 200)
	}
}
