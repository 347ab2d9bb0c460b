package main

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/bolt"
	"github.com/kronos-sync/kronos-server/feed/stores"
	"github.com/kronos-sync/kronos-server/node/client"
)

// seedBolt makes a bbolt store of users, through the store's write path
// (from a few goroutines, so that commits are grouped), and closes it.
func seedBolt(t *testing.T, path string, users int) {
	t.Helper()
	s, err := bolt.Open(path, feed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, users)
	for g := range 8 {
		wg.Go(func() {
			for u := g; u < users; u += 8 {
				sess, err := s.Login(ctx, "", "")
				if err != nil {
					errs <- err
					return
				}
				var tasks []feed.Task
				for i := range u % 7 {
					tasks = append(tasks, feed.Task{ID: int64(i), Raw: fmt.Appendf(nil, `{"id":%d,"desc":"user %d task %d","start":1.50}`, i, u, i)})
				}
				errs <- s.Write(ctx, &feed.Write{Kind: feed.WriteAll, UserID: sess.UserID, DeviceID: sess.DeviceID,
					Tasks: tasks, Version: fmt.Appendf(nil, `%d`, baseVersion+u)})
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// openStore opens a store in the test process (no node on it).
func openTestStore(t *testing.T, url string) migrateStore {
	t.Helper()
	b, err := stores.Open(context.Background(), url, feed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return b.Store.(migrateStore)
}

// dumpStore reads every user of a store, sorted by id.
func dumpStore(t *testing.T, url string) []feed.UserData {
	t.Helper()
	s := openTestStore(t, url)
	defer s.Close()
	var all []feed.UserData
	for after := ""; ; {
		page, err := s.DumpUsers(context.Background(), after, 100)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page...)
		if len(page) < 100 {
			break
		}
		after = page[len(page)-1].ID
	}
	slices.SortFunc(all, func(a, b feed.UserData) int { return strings.Compare(a.ID, b.ID) })
	return all
}

func sameUsers(t *testing.T, a, b []feed.UserData) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("%d users, then %d", len(a), len(b))
	}
	for i := range a {
		if !a[i].Equal(&b[i]) {
			t.Fatalf("user %s differs:\n%+v\n%+v", a[i].ID, a[i], b[i])
		}
	}
}

var copiedLine = regexp.MustCompile(`users: (\d+) copied, (\d+) already there`)

// migrateOK runs kronos migrate and returns how many users it copied and
// skipped.
func migrateOK(t *testing.T, args ...string) (copied, skipped int) {
	t.Helper()
	out, errOut, code := kronos(t, append([]string{"migrate"}, args...)...)
	m := copiedLine.FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("kronos migrate %q: exit %d\n%s%s", args, code, out, errOut)
	}
	copied, _ = strconv.Atoi(m[1])
	skipped, _ = strconv.Atoi(m[2])
	return copied, skipped
}

var progressLine = regexp.MustCompile(`^progress: (\d+)/(\d+) users \(\d+%\), (\d+) copied`)

// kronos migrate killed with SIGKILL half way resumes when run again: it
// skips what was copied, copies the rest, and the target then equals the
// source; run once more, it copies nothing. Without --merge, a target with
// other data is refused.
func TestMigrateResumesAfterKill(t *testing.T) {
	const users = 1500
	src := "bolt:" + filepath.Join(t.TempDir(), "source.db")
	seedBolt(t, strings.TrimPrefix(src, "bolt:"), users)
	want := dumpStore(t, src)
	for _, st := range sharedStores {
		t.Run(st.name, func(t *testing.T) {
			dst := st.url(t)
			cmd := exec.Command(kronosBinary(t), "migrate", "--from", src, "--to", dst, "--page-size", "25")
			stderr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			sc := bufio.NewScanner(stderr)
			killed := false
			for sc.Scan() {
				if m := progressLine.FindStringSubmatch(sc.Text()); m != nil {
					if done, _ := strconv.Atoi(m[1]); done < users/3 {
						continue
					}
					cmd.Process.Kill() // SIGKILL, a third of the way
					killed = true
					break
				}
			}
			for sc.Scan() {
			}
			cmd.Wait()
			if !killed {
				t.Fatal("kronos migrate showed no progress before it ended")
			}
			s := openTestStore(t, dst)
			c, err := s.Count(context.Background())
			s.Close()
			if err != nil || c.Users == 0 || c.Users >= users {
				t.Fatalf("after the kill the target holds %+v (%v): not midway", c, err)
			}
			t.Logf("killed with %d of %d users copied", c.Users, users)

			copied, skipped := migrateOK(t, "--from", src, "--to", dst)
			if copied == 0 || skipped == 0 || copied+skipped != users {
				t.Fatalf("resumed: %d copied, %d skipped; want the rest copied and what was done skipped", copied, skipped)
			}
			sameUsers(t, want, dumpStore(t, dst))
			// Again, the URLs from the environment (kept out of process listings).
			out, errOut, code := kronosEnv(t, []string{"KRONOS_MIGRATE_FROM=" + src, "KRONOS_MIGRATE_TO=" + dst}, "migrate")
			if m := copiedLine.FindStringSubmatch(out); code != 0 || m == nil || m[1] != "0" || m[2] != strconv.Itoa(users) {
				t.Fatalf("again: exit %d\n%s%s", code, out, errOut)
			}
			sameUsers(t, want, dumpStore(t, dst))

			other := "bolt:" + filepath.Join(t.TempDir(), "other.db")
			seedBolt(t, strings.TrimPrefix(other, "bolt:"), 3)
			if out, errOut, code := kronos(t, "migrate", "--from", other, "--to", dst); code != 1 || !strings.Contains(errOut, "holds other data") {
				t.Fatalf("a target with other data: exit %d\n%s%s", code, out, errOut)
			}
			if copied, _ := migrateOK(t, "--from", other, "--to", dst, "--merge"); copied != 3 {
				t.Fatalf("merge copied %d users, want 3", copied)
			}
		})
	}
}

// The move the README describes: one node on bbolt serving clients; a
// backup copied to PostgreSQL while it serves; the node stopped and what
// changed since the backup copied with --merge; three nodes started on
// PostgreSQL. Every client logs in again with its ids and finds its tasks
// and version; the cluster serves them.
func TestMoveFromOneNodeToThreeOnPostgres(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "kronos.db")
	one := startServer(t, "--store", "bolt:"+live)
	ctx := testContext(t)
	type device struct {
		user, device string
		c            *client.Client
	}
	const clients = 12
	var devs []device
	for i := range clients {
		tr := client.TCP
		if i%2 == 1 {
			tr = client.WebSocket
		}
		c, err := client.Dial(ctx, tr, one.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		login, err := c.Login("", "", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		devs = append(devs, device{login.Str("user_id"), login.Str("device_id"), c})
	}
	write := func(d device, id int, version int) {
		t.Helper()
		req := fmt.Sprintf(`{"type":"create","task":{"id":%d,"desc":"task %d of %s"},"version":%d}`, id, id, d.device[:8], version)
		if err := d.c.SendRaw([]byte(req)); err != nil {
			t.Fatal(err)
		}
		if m, err := d.c.Next(5 * time.Second); err != nil || m.Type() != "create" {
			t.Fatalf("create: %v %v", m, err)
		}
	}
	for i, d := range devs {
		for id := range i%4 + 1 {
			write(d, id, baseVersion+id)
		}
	}
	pg := sharedStores[0].url(t)
	backup := filepath.Join(dir, "backup.db")
	if out, errOut, code := kronos(t, "backup", "--admin", one.admin, "--out", backup); code != 0 {
		t.Fatalf("backup: %d %s%s", code, out, errOut)
	}
	if copied, _ := migrateOK(t, "--from", "bolt:"+backup, "--to", pg); copied != clients {
		t.Fatalf("copied %d users from the backup", copied)
	}
	for _, d := range devs[:clients/2] { // written after the backup
		write(d, 100, baseVersion+100)
	}
	readAll := func(c *client.Client) client.Message {
		t.Helper()
		if err := c.Send(map[string]any{"type": "read-all"}); err != nil {
			t.Fatal(err)
		}
		m, err := c.Next(5 * time.Second)
		if err != nil || m.Type() != "read-all" {
			t.Fatalf("read-all: %v %v", m, err)
		}
		return m
	}
	before := make([]string, clients)
	for i, d := range devs {
		before[i] = fmt.Sprint(readAll(d.c))
	}
	if err := one.stop(t); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := kronos(t, "migrate", "--from", "bolt:"+live, "--to", pg); code != 1 || !strings.Contains(errOut, "holds other data") {
		t.Fatalf("without --merge the changed users must be refused: %d %s%s", code, out, errOut)
	}
	if copied, skipped := migrateOK(t, "--from", "bolt:"+live, "--to", pg, "--merge"); copied != clients/2 || skipped != clients/2 {
		t.Fatalf("the catch-up copied %d and skipped %d", copied, skipped)
	}
	var nodes []*server
	for range 3 {
		nodes = append(nodes, startServer(t, "--store", pg))
	}
	var again []*client.Client
	for i, d := range devs {
		c, err := client.Dial(ctx, client.WebSocket, nodes[i%3].addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		login, err := c.Login(d.user, d.device, 5*time.Second)
		if err != nil {
			t.Fatalf("client %d cannot log in after the move: %v", i, err)
		}
		if m := readAll(c); fmt.Sprint(m) != before[i] || m["version"] != login["version"] {
			t.Fatalf("client %d: read-all after the move %v, before %s (login version %v)", i, m, before[i], login["version"])
		}
		again = append(again, c)
	}
	// The cluster serves the moved users: a write on one node reaches the
	// user's device on another.
	other, err := client.Dial(ctx, client.TCP, nodes[1].addr)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Login(devs[0].user, "", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := other.Send(map[string]any{"type": "create", "task": map[string]any{"id": 500}, "version": baseVersion + 500}); err != nil {
		t.Fatal(err)
	}
	if m, err := again[0].Next(10 * time.Second); err != nil || m.Type() != "create" {
		t.Fatalf("the device on node 0 got %v %v, want the create made on node 1", m, err)
	}
}
