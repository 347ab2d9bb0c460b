package node

import (
	"runtime"
	"sync"
	"weak"

	"github.com/kronos-sync/kronos-server/conn"
	"github.com/kronos-sync/kronos-server/feed"
)

// sharedAnswerBytes: read-all answers from this size on are encoded once per
// (user, seq, version) and shared by the user's connections that ask there.
// Smaller ones cost less to encode again than to look up.
const sharedAnswerBytes = 16 << 10

// answers holds the large read-all answers that some connection's queue
// still holds, by user: the devices of one user that ask at the same seq
// (several slow devices after a reconnect, say) share one copy instead of
// holding one each. It holds them only weakly: an answer no queue holds is
// collected, and its entry removed then.
type answers struct {
	mu sync.Mutex // leaf
	m  map[string]answerEntry
}

// answerEntry: a write-all that changes only the version takes no Seq, so
// the version tells such states apart.
type answerEntry struct {
	seq     uint64
	version string
	p       weak.Pointer[conn.Shared]
}

func (e answerEntry) is(snap *feed.Snapshot) bool {
	return e.seq == snap.Seq && e.version == string(snap.Version)
}

func newAnswers() *answers { return &answers{m: make(map[string]answerEntry)} }

// readAll returns the answer for snap, shared with the user's other
// connections that asked at the same state while a queue still holds it.
func (a *answers) readAll(userID string, snap feed.Snapshot) *conn.Shared {
	if sh := a.get(userID, &snap); sh != nil {
		return sh
	}
	sh := conn.NewShared(encodeReadAll(snap)) // outside the lock: it may be large
	wp := weak.Make(sh)
	a.mu.Lock()
	e, ok := a.m[userID]
	if ok && e.is(&snap) {
		if other := e.p.Value(); other != nil { // made meanwhile: use that one
			a.mu.Unlock()
			return other
		}
	}
	if !ok || e.seq <= snap.Seq || e.p.Value() == nil {
		a.m[userID] = answerEntry{snap.Seq, string(snap.Version), wp}
	}
	a.mu.Unlock()
	runtime.AddCleanup(sh, a.forget, answerKey{userID, wp})
	return sh
}

func (a *answers) get(userID string, snap *feed.Snapshot) *conn.Shared {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e, ok := a.m[userID]; ok && e.is(snap) {
		return e.p.Value()
	}
	return nil
}

type answerKey struct {
	userID string
	p      weak.Pointer[conn.Shared]
}

// forget runs once an answer is collected: its entry goes, unless a newer
// answer replaced it.
func (a *answers) forget(k answerKey) {
	a.mu.Lock()
	if e, ok := a.m[k.userID]; ok && e.p == k.p {
		delete(a.m, k.userID)
	}
	a.mu.Unlock()
}

// len is the number of users with an entry, for tests.
func (a *answers) len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.m)
}
