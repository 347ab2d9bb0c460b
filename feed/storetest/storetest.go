// Package storetest is the conformance suite every feed.Store backend must
// pass: login rules, write semantics, atomicity, limits, and a change feed
// that delivers each user's changes in commit order.
package storetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/feed"
)

// Open returns a new, empty backend with the given options (the rest of a
// backend's options at their defaults). The suite closes it.
type Open func(t *testing.T, opts feed.Options) feed.Backend

// feedTimeout bounds every wait for the change feed.
const feedTimeout = 10 * time.Second

// Run runs the whole suite.
func Run(t *testing.T, open Open) {
	tests := []struct {
		name string
		fn   func(*testing.T, Open)
	}{
		{"LoginCreatesUser", testLoginCreatesUser},
		{"LoginRules", testLoginRules},
		{"DeviceLimit", testDeviceLimit},
		{"DeviceRetirement", testDeviceRetirement},
		{"DeviceRetirementSparesConnected", testDeviceRetirementSparesConnected},
		{"CreateAndReadAll", testCreateAndReadAll},
		{"CreateRefusals", testCreateRefusals},
		{"UpdateMerges", testUpdateMerges},
		{"UpdateRenumbers", testUpdateRenumbers},
		{"Delete", testDelete},
		{"WriteAllDiff", testWriteAllDiff},
		{"WriteAllRefusals", testWriteAllRefusals},
		{"VersionVerbatim", testVersionVerbatim},
		{"UsersIsolated", testUsersIsolated},
		{"FeedInCommitOrder", testFeedInCommitOrder},
		{"SeqNumbersChanges", testSeqNumbersChanges},
		{"WatchCatchesUp", testWatchCatchesUp},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open) })
	}
}

// fixture is an open store with a recording sink.
type fixture struct {
	t     *testing.T
	store feed.Store
	feed  feed.Feed
	ctx   context.Context
	rec   *Recorder
}

func setup(t *testing.T, open Open, limits feed.Limits) *fixture {
	t.Helper()
	return setupWith(t, open, feed.Options{Limits: limits})
}

