package storetest

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/feed"
)

// Recorder is a feed.Sink that keeps every change, by user, for tests.
type Recorder struct {
	mu     sync.Mutex
	byUser map[string][]feed.Change
	signal chan struct{} // closed and replaced on every batch
}

// NewRecorder makes an empty Recorder.
func NewRecorder() *Recorder {
	return &Recorder{byUser: map[string][]feed.Change{}, signal: make(chan struct{})}
}

// Sink records a batch; pass it to Store.Subscribe.
func (r *Recorder) Sink(changes []feed.Change) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range changes {
		c.Task, c.Version = bytes.Clone(c.Task), bytes.Clone(c.Version)
		r.byUser[c.UserID] = append(r.byUser[c.UserID], c)
	}
	close(r.signal)
	r.signal = make(chan struct{})
}

// Changes returns the user's changes so far, in delivery order.
func (r *Recorder) Changes(user string) []feed.Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]feed.Change(nil), r.byUser[user]...)
}

// WaitChange waits for the next batch or for d.
func (r *Recorder) WaitChange(d time.Duration) {
	r.mu.Lock()
	ch := r.signal
	r.mu.Unlock()
	select {
	case <-ch:
	case <-time.After(d):
	}
}

// Wait waits until the user has at least n changes and returns them all.
func (r *Recorder) Wait(t testing.TB, user string, n int) []feed.Change {
	t.Helper()
	deadline := time.Now().Add(feedTimeout)
	for {
		r.mu.Lock()
		got, ch := r.byUser[user], r.signal
		r.mu.Unlock()
		if len(got) >= n {
			return append([]feed.Change(nil), got...)
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			t.Fatalf("feed: %d changes for the user, want %d", len(got), n)
		}
		select {
		case <-ch:
		case <-time.After(wait):
		}
	}
}
