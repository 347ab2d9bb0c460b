package storetest

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"github.com/kronos-sync/kronos-server/feed"
)

// RunDump runs the suite of feed.Dumper and feed.Loader, which the store
// of every backend implements (kronos migrate moves data with them).
func RunDump(t *testing.T, open Open) {
	tests := []struct {
		name string
		fn   func(*testing.T, *dumpFixture)
	}{
		{"LoadIsVerbatim", testLoadIsVerbatim},
		{"LoadTwiceChangesNothing", testLoadTwiceChangesNothing},
		{"LoadOverExistingIsOneWrite", testLoadOverExisting},
		{"LoadRefusesTakenDevice", testLoadRefusesTakenDevice},
		{"DumpReadsWhatWasWritten", testDumpReadsWrites},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := setup(t, open, feed.Limits{})
			d := &dumpFixture{fixture: f}
			var ok bool
			if d.dumper, ok = f.store.(feed.Dumper); !ok {
				t.Fatalf("%T is not a feed.Dumper", f.store)
			}
			if d.loader, ok = f.store.(feed.Loader); !ok {
				t.Fatalf("%T is not a feed.Loader", f.store)
			}
			d.base = d.count()
			tc.fn(t, d)
		})
	}
}

type dumpFixture struct {
	*fixture
	dumper feed.Dumper
	loader feed.Loader
	base   feed.Counts // at the start: backends may share a database between tests
}

func (d *dumpFixture) load(users ...feed.UserData) {
	d.t.Helper()
	if err := d.loader.LoadUsers(d.ctx, users); err != nil {
		d.t.Fatalf("load: %v", err)
	}
}

// dumpAll pages through every user, a few at a time.
func (d *dumpFixture) dumpAll() []feed.UserData {
	d.t.Helper()
	var all []feed.UserData
	after := ""
	for {
		page, err := d.dumper.DumpUsers(d.ctx, after, 3)
		if err != nil {
			d.t.Fatalf("dump: %v", err)
		}
		all = append(all, page...)
		if len(page) < 3 {
			return all
		}
		after = page[len(page)-1].ID
	}
}

func (d *dumpFixture) lookup(id string) (feed.UserData, bool) {
	d.t.Helper()
	got, err := d.dumper.LookupUsers(d.ctx, []string{id, "no-such-user"})
	if err != nil {
		d.t.Fatalf("lookup: %v", err)
	}
	if len(got) > 1 {
		d.t.Fatalf("lookup found %d users for one id", len(got))
	}
	if len(got) == 0 {
		return feed.UserData{}, false
	}
	return got[0], true
}

// wantAdded checks what the test added to the counts.
func (d *dumpFixture) wantAdded(want feed.Counts) {
	d.t.Helper()
	c := d.count()
	if got := (feed.Counts{Users: c.Users - d.base.Users, Devices: c.Devices - d.base.Devices, Tasks: c.Tasks - d.base.Tasks}); got != want {
		d.t.Fatalf("the test added %+v to the counts, want %+v", got, want)
	}
}

func (d *dumpFixture) count() feed.Counts {
	d.t.Helper()
	c, err := d.dumper.Count(d.ctx)
	if err != nil {
		d.t.Fatalf("count: %v", err)
	}
	return c
}

// wantUser checks that the store holds u exactly: dump, read-all, login
// with every device.
func (d *dumpFixture) wantUser(u feed.UserData) feed.Session {
	d.t.Helper()
	got, ok := d.lookup(u.ID)
	if !ok || !got.Equal(&u) {
		d.t.Fatalf("stored user:\n%s\nwant\n%s", show(got), show(u))
	}
	snap := d.readAll(u.ID)
	if string(snap.Version) != string(u.Version) {
		d.t.Fatalf("read-all version %s, want %s", snap.Version, u.Version)
	}
	var want []string
	for _, t := range u.Tasks {
		want = append(want, string(t.Raw))
	}
	wantTasks(d.t, snap, want...)
	var sess feed.Session
	for _, dev := range u.Devices {
		var err error
		if sess, err = d.store.Login(d.ctx, u.ID, dev); err != nil {
			d.t.Fatalf("login with device %s: %v", dev, err)
		}
		if sess.NewDevice || sess.NewUser || string(sess.Version) != string(u.Version) || sess.Seq != snap.Seq {
			d.t.Fatalf("login %+v, want version %s seq %d", sess, u.Version, snap.Seq)
		}
	}
	return sess
}

