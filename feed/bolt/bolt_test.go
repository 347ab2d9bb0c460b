package bolt_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/bolt"
	"github.com/kronos-sync/kronos-server/feed/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, opts feed.Options) feed.Backend {
		s, err := bolt.Open(filepath.Join(t.TempDir(), "kronos.db"), opts)
		if err != nil {
			t.Fatal(err)
		}
		return feed.Backend{Store: s, Feed: s}
	})
}

// openWithUser opens a store at path with a recording Sink and logs in a
// new user. The test closes the store.
func openWithUser(t *testing.T, path string) (*bolt.Store, *storetest.Recorder, feed.Session) {
	t.Helper()
	s, err := bolt.Open(path, feed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rec := storetest.NewRecorder()
	s.Subscribe(rec.Sink)
	sess, err := s.Login(t.Context(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	return s, rec, sess
}

func TestReopenKeepsData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "dir", "kronos.db")
	s, rec, sess := openWithUser(t, path)
	if err := s.Write(t.Context(), &feed.Write{Kind: feed.WriteCreate, UserID: sess.UserID,
		Task: []byte(`{"id":1,"desc":"x"}`), Version: []byte(`42`)}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if len(rec.Changes(sess.UserID)) != 1 {
		t.Fatal("Close returned before the change was delivered")
	}
	s, err := bolt.Open(path, feed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	snap, err := s.ReadAll(t.Context(), sess.UserID)
	if err != nil || len(snap.Tasks) != 1 || string(snap.Version) != "42" || snap.Seq != 1 {
		t.Fatalf("after reopen: %+v, %v", snap, err)
	}
	again, err := s.Login(t.Context(), sess.UserID, sess.DeviceID)
	if err != nil {
		t.Fatalf("device lost after reopen: %v", err)
	}
	if again.Seq != 1 {
		t.Fatalf("change sequence after reopen = %d, want 1", again.Seq)
	}
}

func TestOpenRefusesBadOptions(t *testing.T) {
	_, err := bolt.Open(filepath.Join(t.TempDir(), "k.db"), feed.Options{Limits: feed.Limits{MaxTaskBytes: -1}})
	if err == nil {
		t.Fatal("a negative task size limit was accepted")
	}
}

// A file written before devices had a last-seen time (devices map to their
// user, no device_seen bucket) opens, its devices log in, and at the limit
// a device never seen since is the first retired.
func TestFileWithoutLastSeen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kronos.db")
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		put := func(bucket, k, v string) error {
			b, err := tx.CreateBucketIfNotExists([]byte(bucket))
			if err == nil {
				err = b.Put([]byte(k), []byte(v))
			}
			return err
		}
		if _, err := tx.CreateBucket([]byte("tasks")); err != nil {
			return err
		}
		return errors.Join(
			put("users", "user-1", `{"version":7,"seq":0,"tasks":0,"devices":2}`),
			put("devices", "dev-old", "user-1"),
			put("devices", "dev-used", "user-1"),
		)
	})
	if err == nil {
		err = db.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	s, err := bolt.Open(path, feed.Options{Limits: feed.Limits{MaxDevicesPerUser: 2}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	if _, err := s.Login(ctx, "user-1", "dev-used"); err != nil {
		t.Fatalf("login of a device from the old file: %v", err)
	}
	sess, err := s.Login(ctx, "user-1", "")
	if err != nil || !sess.NewDevice || string(sess.Version) != "7" {
		t.Fatalf("new device at the limit: %+v, %v", sess, err)
	}
	if _, err := s.Login(ctx, "user-1", "dev-old"); !feed.IsCode(err, feed.CodeDeviceNotFound) {
		t.Fatalf("the never-seen device was not retired: %v", err)
	}
	if _, err := s.Login(ctx, "user-1", "dev-used"); err != nil {
		t.Fatalf("the device seen now was retired: %v", err)
	}
}

// WriteAsync calls done once per write, once it is durable and before its
// changes reach the Sink (a writer learns each outcome, and the Seq of its
// change, before the notification); a refused write gets its refusal and
// changes nothing; a closed store takes no write and never calls done.
func TestWriteAsync(t *testing.T) {
	s, rec, sess := openWithUser(t, filepath.Join(t.TempDir(), "kronos.db"))
	const writes = 50
	type outcome struct {
		err       error
		seq       uint64 // the write's Seq when done ran
		delivered bool   // the Sink had the write's change when done ran
	}
	outcomes := make(chan outcome, writes+1)
	for i := range writes {
		w := &feed.Write{Kind: feed.WriteCreate, UserID: sess.UserID,
			Task: fmt.Appendf(nil, `{"id":%d,"desc":"x"}`, i), Version: []byte(`1`)}
		seq := uint64(i + 1)
		err := s.WriteAsync(t.Context(), w, func(err error) {
			delivered := false
			for _, c := range rec.Changes(sess.UserID) {
				delivered = delivered || c.Seq == seq
			}
			outcomes <- outcome{err, w.Seq, delivered}
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range writes {
		o := <-outcomes
		if o.err != nil || o.seq != uint64(i+1) || o.delivered {
			t.Fatalf("write %d: done(%v) with Seq %d, its change delivered already: %v", i+1, o.err, o.seq, o.delivered)
		}
	}
	if got := rec.Wait(t, sess.UserID, writes); got[writes-1].Seq != writes {
		t.Fatalf("last change delivered: %+v", got[writes-1])
	}
	missing := &feed.Write{Kind: feed.WriteDelete, UserID: sess.UserID, TaskID: 999, Version: []byte(`2`)}
	if err := s.WriteAsync(t.Context(), missing, func(err error) { outcomes <- outcome{err: err} }); err != nil {
		t.Fatal(err)
	}
	var fe *feed.Error
	if o := <-outcomes; !errors.As(o.err, &fe) {
		t.Fatalf("deleting a missing task: done(%v), want a refusal", o.err)
	}
	snap, err := s.ReadAll(t.Context(), sess.UserID)
	if err != nil || len(snap.Tasks) != writes || string(snap.Version) != "1" || snap.Seq != writes {
		t.Fatalf("after the writes: %d tasks, version %s, seq %d, %v", len(snap.Tasks), snap.Version, snap.Seq, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	err = s.WriteAsync(t.Context(), missing, func(error) { t.Error("done called for a write a closed store refused") })
	if !errors.Is(err, bolt.ErrClosed) {
		t.Fatalf("WriteAsync after Close: %v, want ErrClosed", err)
	}
}
