package migrate_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/bolt"
	"github.com/kronos-sync/kronos-server/feed/migrate"
	"github.com/kronos-sync/kronos-server/feed/postgres"
	"github.com/kronos-sync/kronos-server/feed/rethinkdb"
	"github.com/kronos-sync/kronos-server/internal/pgtest"
	"github.com/kronos-sync/kronos-server/internal/rethinktest"
)

// store is a backend's store with what migrate needs.
type store interface {
	feed.Store
	migrate.Target
}

func openBolt(t *testing.T) store {
	s, err := bolt.Open(filepath.Join(t.TempDir(), "kronos.db"), feed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func openPostgres(t *testing.T) store {
	s, err := postgres.Open(context.Background(), pgtest.URL(t), feed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func openRethink(t *testing.T) store {
	s, err := rethinkdb.Open(context.Background(), rethinktest.URL(t), feed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Seed fills s through its write path, as clients would: users with one to
// three devices, write-alls, creates, renumbering updates, deletes, and
// versions of every kind, with task bytes a parser would change.
func Seed(t testing.TB, s feed.Store, users int, seed uint64) {
	t.Helper()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 1))
	versions := []string{`1732540800000`, `"1732540800001"`, `12345678901234567890123`, `1.5e3`, `"<&>"`, `-0.25`}
	for u := range users {
		sess, err := s.Login(ctx, "", "")
		if err != nil {
			t.Fatal(err)
		}
		for range rng.IntN(3) {
			if _, err := s.Login(ctx, sess.UserID, ""); err != nil {
				t.Fatal(err)
			}
		}
		write := func(w *feed.Write) {
			w.UserID, w.DeviceID = sess.UserID, sess.DeviceID
			if err := s.Write(ctx, w); err != nil {
				t.Fatalf("%s: %v", w.Kind, err)
			}
		}
		n := rng.IntN(12)
		all := make([]feed.Task, 0, n)
		for i := range n {
			id := int64(i*7 - 20)
			all = append(all, feed.Task{ID: id, Raw: fmt.Appendf(nil,
				`{"id":%d,"desc":"user %d task %d \u00e9\n","tags":["t%d"],"start":1.50,"last_active":1e3,"x":{"b":1,"a":[null]}}`, id, u, i, i%3)})
		}
		if u%5 != 4 { // some users never write: version -1, no tasks
			write(&feed.Write{Kind: feed.WriteAll, Tasks: all, Version: []byte(versions[rng.IntN(len(versions))])})
		}
		if u%3 == 0 {
			write(&feed.Write{Kind: feed.WriteCreate, Task: fmt.Appendf(nil, `{"id":%d,"desc":"created"}`, 9007199254740991-u),
				Version: []byte(`1800000000000`)})
		}
		if n > 2 && u%2 == 0 && u%5 != 4 {
			write(&feed.Write{Kind: feed.WriteUpdate, TaskID: all[1].ID, Task: []byte(`{"id":4242,"done":true}`), Version: []byte(`"v2"`)})
			write(&feed.Write{Kind: feed.WriteDelete, TaskID: all[0].ID, Version: []byte(`1800000000001`)})
		}
	}
}

// dumpAll reads every user of d, sorted by id.
func dumpAll(t testing.TB, d feed.Dumper) []feed.UserData {
	t.Helper()
	var all []feed.UserData
	after := ""
	for {
		page, err := d.DumpUsers(context.Background(), after, 50)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page...)
		if len(page) < 50 {
			break
		}
		after = page[len(page)-1].ID
	}
	slices.SortFunc(all, func(a, b feed.UserData) int { return compareStrings(a.ID, b.ID) })
	return all
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// sameData checks that b holds exactly what a holds: every user's devices,
// and the same read-all answer (tasks and version, byte for byte).
func sameData(t testing.TB, a, b store) {
	t.Helper()
	ctx := context.Background()
	da, db := dumpAll(t, a), dumpAll(t, b)
	if len(da) != len(db) {
		t.Fatalf("%d users, then %d", len(da), len(db))
	}
	for i := range da {
		if !da[i].Equal(&db[i]) {
			t.Fatalf("user %s differs:\n%+v\n%+v", da[i].ID, da[i], db[i])
		}
		ra, err := a.ReadAll(ctx, da[i].ID)
		if err != nil {
			t.Fatal(err)
		}
		rb, err := b.ReadAll(ctx, da[i].ID)
		if err != nil {
			t.Fatal(err)
		}
		if string(ra.Version) != string(rb.Version) || !slices.EqualFunc(ra.Tasks, rb.Tasks, func(x, y json.RawMessage) bool { return string(x) == string(y) }) {
			t.Fatalf("read-all of %s differs:\n%s %q\n%s %q", da[i].ID, ra.Version, ra.Tasks, rb.Version, rb.Tasks)
		}
		for _, dev := range da[i].Devices {
			if _, err := b.Login(ctx, da[i].ID, dev); err != nil {
				t.Fatalf("device %s cannot log in after the copy: %v", dev, err)
			}
		}
	}
}

func run(t *testing.T, src, dst store, opts migrate.Options) migrate.Report {
	t.Helper()
	rep, err := migrate.Run(context.Background(), src, dst, opts)
	if err != nil {
		t.Fatalf("migrate: %v (report %+v)", err, rep)
	}
	return rep
}

// bbolt → PostgreSQL → RethinkDB → bbolt: every hop gives the same data and
// read-all answers, and done twice, the second copies nothing.
func TestRoundTrip(t *testing.T) {
	const users = 120
	first := openBolt(t)
	Seed(t, first, users, 1)
	hops := []struct {
		name string
		open func(*testing.T) store
	}{{"postgres", openPostgres}, {"rethinkdb", openRethink}, {"bolt", openBolt}}
	src := first
	for _, hop := range hops {
		dst := hop.open(t)
		var progress []migrate.Progress
		rep := run(t, src, dst, migrate.Options{PageSize: 16, BatchTasks: 40, Progress: func(p migrate.Progress) { progress = append(progress, p) }})
		if rep.Copied != users || rep.Skipped != 0 || rep.Target != rep.Source || rep.Source.Users != users {
			t.Fatalf("to %s: %+v", hop.name, rep)
		}
		if last := progress[len(progress)-1]; len(progress) != (users+15)/16 || last.Done != users || last.Total != users {
			t.Fatalf("progress %+v", progress)
		}
		sameData(t, first, dst)
		again := run(t, src, dst, migrate.Options{})
		if again.Copied != 0 || again.Skipped != users || again.Target != rep.Target {
			t.Fatalf("to %s, again: %+v", hop.name, again)
		}
		sameData(t, first, dst)
		src = dst
	}
}

// A target with data of its own is refused, untouched; with Merge its own
// users are kept and the source's overwrite theirs, devices added.
func TestTargetWithOtherData(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		open func(*testing.T) store
	}{{"bolt", openBolt}, {"postgres", openPostgres}, {"rethinkdb", openRethink}} {
		t.Run(tc.name, func(t *testing.T) {
			src, dst := openBolt(t), tc.open(t)
			Seed(t, src, 10, 2)
			Seed(t, dst, 3, 3) // users only the target has
			mine := dumpAll(t, src)[4]
			changed := mine
			changed.Version, changed.Devices, changed.Tasks = []byte(`"other"`), []string{"target-device"}, []feed.Task{{ID: 1, Raw: []byte(`{"id":1}`)}}
			if err := dst.LoadUsers(ctx, []feed.UserData{changed}); err != nil {
				t.Fatal(err)
			}
			before, _ := dst.Count(ctx)
			rep, err := migrate.Run(ctx, src, dst, migrate.Options{})
			if !errors.Is(err, migrate.ErrTargetNotEmpty) || rep.TargetOnly != 3 || rep.Differed != 1 {
				t.Fatalf("error %v, report %+v", err, rep)
			}
			if after, _ := dst.Count(ctx); after != before {
				t.Fatalf("a refused copy changed the target: %+v → %+v", before, after)
			}

			rep = run(t, src, dst, migrate.Options{Merge: true})
			if rep.Copied != 10 || rep.Target.Users != 13 || rep.Target.Devices != rep.Source.Devices+before.Devices {
				t.Fatalf("merge: %+v (target before %+v)", rep, before)
			}
			got, err := dst.LookupUsers(ctx, []string{mine.ID})
			if err != nil {
				t.Fatal(err)
			}
			want := mine
			want.Devices = slices.Sorted(slices.Values(append(slices.Clone(mine.Devices), "target-device")))
			if len(got) != 1 || !got[0].Equal(&want) {
				t.Fatalf("merged user %+v, want %+v", got, want)
			}
			// Again: only the merged user is loaded (its extra device makes it
			// differ from the source's), and that load changes nothing.
			if rep := run(t, src, dst, migrate.Options{Merge: true}); rep.Copied != 1 || rep.Skipped != 9 {
				t.Fatalf("merge again: %+v", rep)
			}
		})
	}
}
