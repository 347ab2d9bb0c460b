package node_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/bolt"
	"github.com/kronos-sync/kronos-server/internal/nodetest"
)

// smallDisk mounts a 4 MiB tmpfs for the test (root only; skipped
// elsewhere), unmounted when it ends.
func smallDisk(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: mounting a small tmpfs needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("SKIPPED: cannot mount a tmpfs here: %v %s", err, out)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// fill takes every free byte of the file system at dir.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	block := make([]byte, 64<<10)
	for {
		if _, err := f.Write(block); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return path
		}
	}
}

// A full disk is answered "storage unavailable", changes nothing, and makes
// /readyz fail until there is room again; then writes go on.
func TestFullDiskIsStorageUnavailable(t *testing.T) {
	dir := smallDisk(t)
	s, err := bolt.Open(filepath.Join(dir, "kronos.db"), feed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	n := nodetest.Start(t, nodetest.Options{Backend: &feed.Backend{Store: s, Feed: s}})
	c := loginTCP(t, n.Addr)
	big := strings.Repeat("x", 60<<10)
	send(t, c, map[string]any{"type": "create", "task": map[string]any{"id": 0, "desc": "before"}, "version": 1})
	expectType(t, c, "create")
	filler := fill(t, dir)

	// Big tasks make the file grow: the first write that needs room fails.
	var refused int
	for i := 1; i <= 64 && refused == 0; i++ {
		send(t, c, map[string]any{"type": "create", "task": map[string]any{"id": i, "desc": big}, "version": i + 1})
		m := next(t, c)
		switch {
		case m.Type() == "create" && m.Success():
		case !m.Success() && strings.Contains(m.Str("error"), "storage unavailable"):
			refused = i
		default:
			t.Fatalf("unexpected %v", m)
		}
	}
	if refused == 0 {
		t.Fatal("the disk never filled up")
	}
	if err := n.Ready(context.Background()); err == nil || !strings.Contains(err.Error(), "storage unavailable") {
		t.Fatalf("ready with a full disk: %v", err)
	}
	send(t, c, map[string]any{"type": "read-all"})
	m := expectType(t, c, "read-all")
	if got := len(m["tasks"].([]any)); got != refused || fmt.Sprint(m["version"]) != fmt.Sprint(refused) {
		t.Fatalf("after the refused write: %d tasks, version %v; want %d and %d", got, m["version"], refused, refused)
	}

	os.Remove(filler)
	if err := n.Ready(context.Background()); err != nil {
		t.Fatalf("not ready once the disk has room: %v", err)
	}
	send(t, c, map[string]any{"type": "create", "task": map[string]any{"id": 1000, "desc": "after"}, "version": 1000})
	expectType(t, c, "create")
}
