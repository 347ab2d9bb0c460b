package rethinkdb

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	r "gopkg.in/rethinkdb/rethinkdb-go.v6"

	"github.com/kronos-sync/kronos-server/feed"
)

// These tests run the RethinkDB backend on the driver's own mock: they
// check the exact queries sent and drive changefeeds through channels. The
// conformance suite against a real server is in rethink_test.go.

func tbl(name string) r.Term { return r.DB("kronos").Table(name) }

func expectSetup(m *r.Mock) {
	m.On(r.DBCreate("kronos")).Return(nil, nil)
	for _, t := range []string{"users", "devices", "tasks"} {
		m.On(r.DB("kronos").TableCreate(t)).Return(nil, nil)
	}
	m.On(tbl("tasks").IndexCreate("user_id")).Return(nil, nil)
	m.On(tbl("tasks").IndexWait("user_id")).Return(nil, nil)
}

func feedQuery(users ...string) r.Term {
	return tbl("tasks").GetAll(r.Args(users)).OptArgs(r.GetAllOpts{Index: "user_id"}).
		Changes(r.ChangesOpts{IncludeTypes: true, IncludeStates: true})
}

// feedChan is a changefeed the test controls; it starts with the state
// document a real server sends first.
func feedChan() chan []any {
	ch := make(chan []any, 16)
	ch <- []any{map[string]any{"state": "ready"}}
	return ch
}

func taskDoc(user string, id, rev int64, task, version, device string, deleted bool) map[string]any {
	return map[string]any{"id": []any{user, id}, "user_id": user, "task_id": id, "task": task,
		"deleted": deleted, "version": version, "device_id": device, "rev": rev}
}

type changeLog struct{ ch chan feed.Change }

func (l *changeLog) sink(cs []feed.Change) {
	for _, c := range cs {
		l.ch <- c
	}
}

func (l *changeLog) next(t *testing.T) feed.Change {
	t.Helper()
	select {
	case c := <-l.ch:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no change delivered")
	}
	return feed.Change{}
}

func (l *changeLog) none(t *testing.T) {
	t.Helper()
	select {
	case c := <-l.ch:
		t.Fatalf("unexpected change %+v", c)
	default:
	}
}

