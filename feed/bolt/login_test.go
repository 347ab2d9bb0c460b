package bolt

import (
	"context"
	"errors"
	"path/filepath"
	"runtime"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/kronos-sync/kronos-server/feed"
)

// A login whose caller gives up while the committer is busy returns the
// caller's error and no session; the committer still runs it later, and
// what it writes is not read by the caller that left. Under -race, the
// old Login (which returned the session as the committer wrote it) failed
// here in a few runs of twenty.
func TestLoginGivenUpLeavesItsSessionToTheCommitter(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "kronos.db"), feed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	started, release := make(chan struct{}), make(chan struct{})
	hold := &op{name: "hold", done: make(chan struct{}), run: func(*bbolt.Tx) ([]feed.Change, error) {
		close(started)
		<-release
		return nil, nil
	}}
	if err := s.enqueue(t.Context(), hold); err != nil {
		t.Fatal(err)
	}
	<-started

	ctx, cancel := context.WithCancel(t.Context())
	type result struct {
		sess feed.Session
		err  error
	}
	done := make(chan result, 1)
	go func() {
		sess, err := s.Login(ctx, "", "")
		done <- result{sess, err}
	}()
	for len(s.ops) == 0 { // the login is queued behind hold
		runtime.Gosched()
	}
	cancel()
	close(release) // the committer runs the login while Login returns
	r := <-done
	if !errors.Is(r.err, context.Canceled) || r.sess.UserID != "" {
		t.Fatalf("a login given up returned %+v, %v", r.sess, r.err)
	}
	// The committer takes ops in order: once this one is done, so is the login.
	if err := s.submit(t.Context(), &op{name: "after", run: func(*bbolt.Tx) ([]feed.Change, error) { return nil, nil }}); err != nil {
		t.Fatal(err)
	}
}
