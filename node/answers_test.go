package node

import (
	"encoding/json"
	"runtime"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/feed"
)

// One answer per (user, seq) while held; a new seq gets its own; nothing
// stays once no one holds it.
func TestAnswersAreSharedPerUserAndSeq(t *testing.T) {
	a := newAnswers()
	snap := feed.Snapshot{Tasks: []json.RawMessage{json.RawMessage(`{"id":1}`)}, Version: json.RawMessage(`1`), Seq: 7}
	first := a.readAll("u", snap)
	if again := a.readAll("u", snap); again != first || &again.Bytes()[0] != &first.Bytes()[0] {
		t.Fatal("the same (user, seq) was encoded twice")
	}
	if string(first.Bytes()) != string(encodeReadAll(snap)) {
		t.Fatalf("answer %s", first.Bytes())
	}
	snap.Seq = 8
	if newer := a.readAll("u", snap); newer == first {
		t.Fatal("a new seq got the old answer")
	}
	runtime.KeepAlive(first)
	first = nil
	// The entry goes when a cleanup runs, after a collection.
	for deadline := time.Now().Add(10 * time.Second); a.len() > 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d entries left after the answers were collected", a.len())
		}
		runtime.GC()
		runtime.Gosched()
	}
}
