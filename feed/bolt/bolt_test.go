package bolt_test

import (
	"errors"
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

func TestReopenKeepsData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "dir", "kronos.db")
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
	s, err = bolt.Open(path, feed.Options{})
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
