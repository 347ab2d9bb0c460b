package bolt_test

import (
	"path/filepath"
	"testing"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/bolt"
	"github.com/kronos-sync/kronos-server/feed/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, limits feed.Limits) feed.Backend {
		s, err := bolt.Open(filepath.Join(t.TempDir(), "kronos.db"), feed.Options{Limits: limits})
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
