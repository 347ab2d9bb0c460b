package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/internal/pgtest"
	"github.com/kronos-sync/kronos-server/internal/rethinktest"
	"github.com/kronos-sync/kronos-server/internal/tcppipe"
	"github.com/kronos-sync/kronos-server/node/client"
)

// readyz returns the admin port's /readyz status and body.
func readyz(t *testing.T, admin string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// eventually polls cond every 50 ms until it holds or within passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		<-tick.C
	}
}

// RethinkDB is killed with -9 while a device streams creates and another
// watches; it restarts on the same data. Every create that was notified
// before the crash is in read-all afterwards, the node is not ready while
// the server is down and ready again once it is back, and the devices log
// in again.
func TestRethinkKilledWhileWritingLosesNothingNotified(t *testing.T) {
	rdb := rethinktest.Start(t)
	srv := startServer(t, "--store", rethinktest.Fresh(t, rdb.Addr()), "--rate-limit", "100000", "--rate-burst", "100000")
	ctx := testContext(t)
	writer, err := client.Dial(ctx, client.TCP, srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close()
	login, err := writer.Login("", "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	user := login.Str("user_id")
	watcher, err := client.Dial(ctx, client.WebSocket, srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close()
	if _, err := watcher.Login(user, "", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	go func() {
		for id := range 100000 {
			if writer.SendRaw(fmt.Appendf(nil, `{"type":"create","task":{"id":%d},"version":%d}`, id, id)) != nil {
				return
			}
		}
	}()
	notified := map[float64]bool{}
	for len(notified) < 200 {
		m, err := watcher.Next(10 * time.Second)
		if err != nil {
			t.Fatalf("after %d notifications: %v", len(notified), err)
		}
		if m.Type() == "create" {
			notified[m["task"].(map[string]any)["id"].(float64)] = true
		}
	}
	rdb.Kill()
	// What was in flight may still arrive (confirmed on disk before the
	// kill); then the connection is closed or goes quiet.
	for {
		m, err := watcher.Next(2 * time.Second)
		if err != nil {
			break
		}
		if m.Type() == "create" {
			notified[m["task"].(map[string]any)["id"].(float64)] = true
		}
	}
	eventually(t, 20*time.Second, "/readyz fails while RethinkDB is down", func() bool {
		code, _ := readyz(t, srv.admin)
		return code == http.StatusServiceUnavailable
	})
	rdb.Restart()
	eventually(t, 60*time.Second, "/readyz passes once RethinkDB is back", func() bool {
		code, _ := readyz(t, srv.admin)
		return code == http.StatusOK
	})
	var again *client.Client
	eventually(t, 30*time.Second, "a device logs in again", func() bool {
		c, err := client.Dial(ctx, client.TCP, srv.addr)
		if err != nil {
			return false
		}
		if _, err := c.Login(user, "", 5*time.Second); err != nil {
			c.Close()
			return false
		}
		again = c
		return true
	})
	defer again.Close()
	m := readAllAnswer(t, again, 10*time.Second)
	if !m.Success() {
		t.Fatalf("read-all after the restart: %v", m)
	}
	stored := map[float64]bool{}
	for _, task := range m["tasks"].([]any) {
		stored[task.(map[string]any)["id"].(float64)] = true
	}
	for id := range notified {
		if !stored[id] {
			t.Fatalf("create %v was notified, and is gone after RethinkDB restarted (%d notified, %d stored)",
				id, len(notified), len(stored))
		}
	}
	t.Logf("%d creates notified before the crash, %d stored after it", len(notified), len(stored))
}

// A node killed with -9 while write-alls stream in: after a restart every
// read-all holds exactly one write-all's tasks, never a mix.
func TestNodeKilledMidWriteAllIsAllOrNothing(t *testing.T) {
	for _, st := range sharedStores {
		t.Run(st.name, func(t *testing.T) {
			url := st.url(t)
			srv := startServer(t, "--store", url, "--rate-limit", "100000", "--rate-burst", "100000")
			ctx := testContext(t)
			c, err := client.Dial(ctx, client.TCP, srv.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			login, err := c.Login("", "", 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			// Write-all n holds tasks n*100 … n*100+49: any two differ in
			// every task.
			var sent atomic.Int64
			go func() {
				for n := 1; ; n++ {
					var tasks []string
					for i := range 50 {
						tasks = append(tasks, fmt.Sprintf(`{"id":%d,"desc":"set %d"}`, n*100+i, n))
					}
					req := fmt.Sprintf(`{"type":"write-all","tasks":[%s],"version":%d}`, strings.Join(tasks, ","), n)
					if c.SendRaw([]byte(req)) != nil {
						return
					}
					sent.Store(int64(n))
				}
			}()
			for notes := 0; notes < 500; notes++ { // some write-alls are in
				if _, err := c.Next(10 * time.Second); err != nil {
					t.Fatal(err)
				}
			}
			srv.kill9(t)
			srv = startServer(t, "--store", url)
			c2, err := client.Dial(ctx, client.TCP, srv.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c2.Close()
			if _, err := c2.Login(login.Str("user_id"), login.Str("device_id"), 5*time.Second); err != nil {
				t.Fatal(err)
			}
			m := readAllAnswer(t, c2, 5*time.Second)
			tasks := m["tasks"].([]any)
			sets := map[string]int{}
			for _, task := range tasks {
				sets[task.(map[string]any)["desc"].(string)]++
			}
			if len(tasks) != 50 || len(sets) != 1 {
				t.Fatalf("after the crash: %d tasks from %d write-alls %v (sent %d)", len(tasks), len(sets), sets, sent.Load())
			}
			if v := fmt.Sprint(m["version"]); "set "+v != fmt.Sprint(keys(sets)[0]) {
				t.Fatalf("version %v with the tasks of %v", m["version"], sets)
			}
		})
	}
}

func keys(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// A node whose store is not reachable yet stays up: /healthz 200, /readyz
// 503 with the reason, the client port closed, one log line per failed
// attempt with the password hidden; it serves as soon as the store
// answers.
func TestNodeStartsBeforeTheStore(t *testing.T) {
	t.Run("rethinkdb", func(t *testing.T) {
		rdb := rethinktest.Start(t)
		addr := rdb.Addr()
		rdb.Kill() // its port is now free; the node will wait for it
		url := "rethinkdb://admin@" + addr + "/kronos_before"
		srv := startWaiting(t, url)
		rdb.Restart()
		srv.waitServing(t)
	})
	t.Run("postgres", func(t *testing.T) {
		// A port forward that hangs up on every connection until the test
		// opens it: the port stays ours all along.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		var open atomic.Bool
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				if !open.Load() {
					c.Close()
					continue
				}
				go func() {
					d, err := net.Dial("tcp", "127.0.0.1:5432")
					if err != nil {
						c.Close()
						return
					}
					tcppipe.Join(c, d)
				}()
			}
		}()
		port := ln.Addr().(*net.TCPAddr).Port
		url := strings.Replace(pgtest.URL(t), "127.0.0.1:5432", "127.0.0.1:"+strconv.Itoa(port), 1)
		url = strings.Replace(url, "postgres@", "postgres:s3cret@", 1)
		srv := startWaiting(t, url)
		open.Store(true)
		srv.waitServing(t)
	})
}

// waiting is a `kronos serve` started before its store.
type waiting struct {
	*server
	cmd *exec.Cmd
}

func startWaiting(t *testing.T, url string) *waiting {
	t.Helper()
	cmd := exec.Command(kronosBinary(t), "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--store", url)
	s := launch(t, cmd)
	s.admin = s.logs.waitFor(t, "admin listening", 20*time.Second)["admin"].(string)
	s.logs.waitFor(t, "store unreachable; retrying", 20*time.Second)
	resp, err := http.Get("http://" + s.admin + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz while waiting for the store: %v %v", resp, err)
	}
	resp.Body.Close()
	code, body := readyz(t, s.admin)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "store unreachable") {
		t.Fatalf("/readyz while waiting for the store: %d %q", code, body)
	}
	if strings.Contains(s.logs.String(), "s3cret") || strings.Contains(body, "s3cret") {
		t.Fatal("the store password reached the log or /readyz")
	}
	for _, line := range strings.Split(s.logs.String(), "\n") {
		var ev map[string]any
		if json.Unmarshal([]byte(line), &ev) == nil && ev["message"] == "accepting clients" {
			t.Fatal("the client port opened before the store answered")
		}
	}
	return &waiting{server: s, cmd: cmd}
}

// waitServing waits until the node serves clients and is ready.
func (w *waiting) waitServing(t *testing.T) {
	t.Helper()
	w.addr = w.logs.waitFor(t, "accepting clients", 60*time.Second)["addr"].(string)
	c, err := client.Dial(testContext(t), client.TCP, w.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Login("", "", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "/readyz once the store answers", func() bool {
		code, _ := readyz(t, w.admin)
		return code == http.StatusOK
	})
}