func newMockStore(t *testing.T, m *r.Mock) (*rdbStore, *changeLog) {
	t.Helper()
	s, err := newRethinkStore(context.Background(), m, "kronos", feed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	log := &changeLog{ch: make(chan feed.Change, 64)}
	s.Subscribe(log.sink)
	return s, log
}

func TestRethinkSetupQueries(t *testing.T) {
	m := r.NewMock()
	expectSetup(m)
	s, _ := newMockStore(t, m)
	defer s.Close()
	m.AssertExpectations(t)
}

func TestRethinkSetupToleratesOtherNodes(t *testing.T) {
	m := r.NewMock()
	m.On(r.DBCreate("kronos")).Return(nil, fmt.Errorf("gorethink: Database `kronos` already exists."))
	for _, tb := range []string{"users", "devices", "tasks"} {
		m.On(r.DB("kronos").TableCreate(tb)).Return(nil, fmt.Errorf("Table `kronos.%s` already exists.", tb))
	}
	m.On(tbl("tasks").IndexCreate("user_id")).Return(nil, fmt.Errorf("Index `user_id` already exists on table `kronos.tasks`."))
	m.On(tbl("tasks").IndexWait("user_id")).Return(nil, nil)
	s, _ := newMockStore(t, m)
	s.Close()
}

func TestRethinkEventMapping(t *testing.T) {
	live := &rdbTask{UserID: "u", TaskID: 7, Task: `{"id":7,"desc":"x"}`, Version: `5`, Device: "d", Rev: 2}
	tomb := &rdbTask{UserID: "u", TaskID: 7, Deleted: true, Version: `6`, Device: "e", Rev: 3}
	for _, tc := range []struct {
		name string
		ev   rdbEvent
		kind feed.ChangeKind
	}{
		{"add", rdbEvent{Type: "add", NewVal: live}, feed.ChangeCreate},
		{"change", rdbEvent{Type: "change", NewVal: live, OldVal: live}, feed.ChangeUpdate},
		{"tombstone", rdbEvent{Type: "change", NewVal: tomb, OldVal: live}, feed.ChangeDelete},
		{"recreated over a tombstone", rdbEvent{Type: "change", NewVal: live, OldVal: tomb}, feed.ChangeCreate},
		{"tombstone rewritten", rdbEvent{Type: "change", NewVal: tomb, OldVal: tomb}, 0},
		{"tombstone pruned", rdbEvent{Type: "remove", OldVal: tomb}, 0},
	} {
		c, ok := changeFromEvent(&tc.ev)
		if tc.kind == 0 {
			if ok {
				t.Errorf("%s: got %+v, want nothing", tc.name, c)
			}
			continue
		}
		if !ok || c.Kind != tc.kind || c.TaskID != 7 || c.DeviceID != tc.ev.NewVal.Device ||
			string(c.Version) != tc.ev.NewVal.Version {
			t.Errorf("%s: got %+v", tc.name, c)
		}
		if tc.kind == feed.ChangeDelete && c.Task != nil || tc.kind != feed.ChangeDelete && string(c.Task) != live.Task {
			t.Errorf("%s: task %s", tc.name, c.Task)
		}
	}
}

// sameShard returns n user ids that fall in one feed shard.
func sameShard(s *rdbStore, n int) []string {
	var users []string
	for i := 0; len(users) < n; i++ {
		u := fmt.Sprintf("user-%03d", i)
		if len(users) == 0 || s.feeds.shard(u) == s.feeds.shard(users[0]) {
			users = append(users, u)
		}
	}
	return users
}

func TestRethinkFeedResubscribesWithoutLossOrDoubles(t *testing.T) {
	m := r.NewMock()
	expectSetup(m)
	s, log := newMockStore(t, m)
	defer s.Close()
	users := sameShard(s, 2)
	a, b := users[0], users[1]

	first := feedChan()
	m.On(feedQuery(a)).Return(first, nil).Once()
	if err := s.Watch(context.Background(), a, 0); err != nil {
		t.Fatal(err)
	}
	first <- []any{map[string]any{"type": "add", "new_val": taskDoc(a, 1, 1, `{"id":1}`, `10`, "dev-a", false), "old_val": nil}}
	if c := log.next(t); c.Kind != feed.ChangeCreate || c.UserID != a || c.TaskID != 1 || string(c.Version) != "10" {
		t.Fatalf("first feed: %+v", c)
	}

	// A second user of the same shard: a new feed over both opens before
	// the old one closes. A change in the overlap reaches both feeds.
	second := feedChan()
	m.On(feedQuery(a, b)).Return(second, nil).Once()
	if err := s.Watch(context.Background(), b, 0); err != nil {
		t.Fatal(err)
	}
	overlap := []any{map[string]any{"type": "change", "new_val": taskDoc(a, 1, 2, `{"id":1,"done":true}`, `11`, "dev-a", false),
		"old_val": taskDoc(a, 1, 1, `{"id":1}`, `10`, "dev-a", false)}}
	first <- overlap
	second <- overlap
	close(first) // the closed feed's cursor ends
	if c := log.next(t); c.Kind != feed.ChangeUpdate || string(c.Task) != `{"id":1,"done":true}` {
		t.Fatalf("overlap: %+v", c)
	}
	second <- []any{map[string]any{"type": "add", "new_val": taskDoc(b, 5, 1, `{"id":5}`, `3`, "dev-b", false), "old_val": nil}}
	if c := log.next(t); c.UserID != b || c.Kind != feed.ChangeCreate {
		t.Fatalf("second feed: %+v", c)
	}
	log.none(t) // the overlap's change came once
	second <- []any{map[string]any{"type": "change", "new_val": taskDoc(a, 1, 3, "", `12`, "dev-b", true),
		"old_val": taskDoc(a, 1, 2, `{"id":1,"done":true}`, `11`, "dev-a", false)}}
	if c := log.next(t); c.Kind != feed.ChangeDelete || c.DeviceID != "dev-b" || string(c.Version) != "12" {
		t.Fatalf("tombstone: %+v", c)
	}
	close(second)
	m.AssertExpectations(t)
}

func TestRethinkFeedLossAsksForResync(t *testing.T) {
	m := r.NewMock()
	expectSetup(m)
	s, log := newMockStore(t, m)
	defer s.Close()
	user := "user-lost"
	broken := feedChan()
	reopened := feedChan()
	m.On(feedQuery(user)).Return(broken, nil).Once()
	m.On(feedQuery(user)).Return(reopened, nil).Once()
	if err := s.Watch(context.Background(), user, 0); err != nil {
		t.Fatal(err)
	}

	// The feed reports that it skipped changes, then goes on.
	broken <- []any{map[string]any{"error": "Changefeed cache over array size limit, skipped 12 elements."}}
	if c := log.next(t); c.Kind != feed.ChangeResync || c.UserID != user {
		t.Fatalf("after skipped changes: %+v", c)
	}
	// The feed breaks: the devices must re-sync, and readiness fails
	// until the feed is open again.
	close(broken)
	if c := log.next(t); c.Kind != feed.ChangeResync || c.UserID != user {
		t.Fatalf("after the feed broke: %+v", c)
	}
	// Reopened with backoff; what happened meanwhile is lost, so again.
	if c := log.next(t); c.Kind != feed.ChangeResync {
		t.Fatalf("after reopening: %+v", c)
	}
	if err := s.Ready(context.Background()); err != nil {
		t.Fatalf("ready after reopening: %v", err)
	}
	reopened <- []any{map[string]any{"type": "add", "new_val": taskDoc(user, 2, 1, `{"id":2}`, `1`, "d", false), "old_val": nil}}
	if c := log.next(t); c.Kind != feed.ChangeCreate {
		t.Fatalf("reopened feed: %+v", c)
	}
	close(reopened)
	m.AssertExpectations(t)
}

func TestRethinkCreateQueries(t *testing.T) {
	m := r.NewMock()
	expectSetup(m)
	s, _ := newMockStore(t, m)
	defer s.Close()
	user := map[string]any{"id": "u1", "version": "4", "devices": 1, "tasks": 0}
	m.On(tbl("users").Get("u1")).Return(user, nil)
	m.On(tbl("tasks").Get([]any{"u1", int64(3)})).Return(nil, nil)
	doc := rdbTask{ID: []any{"u1", int64(3)}, UserID: "u1", TaskID: 3, Task: `{"id":3,"desc":"x"}`, Version: "5", Device: "d1", Rev: 1}
	insert := m.On(tbl("tasks").Insert(doc, r.InsertOpts{Conflict: func(_, old, new r.Term) any {
		return new.Merge(map[string]any{"rev": old.Field("rev").Add(1)})
	}})).Return(nil, nil)
	update := m.On(tbl("users").Get("u1").Update(map[string]any{"version": "5", "tasks": 1})).Return(nil, nil)
	err := s.Write(context.Background(), &feed.Write{Kind: feed.WriteCreate, UserID: "u1", DeviceID: "d1",
		Task: json.RawMessage(`{"id":3,"desc":"x"}`), Version: json.RawMessage(`5`)})
	if err != nil {
		t.Fatal(err)
	}
	m.AssertExecuted(t, insert)
	m.AssertExecuted(t, update)
}

func TestRethinkURL(t *testing.T) {
	cfg, err := parseRethinkURL("rethinkdb://admin:p%40ss@db1,db2:28016/tasks?max_open=20&discover=true&tls=true&tls_server_name=db")
	if err != nil {
		t.Fatal(err)
	}
	o := cfg.opts
	if o.Username != "admin" || o.Password != "p@ss" || o.Database != "tasks" || o.MaxOpen != 20 || !o.DiscoverHosts ||
		fmt.Sprint(o.Addresses) != "[db1:28015 db2:28016]" || o.TLSConfig == nil || o.TLSConfig.ServerName != "db" {
		t.Fatalf("%+v", o)
	}
	if cfg, _ := parseRethinkURL("rethinkdb://localhost"); cfg.opts.Database != "kronos" {
		t.Fatalf("default database %q", cfg.opts.Database)
	}
	for _, bad := range []string{"rethinkdb://", "rethinkdb://h?max_open=0", "rethinkdb://h?frob=1"} {
		if _, err := parseRethinkURL(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}