func show(u feed.UserData) string {
	var b []byte
	for _, t := range u.Tasks {
		b = fmt.Appendf(b, "  %d %s\n", t.ID, t.Raw)
	}
	return fmt.Sprintf("id %q version %s devices %q\n%s", u.ID, u.Version, u.Devices, b)
}

func userData(id, version string, devices []string, tasks ...string) feed.UserData {
	u := feed.UserData{ID: id, Version: raw(version), Devices: devices, Tasks: []feed.Task{}}
	for _, s := range tasks {
		var t struct{ ID int64 }
		if err := json.Unmarshal([]byte(s), &t); err != nil {
			panic(err)
		}
		u.Tasks = append(u.Tasks, feed.Task{ID: t.ID, Raw: raw(s)})
	}
	slices.SortFunc(u.Tasks, func(a, b feed.Task) int { return cmp.Compare(a.ID, b.ID) })
	return u
}

// Bytes that a parser would change come back as they went in: key order,
// spacing, number forms, escapes, unicode, big and negative ids, versions
// of every kind.
func testLoadIsVerbatim(t *testing.T, d *dumpFixture) {
	users := []feed.UserData{
		userData(feed.NewID(), `1732540800123`, []string{"dev-a", "dev-b"},
			`{"id":1,"desc":"x"}`, `{"desc":"key order", "id":2 ,"n":1.50,"e":1e3}`,
			`{"id":-7,"s":"\u00e9\n<&>","tags":["a"]}`, `{"id":9007199254740991,"deep":{"b":[1,{"c":null}]}}`),
		userData(feed.NewID(), `"<v&2>"`, []string{"dev-c"}),
		userData(feed.NewID(), `12345678901234567890123`, nil, `{"id":0}`),
		userData(feed.NewID(), `-1`, []string{"dev-d"}, `{"id":3,"worktime":1.0}`),
	}
	d.load(users...)
	for _, u := range users {
		if sess := d.wantUser(u); len(u.Devices) > 0 && sess.Seq != 0 {
			t.Fatalf("a loaded user starts at seq %d, want 0", sess.Seq)
		}
	}
	all := d.dumpAll()
	for _, u := range users {
		i := slices.IndexFunc(all, func(v feed.UserData) bool { return v.ID == u.ID })
		if i < 0 || !all[i].Equal(&u) {
			t.Fatalf("dump lacks or changed %s", show(u))
		}
	}
	if !slices.IsSortedFunc(all, func(a, b feed.UserData) int { return cmp.Compare(a.ID, b.ID) }) {
		t.Fatal("dump is not in id order") // every backend here orders ids as bytes (UUIDs in any collation)
	}
	seen := map[string]bool{}
	for _, u := range all {
		if seen[u.ID] {
			t.Fatalf("dump gave user %s twice", u.ID)
		}
		seen[u.ID] = true
	}
	d.wantAdded(feed.Counts{Users: 4, Devices: 4, Tasks: 6})
}

// A load repeated, after it completed, changes nothing and notifies
// nothing: the next write is numbered right after the user's last.
func testLoadTwiceChangesNothing(t *testing.T, d *dumpFixture) {
	u := userData(feed.NewID(), `5`, []string{"dev-1"}, `{"id":1}`, `{"id":2,"x":"y"}`)
	d.load(u)
	d.load(u)
	sess := d.wantUser(u)
	d.watch(sess)
	d.mustWrite(create(sess, `{"id":3}`, `6`))
	got := d.rec.Wait(t, u.ID, 1)
	if len(got) != 1 || got[0].Seq != sess.Seq+1 || got[0].TaskID != 3 {
		t.Fatalf("after two loads, the next write's changes are %+v (login seq %d)", got, sess.Seq)
	}
	d.wantAdded(feed.Counts{Users: 1, Devices: 1, Tasks: 3})
}

