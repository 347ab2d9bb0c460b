package rethinkdb

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	r "gopkg.in/rethinkdb/rethinkdb-go.v6"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/internal/rethinktest"
)

func openInternal(t *testing.T, url string) *Store {
	t.Helper()
	s, err := Open(context.Background(), url, feed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// A node that died after committing a write-all's record, half way through
// applying it: a reader on another node sees the whole write-all, never
// half, and completes it.
func TestHalfAppliedWriteAllIsWhole(t *testing.T) {
	url := rethinktest.URL(t)
	s := openInternal(t, url)
	ctx := context.Background()
	sess, err := s.Login(ctx, "", "")
	if err != nil {
		t.Fatal(err)
	}
	var before, after []feed.Task
	for i := range 6 {
		task, _ := feed.ParseTask([]byte(fmt.Sprintf(`{"id":%d,"v":"old"}`, i)), 1<<20)
		before = append(before, task)
		task, _ = feed.ParseTask([]byte(fmt.Sprintf(`{"id":%d,"v":"new"}`, i+3)), 1<<20)
		after = append(after, task)
	}
	if err := s.Write(ctx, &feed.Write{Kind: feed.WriteAll, UserID: sess.UserID, Tasks: before, Version: []byte(`1`)}); err != nil {
		t.Fatal(err)
	}
	// What Write does up to the commit, then the first two task documents
	// of the application, then the crash.
	user, rec := recordFor(t, s, &feed.Write{Kind: feed.WriteAll, UserID: sess.UserID, Tasks: after, Version: []byte(`2`)})
	insertRecord(t, s, rec)
	half := *rec
	half.Changes, half.Drop = rec.Changes[:2], nil
	half.W = rec.W // applies as record W, but only two of its tasks
	if err := s.table(tableUsers).Get(sess.UserID).Update(map[string]any{"w": user.W}).Exec(s.exec); err != nil {
		t.Fatal(err)
	}
	applyTasksOnly(t, s, &half)

	other := openInternal(t, url)
	snap, err := other.ReadAll(ctx, sess.UserID)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Tasks) != 6 || string(snap.Version) != "2" {
		t.Fatalf("read-all during the application: %d tasks, version %s", len(snap.Tasks), snap.Version)
	}
	for i, task := range snap.Tasks {
		if want := fmt.Sprintf(`{"id":%d,"v":"new"}`, i+3); string(task) != want {
			t.Fatalf("task %d = %s, want %s (half a write-all)", i, task, want)
		}
	}
	// The read completed the application for good.
	var u userDoc
	if _, err := s.one(ctx, s.table(tableUsers).Get(sess.UserID), &u); err != nil || u.W != rec.W || u.Tasks != 6 {
		t.Fatalf("user after the read: %+v, %v", u, err)
	}
}

// recordFor rolls the user forward and builds w's record on that state, as
// Write does before its commit, and returns both.
func recordFor(t *testing.T, s *Store, w *feed.Write) (userDoc, *recordDoc) {
	t.Helper()
	ctx := context.Background()
	user, err := s.rollForward(ctx, w.UserID)
	if err != nil {
		t.Fatal(err)
	}
	tx := &userTx{s: s, ctx: ctx, userID: w.UserID, version: json.RawMessage(user.Version),
		TaskCounter: feed.NewTaskCounter(user.Tasks), deleted: map[int64]bool{}}
	changes, err := feed.Apply(tx, w, s.limits)
	if err != nil {
		t.Fatal(err)
	}
	return user, tx.record(user, w, changes)
}

// insertRecord commits rec without applying it: a node that died right after
// its commit, or one whose application has not begun.
func insertRecord(t *testing.T, s *Store, rec *recordDoc) {
	t.Helper()
	if err := s.table(tableWrites).Insert(r.Expr(rec).Merge(map[string]any{"at": r.Now()})).Exec(s.exec); err != nil {
		t.Fatal(err)
	}
}

// applyTasksOnly writes a record's task documents without moving the user:
// a node that died in the middle of applyRecord.
func applyTasksOnly(t *testing.T, s *Store, rec *recordDoc) {
	t.Helper()
	for _, op := range rec.ops() {
		doc := map[string]any{"id": []any{rec.UserID, op["id"]}, "user_id": rec.UserID, "task_id": op["id"], "task": op["t"], "w": rec.W}
		if err := s.table(tableTasks).Insert(doc, r.InsertOpts{Conflict: "replace"}).Exec(s.exec); err != nil {
			t.Fatal(err)
		}
	}
}

// The feed keeps state for watched users only, whatever the number of
// tasks and writes: nothing is left once they are unwatched.
func TestFeedForgetsUnwatchedUsers(t *testing.T) {
	s := openInternal(t, rethinktest.URL(t))
	s.Subscribe(func([]feed.Change) {})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var users []string
	for range 20 {
		sess, err := s.Login(ctx, "", "")
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Watch(ctx, sess.UserID, sess.Seq); err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			if err := s.Write(ctx, &feed.Write{Kind: feed.WriteCreate, UserID: sess.UserID,
				Task: []byte(fmt.Sprintf(`{"id":%d}`, i))}); err != nil {
				t.Fatal(err)
			}
		}
		users = append(users, sess.UserID)
	}
	for _, u := range users {
		s.Unwatch(u)
	}
	s.feed.mu.Lock()
	defer s.feed.mu.Unlock()
	left := len(s.feed.users)
	for _, sh := range s.feed.shards {
		left += len(sh.users) + len(sh.catchUp)
	}
	if left != 0 {
		t.Fatalf("%d entries left after every user was unwatched", left)
	}
}

