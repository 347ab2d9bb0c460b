package rethinkdb_test

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/rethinkdb"
	"github.com/kronos-sync/kronos-server/feed/storetest"
	"github.com/kronos-sync/kronos-server/internal/rethinktest"
)

// These tests run on a real RethinkDB (KRONOS_TEST_RETHINKDB; .ci/run starts
// one). Without it they are skipped, saying how to run them.

func open(t *testing.T, url string, opts feed.Options) *rethinkdb.Store {
	t.Helper()
	s, err := rethinkdb.Open(context.Background(), url, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	url := rethinktest.URL(t) // one database: every test makes users of its own
	storetest.Run(t, func(t *testing.T, opts feed.Options) feed.Backend {
		s, err := rethinkdb.Open(context.Background(), url, opts)
		if err != nil {
			t.Fatal(err)
		}
		return feed.Backend{Store: s, Feed: s}
	})
}

func watch(t *testing.T, s *rethinkdb.Store, sess feed.Session) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Watch(ctx, sess.UserID, sess.Seq); err != nil {
		t.Fatal(err)
	}
}

// Two nodes write for one user at once: every write commits once, both
// nodes' feeds deliver the same changes in the same order with no gap and
// no double, and replaying them gives exactly what read-all returns on
// either node.
func TestTwoNodesOneOrder(t *testing.T) {
	url := rethinktest.URL(t)
	a, b := open(t, url, feed.Options{}), open(t, url, feed.Options{})
	recA, recB := storetest.NewRecorder(), storetest.NewRecorder()
	a.Subscribe(recA.Sink)
	b.Subscribe(recB.Sink)
	ctx := context.Background()
	sess, err := a.Login(ctx, "", "")
	if err != nil {
		t.Fatal(err)
	}
	watch(t, a, sess)
	watch(t, b, sess)

	const writers, perWriter, ids = 3, 25, 4
	var wg sync.WaitGroup
	for n, node := range []*rethinkdb.Store{a, b} {
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(n), uint64(w)))
				for i := range perWriter {
					id := rng.Int64N(ids)
					v := []byte(fmt.Sprintf(`"n%d-w%d-%d"`, n, w, i))
					var wr *feed.Write
					switch rng.IntN(3) {
					case 0:
						wr = &feed.Write{Kind: feed.WriteCreate, UserID: sess.UserID, Version: v,
							Task: []byte(fmt.Sprintf(`{"id":%d,"by":%s}`, id, v))}
					case 1:
						wr = &feed.Write{Kind: feed.WriteDelete, UserID: sess.UserID, Version: v, TaskID: id}
					default:
						task, _ := feed.ParseTask([]byte(fmt.Sprintf(`{"id":%d,"all":%s}`, id, v)), 1<<20)
						wr = &feed.Write{Kind: feed.WriteAll, UserID: sess.UserID, Version: v, Tasks: []feed.Task{task}}
					}
					if err := node.Write(ctx, wr); err != nil && !feed.IsRefusal(err) {
						t.Errorf("write: %v", err)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	snap, err := a.ReadAll(ctx, sess.UserID)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Seq == 0 {
		t.Fatal("no write changed anything")
	}
	gotA := recA.Wait(t, sess.UserID, int(snap.Seq))
	gotB := recB.Wait(t, sess.UserID, int(snap.Seq))
	if len(gotA) != int(snap.Seq) || len(gotB) != int(snap.Seq) {
		t.Fatalf("delivered %d and %d changes, want %d", len(gotA), len(gotB), snap.Seq)
	}
	state := map[int64]string{}
	for i := range gotA {
		ca, cb := gotA[i], gotB[i]
		if ca.Seq != uint64(i+1) || cb.Seq != ca.Seq || ca.Kind != cb.Kind || ca.TaskID != cb.TaskID ||
			string(ca.Task) != string(cb.Task) || string(ca.Version) != string(cb.Version) {
			t.Fatalf("change %d differs between the nodes: %+v / %+v", i, ca, cb)
		}
		if ca.Kind == feed.ChangeDelete {
			delete(state, ca.TaskID)
		} else {
			state[ca.TaskID] = string(ca.Task)
		}
	}
	var replayed []string
	for _, id := range slices.Sorted(maps.Keys(state)) {
		replayed = append(replayed, state[id])
	}
	for _, node := range []*rethinkdb.Store{a, b} {
		snap, err := node.ReadAll(ctx, sess.UserID)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, task := range snap.Tasks {
			got = append(got, string(task))
		}
		if !slices.Equal(got, replayed) || snap.Seq != uint64(len(gotA)) {
			t.Fatalf("read-all %q at change %d, the feed replayed %q", got, snap.Seq, replayed)
		}
	}
}

// A device that got a notification and then reads, on another node, sees
// that write: 30 tries, as the issue that found the opposite did.
func TestReadYourNotification(t *testing.T) {
	url := rethinktest.URL(t)
	writer, reader := open(t, url, feed.Options{}), open(t, url, feed.Options{})
	rec := storetest.NewRecorder()
	reader.Subscribe(rec.Sink)
	ctx := context.Background()
	sess, err := writer.Login(ctx, "", "")
	if err != nil {
		t.Fatal(err)
	}
	watch(t, reader, sess)
	for i := range 30 {
		v := fmt.Sprint(1800000000000 + i)
		if err := writer.Write(ctx, &feed.Write{Kind: feed.WriteCreate, UserID: sess.UserID, DeviceID: sess.DeviceID,
			Task: []byte(fmt.Sprintf(`{"id":%d}`, i)), Version: []byte(v)}); err != nil {
			t.Fatal(err)
		}
		got := rec.Wait(t, sess.UserID, i+1)
		if string(got[i].Version) != v {
			t.Fatalf("notification %d has version %s, want %s", i, got[i].Version, v)
		}
		for _, node := range []*rethinkdb.Store{reader, writer} {
			snap, err := node.ReadAll(ctx, sess.UserID)
			if err != nil {
				t.Fatal(err)
			}
			if len(snap.Tasks) != i+1 || string(snap.Version) != v {
				t.Fatalf("try %d: read-all after the notification has %d tasks, version %s", i, len(snap.Tasks), snap.Version)
			}
		}
	}
}
