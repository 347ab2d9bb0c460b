package node

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The writers are limited when half the sampled waits for a P took 1 ms or
// more, and stay limited until the fan-out has caught up and a second has
// passed without starvation.
func TestSaturationObserve(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	var s saturation
	steps := []struct {
		share   float64
		samples uint64
		queued  int
		at      time.Duration
		want    bool
	}{
		{0.9, starvedSamples - 1, 0, 0, false},                        // too few samples to tell
		{starvedShare - 0.01, 100, 50, 500 * time.Millisecond, false}, // a backlog alone is no starvation
		{starvedShare, 100, 0, time.Second, true},                     // starved
		{0, 100, 0, 1500 * time.Millisecond, true},                    // held for a second
		{0, 100, 3, 2500 * time.Millisecond, true},                    // and while the fan-out is behind
		{0, 100, 0, 3 * time.Second, false},                           // caught up
		{0.8, 500, 0, 3500 * time.Millisecond, true},
		{0.1, 500, 0, 4 * time.Second, true},
		{0.6, 500, 0, 4500 * time.Millisecond, true}, // starved again: the hold starts over
		{0, 500, 0, 5 * time.Second, true},
		{0, 500, 0, 5500 * time.Millisecond, false},
	}
	for i, st := range steps {
		if got := s.observe(st.share, st.samples, st.queued, t0.Add(st.at)); got != st.want {
			t.Fatalf("step %d (%+v): limited %v, want %v", i, st, got, st.want)
		}
	}
}

func TestStarvedSince(t *testing.T) {
	buckets := []float64{0, 1e-6, 1e-4, 1e-3, 1e-2, 1} // lower bounds (and the last upper)
	prev := []uint64{10, 10, 10, 10, 10}
	counts := []uint64{10, 40, 30, 25, 15} // since prev: 30, 20 below 1 ms; 15, 5 at or above
	share, n := starvedSince(prev, counts, buckets)
	if n != 70 || share != 20.0/70 {
		t.Fatalf("share %v of %d, want %v of 70", share, n, 20.0/70)
	}
	if share, n := starvedSince(nil, counts, buckets); share != 0 || n != 0 {
		t.Fatalf("with no earlier reading: %v of %d, want nothing", share, n)
	}
	if share, n := starvedSince(counts, counts, buckets); share != 0 || n != 0 {
		t.Fatalf("with nothing new: %v of %d, want nothing", share, n)
	}
	// The runtime's own histogram reads without error.
	w := newSchedWaits()
	w.window()
	runtime.Gosched()
	if share, _ := w.window(); share < 0 || share > 1 {
		t.Fatalf("share %v", share)
	}
}

// No more shards than the limit write at once; raising the limit or a
// release lets a waiting shard go on.
func TestWriterLimit(t *testing.T) {
	w := newWriterLimit(2)
	var active, most atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				w.acquire()
				n := active.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				runtime.Gosched()
				active.Add(-1)
				w.release()
			}
		}()
	}
	wg.Wait()
	if m := most.Load(); m < 1 || m > 2 {
		t.Fatalf("%d wrote at once under a limit of 2", m)
	}

	w.set(1)
	w.acquire()
	got := make(chan struct{})
	go func() { w.acquire(); close(got) }()
	w.set(2) // raised: the waiter goes on without a release
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("a raised limit did not wake the waiting shard")
	}
	w.set(1)
	w.release()
	got = make(chan struct{})
	go func() { w.acquire(); close(got) }()
	w.release() // now no one holds a turn
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("a release did not wake the waiting shard")
	}
}