// Loading over a user the store has makes it hold exactly the new tasks
// and version, keeps its devices, and is one write: a watcher gets its
// changes numbered after the login's, then the next write's.
func testLoadOverExisting(t *testing.T, d *dumpFixture) {
	sess := d.newUser()
	d.mustWrite(&feed.Write{Kind: feed.WriteAll, UserID: sess.UserID, DeviceID: sess.DeviceID,
		Tasks: tasks(t, `{"id":1,"v":"old"}`, `{"id":2}`, `{"id":3}`), Version: raw(`10`)})
	before := d.rec.Wait(t, sess.UserID, 3)
	last := before[len(before)-1].Seq

	u := userData(sess.UserID, `"older, but the source wins"`, []string{"new-device"},
		`{"id":1,"v":"new"}`, `{"id":3}`, `{"id":4}`)
	d.load(u)
	u.Devices = []string{"new-device", sess.DeviceID}
	slices.Sort(u.Devices)
	d.wantUser(u)
	changes := d.rec.Wait(t, sess.UserID, 3+3)[3:]
	kinds := map[feed.ChangeKind]int64{}
	for i, c := range changes {
		if c.Seq != last+uint64(i)+1 || string(c.Version) != string(u.Version) {
			t.Fatalf("load change %d: %+v, want seq %d", i, c, last+uint64(i)+1)
		}
		kinds[c.Kind] = c.TaskID
	}
	if kinds[feed.ChangeDelete] != 2 || kinds[feed.ChangeUpdate] != 1 || kinds[feed.ChangeCreate] != 4 {
		t.Fatalf("load changes %+v", changes)
	}
	d.mustWrite(create(sess, `{"id":5}`, `11`))
	if next := d.rec.Wait(t, sess.UserID, 7)[6]; next.Seq != last+4 {
		t.Fatalf("the write after the load has seq %d, want %d", next.Seq, last+4)
	}
	d.wantAdded(feed.Counts{Users: 1, Devices: 2, Tasks: 4})
}

// A device of another user refuses the load, which changes nothing.
func testLoadRefusesTakenDevice(t *testing.T, d *dumpFixture) {
	other := d.newUser()
	fresh := userData(feed.NewID(), `1`, []string{"free-device"}, `{"id":1}`)
	thief := userData(feed.NewID(), `1`, []string{other.DeviceID}, `{"id":1}`)
	err := d.loader.LoadUsers(d.ctx, []feed.UserData{fresh, thief})
	wantCode(t, err, feed.CodeDeviceTaken)
	for _, u := range []feed.UserData{fresh, thief} {
		if _, found := d.lookup(u.ID); found {
			t.Fatal("a refused load stored a user")
		}
	}
	d.wantAdded(feed.Counts{Users: 1, Devices: 1})
}

// What the write path stored dumps as read-all reads it.
func testDumpReadsWrites(t *testing.T, d *dumpFixture) {
	ctx := context.Background()
	a := d.newUser()
	b, err := d.store.Login(ctx, a.UserID, "")
	if err != nil {
		t.Fatal(err)
	}
	d.mustWrite(create(a, `{"id":1,"desc":"one"}`, `1`))
	d.mustWrite(create(a, `{"id":2,"desc":"two"}`, `2`))
	d.mustWrite(&feed.Write{Kind: feed.WriteUpdate, UserID: a.UserID, TaskID: 2, Task: raw(`{"id":20,"done":true}`), Version: raw(`3`)})
	d.mustWrite(&feed.Write{Kind: feed.WriteDelete, UserID: a.UserID, TaskID: 1, Version: raw(`"4"`)})
	want := userData(a.UserID, `"4"`, []string{a.DeviceID, b.DeviceID}, `{"id":20,"desc":"two","done":true}`)
	slices.Sort(want.Devices)
	d.wantUser(want)
	all := d.dumpAll()
	if i := slices.IndexFunc(all, func(v feed.UserData) bool { return v.ID == want.ID }); i < 0 || !all[i].Equal(&want) {
		t.Fatalf("dump lacks or changed %s", show(want))
	}
}
