package stores_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/stores"
)

func TestOpenRejectsUnknownScheme(t *testing.T) {
	_, err := stores.Open(t.Context(), "mongodb://u:secret@h/db", feed.Options{})
	if err == nil {
		t.Fatal("unknown scheme accepted")
	}
	if got := err.Error(); strings.Contains(got, "secret") {
		t.Fatalf("error leaks the password: %q", got)
	}
}

func TestOpenBolt(t *testing.T) {
	b, err := stores.Open(t.Context(), "bolt:"+filepath.Join(t.TempDir(), "k.db"), feed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Store.Ready(t.Context()); err != nil {
		t.Fatal(err)
	}
	b.Store.Close()
}
