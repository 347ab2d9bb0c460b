package feed_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/storetest"
)

func TestBoltConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, limits feed.Limits) feed.Store {
		s, err := feed.OpenBolt(filepath.Join(t.TempDir(), "kronos.db"), feed.Options{Limits: limits})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestBoltReopenKeepsData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "dir", "kronos.db")
	s, err := feed.OpenBolt(path, feed.Options{})
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
	s, err = feed.OpenBolt(path, feed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	snap, err := s.ReadAll(t.Context(), sess.UserID)
	if err != nil || len(snap.Tasks) != 1 || string(snap.Version) != "42" {
		t.Fatalf("after reopen: %+v, %v", snap, err)
	}
	if _, err := s.Login(t.Context(), sess.UserID, sess.DeviceID); err != nil {
		t.Fatalf("device lost after reopen: %v", err)
	}
}

func TestOpenRejectsUnknownScheme(t *testing.T) {
	_, err := feed.Open(t.Context(), "mongodb://u:secret@h/db", feed.Options{})
	if err == nil {
		t.Fatal("unknown scheme accepted")
	}
	if got := err.Error(); strings.Contains(got, "secret") {
		t.Fatalf("error leaks the password: %q", got)
	}
}