// The schema set-up, exactly (on the driver's mock: a real server cannot
// show which queries were sent).
func TestSetupQueries(t *testing.T) {
	m := r.NewMock()
	tbl := func(name string) r.Term { return r.DB("kronos").Table(name) }
	m.On(r.DBCreate("kronos")).Return(nil, nil)
	for _, name := range []string{"users", "devices", "tasks", "writes"} {
		m.On(r.DB("kronos").TableCreate(name, r.TableCreateOpts{Durability: "hard"})).Return(nil, nil)
	}
	m.On(tbl("tasks").IndexCreate("user_id")).Return(nil, nil)
	m.On(tbl("tasks").IndexCreate("deleted_at")).Return(nil, nil)
	m.On(tbl("writes").IndexCreate("user_id")).Return(nil, nil)
	m.On(tbl("writes").IndexCreate("at")).Return(nil, fmt.Errorf("Index `at` already exists on table `kronos.writes`."))
	m.On(tbl("writes").IndexCreateFunc("user_last", func(row r.Term) any {
		return []any{row.Field("user_id"), row.Field("last")}
	})).Return(nil, nil)
	m.On(tbl("tasks").IndexWait()).Return(nil, nil)
	m.On(tbl("writes").IndexWait()).Return(nil, nil)
	s := &Store{exec: m, db: "kronos"}
	if err := s.setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	m.AssertExpectations(t)
}

