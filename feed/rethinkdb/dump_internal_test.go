package rethinkdb

import (
	"context"
	"fmt"
	"testing"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/internal/rethinktest"
)

// A dump of a user whose write-all a dead node left half applied gives the
// whole write-all, as read-all does, and writes nothing (a source is only
// read).
func TestDumpOfHalfAppliedWriteAll(t *testing.T) {
	s := openInternal(t, rethinktest.URL(t))
	ctx := context.Background()
	sess, err := s.Login(ctx, "", "")
	if err != nil {
		t.Fatal(err)
	}
	var before, after []feed.Task
	for i := range 6 {
		task, _ := feed.ParseTask(fmt.Appendf(nil, `{"id":%d,"v":"old"}`, i), 1<<20)
		before = append(before, task)
		task, _ = feed.ParseTask(fmt.Appendf(nil, `{"id":%d,"v":"new"}`, i+3), 1<<20)
		after = append(after, task)
	}
	if err := s.Write(ctx, &feed.Write{Kind: feed.WriteAll, UserID: sess.UserID, Tasks: before, Version: []byte(`1`)}); err != nil {
		t.Fatal(err)
	}
	user, rec := recordFor(t, s, &feed.Write{Kind: feed.WriteAll, UserID: sess.UserID, Tasks: after, Version: []byte(`2`)})
	insertRecord(t, s, rec)
	half := *rec
	half.Changes, half.Drop = rec.Changes[:2], nil
	applyTasksOnly(t, s, &half)

	want := feed.UserData{ID: sess.UserID, Version: []byte(`2`), Devices: []string{sess.DeviceID}, Tasks: after}
	dumped, err := s.DumpUsers(ctx, "", 10)
	if err != nil || len(dumped) != 1 || !dumped[0].Equal(&want) {
		t.Fatalf("dump of a half-applied write-all: %+v, %v", dumped, err)
	}
	found, err := s.LookupUsers(ctx, []string{sess.UserID})
	if err != nil || len(found) != 1 || !found[0].Equal(&want) {
		t.Fatalf("lookup of a half-applied write-all: %+v, %v", found, err)
	}
	var u userDoc
	if _, err := s.one(ctx, s.table(tableUsers).Get(sess.UserID), &u); err != nil || u.W != user.W {
		t.Fatalf("the dump moved the user: %+v, %v", u, err)
	}
}

// A load killed before its user document leaves task documents of a user
// that does not exist; loading the user again replaces them.
func TestLoadAfterAnInterruptedLoad(t *testing.T) {
	s := openInternal(t, rethinktest.URL(t))
	ctx := context.Background()
	id := feed.NewID()
	stale := map[string]any{"id": taskKey(id, 99), "user_id": id, "task_id": 99, "task": `{"id":99}`, "w": 0}
	if err := s.table(tableTasks).Insert(stale).Exec(s.exec); err != nil {
		t.Fatal(err)
	}
	if err := s.table(tableDevices).Insert(deviceDoc{ID: "dev-1", UserID: id}).Exec(s.exec); err != nil {
		t.Fatal(err)
	}
	if found, err := s.LookupUsers(ctx, []string{id}); err != nil || len(found) != 0 {
		t.Fatalf("a user without its document is visible: %+v, %v", found, err)
	}
	u := feed.UserData{ID: id, Version: []byte(`7`), Devices: []string{"dev-1", "dev-2"}, Tasks: []feed.Task{{ID: 1, Raw: []byte(`{"id":1}`)}}}
	if err := s.LoadUsers(ctx, []feed.UserData{u}); err != nil {
		t.Fatal(err)
	}
	found, err := s.LookupUsers(ctx, []string{id})
	if err != nil || len(found) != 1 || !found[0].Equal(&u) {
		t.Fatalf("after loading again: %+v, %v", found, err)
	}
	if sess, err := s.Login(ctx, id, "dev-2"); err != nil || sess.Seq != 0 || string(sess.Version) != "7" {
		t.Fatalf("login: %+v, %v", sess, err)
	}
}