func setupWith(t *testing.T, open Open, opts feed.Options) *fixture {
	t.Helper()
	opts.Limits.SetDefaults()
	b := open(t, opts)
	f := &fixture{t: t, store: b.Store, feed: b.Feed, ctx: context.Background(), rec: NewRecorder()}
	b.Feed.Subscribe(f.rec.Sink)
	t.Cleanup(func() {
		if err := b.Store.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return f
}

// newUser logs a new user in and watches it.
func (f *fixture) newUser() feed.Session {
	f.t.Helper()
	sess, err := f.store.Login(f.ctx, "", "")
	if err != nil {
		f.t.Fatalf("login new user: %v", err)
	}
	f.watch(sess)
	return sess
}

func (f *fixture) watch(sess feed.Session) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(f.ctx, feedTimeout)
	defer cancel()
	if err := f.feed.Watch(ctx, sess.UserID, sess.Seq); err != nil {
		f.t.Fatalf("watch: %v", err)
	}
}

func (f *fixture) write(w *feed.Write) error { return f.store.Write(f.ctx, w) }

func (f *fixture) mustWrite(w *feed.Write) {
	f.t.Helper()
	if err := f.write(w); err != nil {
		f.t.Fatalf("%s: %v", w.Kind, err)
	}
}

func (f *fixture) readAll(user string) feed.Snapshot {
	f.t.Helper()
	snap, err := f.store.ReadAll(f.ctx, user)
	if err != nil {
		f.t.Fatalf("read-all: %v", err)
	}
	return snap
}

func raw(s string) json.RawMessage { return json.RawMessage(s) }

func create(sess feed.Session, task, version string) *feed.Write {
	return &feed.Write{Kind: feed.WriteCreate, UserID: sess.UserID, DeviceID: sess.DeviceID, Task: raw(task), Version: raw(version)}
}

func tasks(t *testing.T, list ...string) []feed.Task {
	var out []feed.Task
	for _, s := range list {
		task, err := feed.ParseTask([]byte(s), 1<<20)
		if err != nil {
			t.Fatalf("bad test task %s: %v", s, err)
		}
		out = append(out, task)
	}
	return out
}

func wantCode(t *testing.T, err error, code feed.ErrorCode) {
	t.Helper()
	if !feed.IsCode(err, code) {
		t.Fatalf("error = %v, want code %d", err, code)
	}
}

func wantTasks(t *testing.T, snap feed.Snapshot, want ...string) {
	t.Helper()
	var got []string
	for _, task := range snap.Tasks {
		got = append(got, string(task))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("tasks = %q, want %q", got, want)
	}
}

func testLoginCreatesUser(t *testing.T, open Open) {
	f := setup(t, open, feed.Limits{})
	a, b := f.newUser(), f.newUser()
	if string(a.Version) != "-1" || !a.NewUser || !a.NewDevice {
		t.Fatalf("new user: %+v, want version -1, new user and device", a)
	}
	if len(a.UserID) < 32 || len(a.DeviceID) < 32 || a.UserID == b.UserID || a.DeviceID == b.DeviceID {
		t.Fatalf("ids not unique or too short: %+v %+v", a, b)
	}
	again, err := f.store.Login(f.ctx, a.UserID, a.DeviceID)
	if err != nil || again.NewUser || again.NewDevice || again.DeviceID != a.DeviceID {
		t.Fatalf("login again = %+v, %v", again, err)
	}
	// A fresh install of a client may bring its own device id.
	own, err := f.store.Login(f.ctx, "", "my-laptop")
	if err != nil || own.DeviceID != "my-laptop" {
		t.Fatalf("new user with own device id = %+v, %v", own, err)
	}
}

func testLoginRules(t *testing.T, open Open) {
	f := setup(t, open, feed.Limits{})
	a, b := f.newUser(), f.newUser()
	second, err := f.store.Login(f.ctx, a.UserID, "")
	if err != nil || !second.NewDevice || second.DeviceID == a.DeviceID || second.UserID != a.UserID {
		t.Fatalf("new device = %+v, %v", second, err)
	}
	_, err = f.store.Login(f.ctx, "no-such-user", "")
	wantCode(t, err, feed.CodeUserNotFound)
	_, err = f.store.Login(f.ctx, a.UserID, b.DeviceID) // b's device
	wantCode(t, err, feed.CodeDeviceNotFound)
	_, err = f.store.Login(f.ctx, a.UserID, "no-such-device")
	wantCode(t, err, feed.CodeDeviceNotFound)
	_, err = f.store.Login(f.ctx, "", a.DeviceID) // a device already owned
	wantCode(t, err, feed.CodeDeviceTaken)
	if msg := err.Error(); bytes.Contains([]byte(msg), []byte(a.UserID)) {
		t.Fatalf("error %q reveals a user id", msg)
	}
}

// Clock is a settable clock for feed.Options.Now.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock starts a clock at a fixed time.
func NewClock() *Clock {
	return &Clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

// Now reads the clock.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock on.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// idle is the device idle window of the retirement tests.
const idle = 30 * time.Minute

func (f *fixture) login(user, device string, connected ...string) (feed.Session, error) {
	return f.store.Login(f.ctx, user, device, connected...)
}

func (f *fixture) mustLogin(user, device string, connected ...string) feed.Session {
	f.t.Helper()
	sess, err := f.login(user, device, connected...)
	if err != nil {
		f.t.Fatalf("login: %v", err)
	}
	return sess
}

// testDeviceRetirement: at the limit, a new device retires the least
// recently seen one that has been idle; a device seen (logged in,
// registered or touched) within the idle window is never retired, and a
// login that finds no idle device is refused and changes nothing.
func testDeviceRetirement(t *testing.T, open Open) {
	clock := NewClock()
	f := setupWith(t, open, feed.Options{Limits: feed.Limits{MaxDevicesPerUser: 2}, DeviceIdleAfter: idle, Now: clock.Now})
	a := f.mustLogin("", "")
	clock.Advance(time.Minute)
	b := f.mustLogin(a.UserID, "")

	// Both idle: the third device retires a, the least recently seen, in
	// the same step as it registers.
	clock.Advance(2 * idle)
	c := f.mustLogin(a.UserID, "")
	if !c.NewDevice || c.DeviceID == a.DeviceID || c.DeviceID == b.DeviceID {
		t.Fatalf("new device at the limit = %+v", c)
	}
	_, err := f.login(a.UserID, a.DeviceID)
	wantCode(t, err, feed.CodeDeviceNotFound)
	f.mustLogin(a.UserID, b.DeviceID) // b is seen now
	f.mustLogin(a.UserID, c.DeviceID)

	// b and c were seen within the window: neither may be connected
	// nowhere, so a fourth device is refused and nothing changes.
	clock.Advance(idle / 2)
	_, err = f.login(a.UserID, "")
	wantCode(t, err, feed.CodeTooManyDevices)
	f.mustLogin(a.UserID, b.DeviceID)
	f.mustLogin(a.UserID, c.DeviceID)

	// Both idle again, but c's node touches it: b is retired.
	clock.Advance(2 * idle)
	if err := f.store.TouchDevices(f.ctx, []string{c.DeviceID, "no-such-device"}); err != nil {
		t.Fatalf("touch: %v", err)
	}
	d := f.mustLogin(a.UserID, "")
	_, err = f.login(a.UserID, b.DeviceID)
	wantCode(t, err, feed.CodeDeviceNotFound)
	f.mustLogin(a.UserID, c.DeviceID)
	f.mustLogin(a.UserID, d.DeviceID)

	// The user still has exactly two devices: both recent, one more is
	// refused. A retired device comes back only as a new one.
	_, err = f.login(a.UserID, "")
	wantCode(t, err, feed.CodeTooManyDevices)
	_, err = f.login(a.UserID, b.DeviceID)
	wantCode(t, err, feed.CodeDeviceNotFound)
}

// testDeviceRetirementSparesConnected: the devices the login names as
// connected to this node are never retired, however long unseen.
func testDeviceRetirementSparesConnected(t *testing.T, open Open) {
	clock := NewClock()
	f := setupWith(t, open, feed.Options{Limits: feed.Limits{MaxDevicesPerUser: 2}, DeviceIdleAfter: idle, Now: clock.Now})
	a := f.mustLogin("", "")
	clock.Advance(time.Minute)
	b := f.mustLogin(a.UserID, "")
	clock.Advance(2 * idle)
	_, err := f.login(a.UserID, "", a.DeviceID, b.DeviceID)
	wantCode(t, err, feed.CodeTooManyDevices)
	c := f.mustLogin(a.UserID, "", a.DeviceID) // a is the older, but connected: b goes
	_, err = f.login(a.UserID, b.DeviceID)
	wantCode(t, err, feed.CodeDeviceNotFound)
	f.mustLogin(a.UserID, a.DeviceID)
	f.mustLogin(a.UserID, c.DeviceID)
	// Another user's devices are never candidates.
	other := f.mustLogin("", "")
	clock.Advance(2 * idle)
	f.mustLogin(a.UserID, "", c.DeviceID)
	f.mustLogin(other.UserID, other.DeviceID)
}

func testDeviceLimit(t *testing.T, open Open) {
	f := setup(t, open, feed.Limits{MaxDevicesPerUser: 2})
	a := f.newUser()
	if _, err := f.store.Login(f.ctx, a.UserID, ""); err != nil {
		t.Fatal(err)
	}
	_, err := f.store.Login(f.ctx, a.UserID, "")
	wantCode(t, err, feed.CodeTooManyDevices)
}

func testCreateAndReadAll(t *testing.T, open Open) {
	f := setup(t, open, feed.Limits{})
	a := f.newUser()
	f.mustWrite(create(a, `{"id":2,"desc":"b","start":1700000000,"custom":{"x":[1,"y"]}}`, `10`))
	f.mustWrite(create(a, `{"id":-5,"desc":"neg"}`, `11`))
	f.mustWrite(create(a, `{"id":9007199254740991}`, `12`))
	snap := f.readAll(a.UserID)
	wantTasks(t, snap, `{"id":-5,"desc":"neg"}`, `{"id":2,"desc":"b","start":1700000000,"custom":{"x":[1,"y"]}}`, `{"id":9007199254740991}`)
	if string(snap.Version) != "12" {
		t.Fatalf("version = %s, want 12", snap.Version)
	}
	got := f.rec.Wait(t, a.UserID, 3)
	for i, id := range []int64{2, -5, 9007199254740991} {
		c := got[i]
		if c.Kind != feed.ChangeCreate || c.TaskID != id || c.DeviceID != a.DeviceID {
			t.Fatalf("change %d = %+v", i, c)
		}
	}
	if string(got[0].Version) != "10" || string(got[0].Task) != `{"id":2,"desc":"b","start":1700000000,"custom":{"x":[1,"y"]}}` {
		t.Fatalf("change 0 = %s %s", got[0].Task, got[0].Version)
	}
}

func testCreateRefusals(t *testing.T, open Open) {
	f := setup(t, open, feed.Limits{MaxTasksPerUser: 2})
	a := f.newUser()
	f.mustWrite(create(a, `{"id":1,"desc":"one"}`, `1`))
	wantCode(t, f.write(create(a, `{"id":1,"desc":"again"}`, `2`)), feed.CodeTaskExists)
	f.mustWrite(create(a, `{"id":2}`, `3`))
	wantCode(t, f.write(create(a, `{"id":3}`, `4`)), feed.CodeTooManyTasks)
	snap := f.readAll(a.UserID)
	wantTasks(t, snap, `{"id":1,"desc":"one"}`, `{"id":2}`)
	if string(snap.Version) != "3" {
		t.Fatalf("a refused write changed the version to %s", snap.Version)
	}
}

func testUpdateMerges(t *testing.T, open Open) {
	f := setup(t, open, feed.Limits{})
	a := f.newUser()
	f.mustWrite(create(a, `{"id":1,"desc":"old","tags":["a"],"start":5}`, `1`))
	f.mustWrite(&feed.Write{Kind: feed.WriteUpdate, UserID: a.UserID, DeviceID: a.DeviceID,
		TaskID: 1, Task: raw(`{"id":1,"desc":"new","stop":9}`), Version: raw(`2`)})
	want := `{"id":1,"desc":"new","tags":["a"],"start":5,"stop":9}`
	wantTasks(t, f.readAll(a.UserID), want)
	got := f.rec.Wait(t, a.UserID, 2)
	if got[1].Kind != feed.ChangeUpdate || string(got[1].Task) != want || string(got[1].Version) != "2" {
		t.Fatalf("update change = %+v (%s)", got[1], got[1].Task)
	}
	err := f.write(&feed.Write{Kind: feed.WriteUpdate, UserID: a.UserID, TaskID: 7, Task: raw(`{"desc":"x"}`), Version: raw(`3`)})
	wantCode(t, err, feed.CodeTaskNotFound)
	err = f.write(&feed.Write{Kind: feed.WriteUpdate, UserID: a.UserID, TaskID: 1, Task: raw(`{"desc":5}`), Version: raw(`3`)})
	wantCode(t, err, feed.CodeInvalidTask)
	wantTasks(t, f.readAll(a.UserID), want)
}

func testUpdateRenumbers(t *testing.T, open Open) {
	f := setup(t, open, feed.Limits{})
	a := f.newUser()
	f.mustWrite(create(a, `{"id":1,"desc":"one"}`, `1`))
	f.mustWrite(create(a, `{"id":2,"desc":"two"}`, `2`))
	err := f.write(&feed.Write{Kind: feed.WriteUpdate, UserID: a.UserID, TaskID: 1, Task: raw(`{"id":2}`), Version: raw(`3`)})
	wantCode(t, err, feed.CodeTaskExists)
	f.mustWrite(&feed.Write{Kind: feed.WriteUpdate, UserID: a.UserID, DeviceID: a.DeviceID,
		TaskID: 1, Task: raw(`{"id":-1,"done":true}`), Version: raw(`4`)})
	wantTasks(t, f.readAll(a.UserID), `{"id":-1,"desc":"one","done":true}`, `{"id":2,"desc":"two"}`)
	got := f.rec.Wait(t, a.UserID, 3)
	if got[2].Kind != feed.ChangeUpdate || got[2].TaskID != -1 {
		t.Fatalf("renumber change = %+v", got[2])
	}
}

func testDelete(t *testing.T, open Open) {
	f := setup(t, open, feed.Limits{})
	a := f.newUser()
	f.mustWrite(create(a, `{"id":1,"index":"7"}`, `1`))
	f.mustWrite(create(a, `{"id":2,"index":8}`, `2`))
	f.mustWrite(create(a, `{"id":3}`, `3`))
	f.mustWrite(&feed.Write{Kind: feed.WriteDelete, UserID: a.UserID, DeviceID: a.DeviceID, TaskID: 3, Version: raw(`4`)})
	f.mustWrite(&feed.Write{Kind: feed.WriteDelete, UserID: a.UserID, DeviceID: a.DeviceID, TaskIndex: "7", Version: raw(`5`)})
	f.mustWrite(&feed.Write{Kind: feed.WriteDelete, UserID: a.UserID, DeviceID: a.DeviceID, TaskIndex: "8", Version: raw(`6`)})
	wantCode(t, f.write(&feed.Write{Kind: feed.WriteDelete, UserID: a.UserID, TaskID: 3, Version: raw(`7`)}), feed.CodeTaskNotFound)
	wantCode(t, f.write(&feed.Write{Kind: feed.WriteDelete, UserID: a.UserID, TaskIndex: "7", Version: raw(`7`)}), feed.CodeTaskNotFound)
	snap := f.readAll(a.UserID)
	wantTasks(t, snap)
	if string(snap.Version) != "6" {
		t.Fatalf("version = %s, want 6", snap.Version)
	}
	got := f.rec.Wait(t, a.UserID, 6)
	for i, id := range []int64{3, 1, 2} {
		if c := got[3+i]; c.Kind != feed.ChangeDelete || c.TaskID != id || c.Task != nil {
			t.Fatalf("delete change %d = %+v", i, c)
		}
	}
}

func testWriteAllDiff(t *testing.T, open Open) {
	f := setup(t, open, feed.Limits{})
	a := f.newUser()
	f.mustWrite(&feed.Write{Kind: feed.WriteAll, UserID: a.UserID, DeviceID: a.DeviceID, Version: raw(`100`),
		Tasks: tasks(t, `{"id":1,"desc":"keep"}`, `{"id":2,"desc":"change"}`, `{"id":3,"desc":"drop"}`)})
	f.rec.Wait(t, a.UserID, 3)
	f.mustWrite(&feed.Write{Kind: feed.WriteAll, UserID: a.UserID, DeviceID: a.DeviceID, Version: raw(`200`),
		Tasks: tasks(t, `{"id":4,"desc":"new"}`, `{"id":2,"desc":"changed"}`, `{"id":1,"desc":"keep"}`)})
	got := f.rec.Wait(t, a.UserID, 6)[3:]
	want := []struct {
		kind feed.ChangeKind
		id   int64
	}{{feed.ChangeDelete, 3}, {feed.ChangeUpdate, 2}, {feed.ChangeCreate, 4}}
	for i, w := range want {
		if got[i].Kind != w.kind || got[i].TaskID != w.id || string(got[i].Version) != "200" {
			t.Fatalf("write-all change %d = %+v, want %v %d", i, got[i], w.kind, w.id)
		}
	}
	snap := f.readAll(a.UserID)
	wantTasks(t, snap, `{"id":1,"desc":"keep"}`, `{"id":2,"desc":"changed"}`, `{"id":4,"desc":"new"}`)
	if string(snap.Version) != "200" {
		t.Fatalf("version = %s", snap.Version)
	}
	// An identical write-all changes the version only.
	f.mustWrite(&feed.Write{Kind: feed.WriteAll, UserID: a.UserID, DeviceID: a.DeviceID, Version: raw(`300`),
		Tasks: tasks(t, `{"id":1,"desc":"keep"}`, `{"id":2,"desc":"changed"}`, `{"id":4,"desc":"new"}`)})
	f.mustWrite(create(a, `{"id":5}`, `301`))
	if got := f.rec.Wait(t, a.UserID, 7); got[6].TaskID != 5 {
		t.Fatalf("identical write-all produced changes: %+v", got[6])
	}
}

func testWriteAllRefusals(t *testing.T, open Open) {
	f := setup(t, open, feed.Limits{MaxTasksPerUser: 3})
	a := f.newUser()
	f.mustWrite(&feed.Write{Kind: feed.WriteAll, UserID: a.UserID, Version: raw(`1800000000000`), Tasks: tasks(t, `{"id":1}`)})
	// A stale device must not wipe newer data.
	err := f.write(&feed.Write{Kind: feed.WriteAll, UserID: a.UserID, Version: raw(`1799999999999`), Tasks: nil})
	wantCode(t, err, feed.CodeStaleVersion)
	err = f.write(&feed.Write{Kind: feed.WriteAll, UserID: a.UserID, Version: raw(`1.8e12`), Tasks: nil})
	if err != nil {
		t.Fatalf("an equal version (1.8e12) was refused: %v", err)
	}
	f.mustWrite(&feed.Write{Kind: feed.WriteAll, UserID: a.UserID, Version: raw(`1800000000005`), Tasks: tasks(t, `{"id":1}`)})
	err = f.write(&feed.Write{Kind: feed.WriteAll, UserID: a.UserID, Version: raw(`1800000000006`),
		Tasks: tasks(t, `{"id":1}`, `{"id":2}`, `{"id":3}`, `{"id":4}`)})
	wantCode(t, err, feed.CodeTooManyTasks)
	// Versions of different kinds are not compared.
	f.mustWrite(&feed.Write{Kind: feed.WriteAll, UserID: a.UserID, Version: raw(`"abc"`), Tasks: tasks(t, `{"id":9}`)})
	f.mustWrite(&feed.Write{Kind: feed.WriteAll, UserID: a.UserID, Version: raw(`5`), Tasks: tasks(t, `{"id":9}`, `{"id":10}`)})
	snap := f.readAll(a.UserID)
	wantTasks(t, snap, `{"id":9}`, `{"id":10}`)
	if string(snap.Version) != "5" {
		t.Fatalf("version = %s, want 5", snap.Version)
	}
}

func testVersionVerbatim(t *testing.T, open Open) {
	f := setup(t, open, feed.Limits{})
	a := f.newUser()
	for i, v := range []string{`1732540800123`, `"1732540800124"`, `12345678901234567890123`, `1.5e300`, `"<v&2>"`, `-0.25`} {
		f.mustWrite(create(a, fmt.Sprintf(`{"id":%d}`, i), v))
		if got := f.readAll(a.UserID).Version; string(got) != v {
			t.Fatalf("version %s came back as %s", v, got)
		}
		if sess, err := f.store.Login(f.ctx, a.UserID, a.DeviceID); err != nil || string(sess.Version) != v {
			t.Fatalf("login version = %s, %v; want %s", sess.Version, err, v)
		}
	}
	// A write without a version keeps the stored one.
	f.mustWrite(&feed.Write{Kind: feed.WriteCreate, UserID: a.UserID, Task: raw(`{"id":99}`)})
	if got := f.readAll(a.UserID).Version; string(got) != `-0.25` {
		t.Fatalf("version after a write without one = %s", got)
	}
	if got := f.rec.Wait(t, a.UserID, 7); string(got[6].Version) != `-0.25` {
		t.Fatalf("change version = %s, want the stored -0.25", got[6].Version)
	}
}

func testUsersIsolated(t *testing.T, open Open) {
	f := setup(t, open, feed.Limits{})
	a, b := f.newUser(), f.newUser()
	f.mustWrite(create(a, `{"id":1,"desc":"a's"}`, `1`))
	f.mustWrite(create(b, `{"id":1,"desc":"b's"}`, `1`))
	wantTasks(t, f.readAll(a.UserID), `{"id":1,"desc":"a's"}`)
	wantTasks(t, f.readAll(b.UserID), `{"id":1,"desc":"b's"}`)
	f.rec.Wait(t, a.UserID, 1)
	f.rec.Wait(t, b.UserID, 1)
	for _, c := range f.rec.Changes(a.UserID) {
		if c.DeviceID != a.DeviceID {
			t.Fatalf("a's feed has a change of another device: %+v", c)
		}
	}
}

// testFeedInCommitOrder races writers on one user's few tasks, then replays
// the feed from empty: only changes delivered in commit order give back
// exactly what the store holds.
func testFeedInCommitOrder(t *testing.T, open Open) {
	f := setup(t, open, feed.Limits{})
	a := f.newUser()
	const writers, perWriter, ids = 8, 40, 5
	var wg sync.WaitGroup
	var mu sync.Mutex
	succeeded := 0
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := range perWriter {
				id := rng.Int64N(ids)
				version := raw(fmt.Sprintf(`"w%d-%d"`, w, i))
				var wr *feed.Write
				switch rng.IntN(4) {
				case 0:
					wr = &feed.Write{Kind: feed.WriteCreate, UserID: a.UserID, Version: version,
						Task: raw(fmt.Sprintf(`{"id":%d,"by":"w%d-%d"}`, id, w, i))}
				case 1:
					wr = &feed.Write{Kind: feed.WriteUpdate, UserID: a.UserID, Version: version, TaskID: id,
						Task: raw(fmt.Sprintf(`{"by":"w%d-%d"}`, w, i))}
				case 2:
					wr = &feed.Write{Kind: feed.WriteDelete, UserID: a.UserID, Version: version, TaskID: id}
				default:
					wr = &feed.Write{Kind: feed.WriteAll, UserID: a.UserID, Version: version,
						Tasks: tasks(t, fmt.Sprintf(`{"id":%d,"all":"w%d-%d"}`, id, w, i), fmt.Sprintf(`{"id":%d}`, (id+1)%ids))}
				}
				err := f.write(wr)
				if err != nil && !isRefusal(err) {
					t.Errorf("write: %v", err)
					return
				}
				if err == nil {
					mu.Lock()
					succeeded++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if succeeded == 0 {
		t.Fatal("no write succeeded")
	}
	snap := f.readAll(a.UserID)
	// Wait until the feed has caught up with the last write: its version
	// is the one read-all reports.
	deadline := time.Now().Add(feedTimeout)
	for {
		changes := f.rec.Changes(a.UserID)
		if n := len(changes); n > 0 && bytes.Equal(changes[n-1].Version, snap.Version) {
			state := map[int64]string{}
			for i, c := range changes {
				if c.Seq != uint64(i+1) {
					t.Fatalf("change %d has Seq %d: lost, doubled or out of order", i, c.Seq)
				}
				if c.Kind == feed.ChangeDelete {
					delete(state, c.TaskID)
				} else {
					state[c.TaskID] = string(c.Task)
				}
			}
			var replayed []string
			for _, id := range slices.Sorted(maps.Keys(state)) {
				replayed = append(replayed, state[id])
			}
			wantTasks(t, snap, replayed...)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("feed did not reach version %s", snap.Version)
		}
		f.rec.WaitChange(100 * time.Millisecond)
	}
}

// testSeqNumbersChanges: every backend numbers a user's changes 1, 2, 3…
// in commit order, and a login and a read-all say where they stand.
func testSeqNumbersChanges(t *testing.T, open Open) {
	f := setup(t, open, feed.Limits{})
	a, b := f.newUser(), f.newUser()
	if a.Seq != 0 {
		t.Fatalf("new user's Seq = %d, want 0", a.Seq)
	}
	// Each write reports the Seq of its last change (Write.Seq), 0 when
	// it changed nothing.
	wantSeq := func(w *feed.Write, seq uint64) {
		t.Helper()
		f.mustWrite(w)
		if w.Seq != seq {
			t.Fatalf("%s reported Seq %d, want %d", w.Kind, w.Seq, seq)
		}
	}
	wantSeq(create(a, `{"id":1}`, `1`), 1)
	wantSeq(create(b, `{"id":1}`, `1`), 1) // b's numbers are b's own
	wantSeq(&feed.Write{Kind: feed.WriteAll, UserID: a.UserID, DeviceID: a.DeviceID, Version: raw(`2`),
		Tasks: tasks(t, `{"id":2}`, `{"id":3}`)}, 4)
	err := f.write(create(a, `{"id":2}`, `3`)) // refused: takes no number
	wantCode(t, err, feed.CodeTaskExists)
	wantSeq(&feed.Write{Kind: feed.WriteAll, UserID: a.UserID, DeviceID: a.DeviceID, Version: raw(`4`),
		Tasks: tasks(t, `{"id":2}`, `{"id":3}`)}, 0) // no change: takes no number
	got := f.rec.Wait(t, a.UserID, 4)
	for i, c := range got {
		if c.Seq != uint64(i+1) {
			t.Fatalf("change %d: Seq %d, want %d (%+v)", i, c.Seq, i+1, c)
		}
	}
	if c := f.rec.Wait(t, b.UserID, 1)[0]; c.Seq != 1 {
		t.Fatalf("b's first change has Seq %d", c.Seq)
	}
	sess, err := f.store.Login(f.ctx, a.UserID, a.DeviceID)
	if err != nil || sess.Seq != 4 || string(sess.Version) != "4" {
		t.Fatalf("login after 4 changes: %+v, %v", sess, err)
	}
	if snap := f.readAll(a.UserID); snap.Seq != 4 {
		t.Fatalf("read-all Seq = %d, want 4", snap.Seq)
	}
}

// testWatchCatchesUp: a watch that starts after changes were made delivers
// every change past its afterSeq, once, in order (a shared backend reads
// them from its log; the embedded one delivered them as they committed).
func testWatchCatchesUp(t *testing.T, open Open) {
	f := setup(t, open, feed.Limits{})
	sess, err := f.store.Login(f.ctx, "", "")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		f.mustWrite(create(sess, fmt.Sprintf(`{"id":%d}`, i), fmt.Sprint(i)))
	}
	f.watch(feed.Session{UserID: sess.UserID, Seq: 2})
	f.mustWrite(create(sess, `{"id":5}`, `5`))
	deadline := time.Now().Add(feedTimeout)
	for {
		var after []uint64
		for _, c := range f.rec.Changes(sess.UserID) {
			if c.Seq > 2 {
				after = append(after, c.Seq)
			}
		}
		if slices.Equal(after, []uint64{3, 4, 5, 6}) {
			break
		}
		if len(after) > 4 || time.Now().After(deadline) {
			t.Fatalf("changes after Seq 2: %v, want [3 4 5 6]", after)
		}
		f.rec.WaitChange(100 * time.Millisecond)
	}
	f.feed.Unwatch(sess.UserID)
}

func isRefusal(err error) bool {
	var fe *feed.Error
	return errors.As(err, &fe)
}
