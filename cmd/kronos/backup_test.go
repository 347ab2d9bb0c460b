package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/internal/pgtest"
	"github.com/kronos-sync/kronos-server/node/client"
)

// kronos runs a subcommand of the real binary and returns its output.
func kronos(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return kronosEnv(t, nil, args...)
}

// kronosEnv is kronos with variables added to the environment.
func kronosEnv(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(kronosBinary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), errOut.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), errOut.String(), 0
}

const (
	backupWriters = 6
	backupTasks   = 40 // tasks in each write-all
	baseVersion   = 1800000000000
)

// writeAllSet is write-all number k of user u: backupTasks tasks whose ids
// and text name k, so that a restored state tells which write-all made it.
func writeAllSet(u, k int) string {
	var b strings.Builder
	for i := range backupTasks {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"id":%d,"desc":"user %d write-all %d task %d %s"}`, k*1000+i, u, k, i, strings.Repeat("x", 100))
	}
	return fmt.Sprintf(`{"type":"write-all","tasks":[%s],"version":%d}`, b.String(), baseVersion+k)
}

// A backup taken over the admin port while writers run write-alls over
// real sockets restores, into a new node, to a state some prefix of the
// writes produced: every user holds exactly one whole write-all, no older
// than the last one notified before the backup began and no newer than the
// last one sent before it ended.
func TestBackupWhileWritingRestoresAPrefix(t *testing.T) {
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "live", "kronos.db")
	srv := startServer(t, "--store", "bolt:"+dbPath, "--rate-limit", "100000", "--rate-burst", "100000")
	ctx := testContext(t)

	type writer struct {
		user, device   string
		sent, notified atomic.Int64  // write-alls sent, and notified back (whole)
		warm           chan struct{} // closed after two notified write-alls
		err            error
	}
	writers := make([]*writer, backupWriters)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for u := range writers {
		c, err := client.Dial(ctx, client.TCP, srv.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		login, err := c.Login("", "", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		w := &writer{user: login.Str("user_id"), device: login.Str("device_id"), warm: make(chan struct{})}
		writers[u] = w
		wg.Go(func() {
			for k := 1; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				w.sent.Store(int64(k)) // before the send: a write not counted here cannot be in the copy
				if w.err = c.SendRaw([]byte(writeAllSet(u, k))); w.err != nil {
					return
				}
				// The write-all's last notification is the create of its
				// highest id (deletes, updates, then creates, in id order).
				for last := false; !last; {
					m, err := c.Next(10 * time.Second)
					if err != nil {
						w.err = fmt.Errorf("write-all %d: %w", k, err)
						return
					}
					task, _ := m["task"].(map[string]any)
					last = m.Type() == "create" && task["id"] == float64(k*1000+backupTasks-1)
				}
				if w.notified.Store(int64(k)); k == 2 {
					close(w.warm)
				}
			}
		})
	}
	for _, w := range writers {
		select {
		case <-w.warm:
		case <-ctx.Done():
			t.Fatalf("writers did not start: %v", w.err)
		}
	}
	lo := make([]int64, len(writers))
	for i, w := range writers {
		lo[i] = w.notified.Load()
	}
	backups := filepath.Join(dir, "backups") + "/"
	out, errOut, code := kronos(t, "backup", "--admin", srv.admin, "--out", backups)
	hi := make([]int64, len(writers))
	for i, w := range writers {
		hi[i] = w.sent.Load()
	}
	if code != 0 {
		t.Fatalf("kronos backup: exit %d\n%s%s", code, out, errOut)
	}
	files, _ := filepath.Glob(backups + "kronos-*.db")
	if len(files) != 1 || !strings.Contains(out, files[0]) {
		t.Fatalf("backup files %q; output %s", files, out)
	}

	// A running node's file is not replaced.
	if _, errOut, code := kronos(t, "restore", "--from", files[0], "--store", "bolt:"+dbPath); code != 1 || !strings.Contains(errOut, "in use") {
		t.Fatalf("restore onto a running node: exit %d, %s", code, errOut)
	}
	close(stop)
	wg.Wait()
	for _, w := range writers {
		if w.err != nil {
			t.Fatalf("writer: %v", w.err)
		}
	}

	restored := filepath.Join(dir, "restored", "kronos.db")
	if out, errOut, code := kronos(t, "restore", "--from", files[0], "--store", "bolt:"+restored); code != 0 {
		t.Fatalf("kronos restore: exit %d\n%s%s", code, out, errOut)
	}
	srv2 := startServer(t, "--store", "bolt:"+restored)
	for u, w := range writers {
		c, err := client.Dial(ctx, client.WebSocket, srv2.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Login(w.user, w.device, 5*time.Second); err != nil {
			t.Fatalf("restored user %d: %v", u, err)
		}
		if err := c.Send(map[string]any{"type": "read-all"}); err != nil {
			t.Fatal(err)
		}
		all, err := c.Next(5 * time.Second)
		if err != nil || all.Type() != "read-all" {
			t.Fatalf("read-all: %v %v", all, err)
		}
		k := int64(all["version"].(float64)) - baseVersion
		if k < lo[u] || k > hi[u] {
			t.Fatalf("user %d restored at write-all %d, outside [%d, %d]", u, k, lo[u], hi[u])
		}
		tasks := all["tasks"].([]any)
		if len(tasks) != backupTasks {
			t.Fatalf("user %d: %d tasks restored, want the %d of one write-all", u, len(tasks), backupTasks)
		}
		for i, v := range tasks {
			task := v.(map[string]any)
			if task["id"] != float64(k*1000+int64(i)) || !strings.HasPrefix(task["desc"].(string), fmt.Sprintf("user %d write-all %d task %d ", u, k, i)) {
				t.Fatalf("user %d, version of write-all %d, holds task %v: a torn write-all", u, k, task)
			}
		}
		t.Logf("user %d: restored at write-all %d (notified before the backup %d, sent by its end %d)", u, k, lo[u], hi[u])
	}
}

func TestBackupAndRestoreRefusals(t *testing.T) {
	dir := t.TempDir()
	// A shared store has tools of its own.
	srv := startServer(t, "--store", pgtest.URL(t))
	if _, errOut, code := kronos(t, "backup", "--admin", srv.admin, "--out", filepath.Join(dir, "x.db")); code != 1 ||
		!strings.Contains(errOut, "501") || !strings.Contains(errOut, "pg_dump") {
		t.Fatalf("backup of a PostgreSQL node: exit %d, %s", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "x.db")); !os.IsNotExist(err) {
		t.Fatal("a refused backup left a file")
	}
	// Only a whole Kronos store is restored.
	junk := filepath.Join(dir, "junk.db")
	os.WriteFile(junk, []byte(strings.Repeat("not a database ", 1000)), 0o600)
	target := filepath.Join(dir, "node", "kronos.db")
	if _, errOut, code := kronos(t, "restore", "--from", junk, "--store", "bolt:"+target); code != 1 || !strings.Contains(errOut, "not a whole Kronos store") {
		t.Fatalf("restore of junk: exit %d, %s", code, errOut)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Fatal("a refused restore left a file")
	}
	if _, _, code := kronos(t, "restore", "--from", junk, "--store", "postgres://x"); code != 2 {
		t.Fatalf("restore to a shared store: exit %d, want 2 (usage)", code)
	}
}

// --keep keeps the newest backups of a directory; a restore over an
// existing file keeps the old one beside it.
func TestBackupKeepAndRestoreKeepsReplaced(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "live.db")
	srv := startServer(t, "--store", "bolt:"+live)
	backups := filepath.Join(dir, "backups")
	os.MkdirAll(backups, 0o750)
	var made []string
	for range 3 {
		out, errOut, code := kronos(t, "backup", "--admin", srv.admin, "--out", backups, "--keep", "2")
		if code != 0 {
			t.Fatalf("backup: %d %s%s", code, out, errOut)
		}
		made = append(made, strings.Fields(out)[1])
	}
	files, _ := filepath.Glob(filepath.Join(backups, "*"))
	if want := []string{strings.TrimSuffix(made[1], ","), strings.TrimSuffix(made[2], ",")}; strings.Join(files, " ") != strings.Join(want, " ") {
		t.Fatalf("kept %q, want the two newest %q", files, want)
	}
	srv.stop(t)
	out, errOut, code := kronos(t, "restore", "--from", files[0], "--store", "bolt:"+live)
	if code != 0 || !strings.Contains(out, "kept as "+live+".replaced-") {
		t.Fatalf("restore over a stopped node's file: %d %s%s", code, out, errOut)
	}
}
