package node

import (
	"context"
	"sync"

	"github.com/kronos-sync/kronos-server/conn"
)

// readFlights makes the read-alls of one user's devices share store reads:
// many devices asking at once (after a reconnect, or a client that wants to
// hurt the node) cost at most two copies of the user's tasks in memory, not
// one each, and one encoding of the answer each.
//
// A read that has begun may have missed a change that a device saw notified
// before it asked, so a request never joins a running read: it joins the
// next one, which begins once the running one ends and serves every request
// that arrived meanwhile.
type readFlights struct {
	mu sync.Mutex // leaf
	m  map[string]*userReads
}

type userReads struct {
	running *readFlight // reading now
	next    *readFlight // waits for running to end; requests arriving now join it
}

// readFlight is one store read and its answer, encoded once.
type readFlight struct {
	done    chan struct{} // closed when the fields below are set
	serves  int           // requests it answers (under readFlights.mu)
	seq     uint64        // the Seq the snapshot was read at
	shared  *conn.Shared  // a large answer, shared by the queues that hold it
	payload []byte        // a small answer; never modified, so queues may share it
	err     error
}

func newReadFlights() *readFlights { return &readFlights{m: make(map[string]*userReads)} }

// readAll returns the answer to a read-all of userID that begins after this
// call. The wait is bounded without a context of its own: by the running
// read's timeout, then by the next read's, which starts when the running one
// ends (a request's own StoreTimeout, started when it arrived, would fail a
// joiner whose store answered in time).
func (r *readFlights) readAll(n *Node, userID string) *readFlight {
	r.mu.Lock()
	u := r.m[userID]
	if u == nil {
		u = &userReads{}
		r.m[userID] = u
	}
	switch {
	case u.running == nil:
		f := &readFlight{done: make(chan struct{}), serves: 1}
		u.running = f
		r.mu.Unlock()
		r.run(n, userID, u, f)
		return f
	case u.next == nil:
		// This request leads the next read: it waits for the running one,
		// which its own read must not overlap, then reads for all who joined.
		f := &readFlight{done: make(chan struct{}), serves: 1}
		u.next = f
		prev := u.running
		r.mu.Unlock()
		<-prev.done // bounded: the running read has a timeout of its own
		r.mu.Lock()
		u.running, u.next = f, nil
		r.mu.Unlock()
		r.run(n, userID, u, f)
		return f
	default:
		f := u.next
		f.serves++
		r.mu.Unlock()
		<-f.done
		return f
	}
}

// run reads the user's tasks and encodes the answer, with a store timeout of
// its own: a leader that waited for the read before it still has the whole
// of it.
func (r *readFlights) run(n *Node, userID string, u *userReads, f *readFlight) {
	defer close(f.done)
	defer func() {
		r.mu.Lock()
		if u.running == f && u.next == nil {
			// Nobody waits to read after this one: the user's entry goes.
			// (With a next read waiting, its leader takes over running.)
			u.running = nil
			delete(r.m, userID)
		}
		r.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), n.opts.StoreTimeout)
	defer cancel()
	snap, err := n.store.ReadAll(ctx, userID)
	if err != nil {
		f.err = err
		return
	}
	f.seq = snap.Seq
	if readAllSize(snap) >= sharedAnswerBytes {
		// One copy for all of the user's devices asking at this state,
		// counted once in the output budget.
		f.shared = n.answers.readAll(userID, snap)
		return
	}
	f.payload = encodeReadAll(snap)
}

// waiting is how many requests of userID wait for the next read, for tests.
func (r *readFlights) waiting(userID string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if u := r.m[userID]; u != nil && u.next != nil {
		return u.next.serves
	}
	return 0
}