func TestURL(t *testing.T) {
	cfg, err := parseRethinkURL("rethinkdb://admin:p%40ss@db1,db2:28016/tasks?max_open=20&discover=true&tls=true&tls_server_name=db&initial_cap=3")
	if err != nil {
		t.Fatal(err)
	}
	o := cfg.opts
	if o.Username != "admin" || o.Password != "p@ss" || o.Database != "tasks" || o.MaxOpen != 20 || !o.DiscoverHosts ||
		fmt.Sprint(o.Addresses) != "[db1:28015 db2:28016]" || o.TLSConfig == nil || o.TLSConfig.ServerName != "db" || o.InitialCap != 3 {
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

// Device documents from before last-seen times (no "seen" field) log in,
// and at the limit one never seen since is the first retired.
func TestDeviceWithoutLastSeen(t *testing.T) {
	s, err := Open(context.Background(), rethinktest.URL(t), feed.Options{Limits: feed.Limits{MaxDevicesPerUser: 2}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()
	id := feed.NewID()
	user := map[string]any{"id": id, "version": "7", "w": 0, "seq": 0, "tasks": 0, "devices": 2}
	devices := []map[string]any{{"id": "dev-old", "user_id": id}, {"id": "dev-used", "user_id": id}}
	if err := s.table(tableUsers).Insert(user).Exec(s.exec); err != nil {
		t.Fatal(err)
	}
	if err := s.table(tableDevices).Insert(devices).Exec(s.exec); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Login(ctx, id, "dev-used"); err != nil {
		t.Fatalf("login of a device without last-seen: %v", err)
	}
	if sess, err := s.Login(ctx, id, ""); err != nil || !sess.NewDevice {
		t.Fatalf("new device at the limit: %+v, %v", sess, err)
	}
	if _, err := s.Login(ctx, id, "dev-old"); !feed.IsCode(err, feed.CodeDeviceNotFound) {
		t.Fatalf("the never-seen device was not retired: %v", err)
	}
	var u userDoc
	if _, err := s.one(ctx, s.table(tableUsers).Get(id), &u); err != nil || u.Devices != 2 {
		t.Fatalf("device count after a retirement: %+v, %v", u, err)
	}
}

// RethinkDB shows a record to readers before it has flushed it; a server
// that crashed before the flush has lost it when it restarts. Between the
// read of a user's pending records and their use, the test's hook does to
// the record what such a crash does: removes it, or lets another write take
// its key (another nonce). Neither a read-all nor a writer's roll-forward
// may then use it; once a record is on disk, both do. A record that another
// node applied and the pruner then deleted in that window is not lost: the
// user is read again, and has it.
func TestPendingRecordsOnlyOnceOnDisk(t *testing.T) {
	url := rethinktest.URL(t)
	ctx := context.Background()
	for _, crash := range []string{"lost", "key taken", "applied and pruned"} {
		t.Run(crash, func(t *testing.T) {
			s := openInternal(t, url)
			sess, err := s.Login(ctx, "", "")
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Write(ctx, &feed.Write{Kind: feed.WriteCreate, UserID: sess.UserID, Task: []byte(`{"id":1,"v":"kept"}`), Version: []byte(`1`)}); err != nil {
				t.Fatal(err)
			}
			before, err := s.ReadAll(ctx, sess.UserID)
			if err != nil {
				t.Fatal(err)
			}
			// A writer on another node inserts its record; it is not applied.
			user, rec := recordFor(t, s, &feed.Write{Kind: feed.WriteCreate, UserID: sess.UserID,
				Task: []byte(`{"id":2,"v":"second"}`), Version: []byte(`2`)})
			crashes := 0
			crashOnce := func() {
				hook := func() {
					s.afterPendingRead.Store(nil)
					crashes++
					switch crash {
					case "key taken":
						err = s.table(tableWrites).Get(rec.ID).Update(map[string]any{"n": rec.Nonce + 1}).Exec(s.exec)
					case "applied and pruned":
						if err = s.applyRecord(ctx, rec); err == nil {
							err = s.table(tableWrites).Get(rec.ID).Delete().Exec(s.exec)
						}
					default:
						err = s.table(tableWrites).Get(rec.ID).Delete().Exec(s.exec)
					}
					if err != nil {
						t.Error(err)
					}
				}
				s.afterPendingRead.Store(&hook)
			}
			insertRecord(t, s, rec)
			crashOnce()

			snap, err := s.ReadAll(ctx, sess.UserID)
			if err != nil {
				t.Fatal(err)
			}
			if crashes != 1 {
				t.Fatalf("the hook ran %d times", crashes)
			}
			if crash == "applied and pruned" {
				if len(snap.Tasks) != 2 || snap.Seq != rec.Last || string(snap.Version) != "2" {
					t.Fatalf("read-all lost a record applied meanwhile: %d tasks %q, seq %d (want %d), version %s",
						len(snap.Tasks), snap.Tasks, snap.Seq, rec.Last, snap.Version)
				}
				// The next write follows it, under the next record number.
				next := &feed.Write{Kind: feed.WriteCreate, UserID: sess.UserID, Task: []byte(`{"id":3}`), Version: []byte(`3`)}
				if err := s.Write(ctx, next); err != nil {
					t.Fatal(err)
				}
				if next.Seq != rec.Last+1 {
					t.Fatalf("the next write took seq %d, want %d", next.Seq, rec.Last+1)
				}
				return
			}
			if len(snap.Tasks) != 1 || string(snap.Tasks[0]) != `{"id":1,"v":"kept"}` || snap.Seq != before.Seq || string(snap.Version) != "1" {
				t.Fatalf("read-all showed a record not on disk: %d tasks %q, seq %d (before %d), version %s",
					len(snap.Tasks), snap.Tasks, snap.Seq, before.Seq, snap.Version)
			}

			if crash == "lost" {
				// The same crash under a writer's roll-forward: the user
				// stays where it was, and no task document moves.
				insertRecord(t, s, rec)
				crashOnce()
				rolled, err := s.rollForward(ctx, sess.UserID)
				if err != nil {
					t.Fatal(err)
				}
				if rolled.W != user.W {
					t.Fatalf("roll-forward moved the user to record %d, lost; it was at %d", rolled.W, user.W)
				}
				var docs []taskDoc
				if err := s.all(ctx, s.table(tableTasks).GetAll(sess.UserID).OptArgs(r.GetAllOpts{Index: indexUser}), &docs); err != nil {
					t.Fatal(err)
				}
				if len(docs) != 1 {
					t.Fatalf("%d task documents after the roll-forward, want 1", len(docs))
				}
				return
			}
			// The record that took the key is on disk: it is read and applied.
			snap, err = s.ReadAll(ctx, sess.UserID)
			if err != nil {
				t.Fatal(err)
			}
			if len(snap.Tasks) != 2 || snap.Seq != rec.Last || string(snap.Version) != "2" {
				t.Fatalf("read-all after the record was on disk: %d tasks, seq %d (want %d), version %s", len(snap.Tasks), snap.Seq, rec.Last, snap.Version)
			}
			if u, err := s.rollForward(ctx, sess.UserID); err != nil || u.W != rec.W {
				t.Fatalf("user after the read: W %d (want %d), %v", u.W, rec.W, err)
			}
		})
	}
}
