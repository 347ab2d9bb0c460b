package main

import (
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/node/client"
)

// Writes whose notifications a device received survive kill -9 of the
// server and a restart on the same file: none lost, none doubled.
func TestNotifiedWritesSurviveKill9(t *testing.T) {
	dbPath := filepath.Join(t.TempDir(), "data", "kronos.db")
	srv := startServer(t, "--store", "bolt:"+dbPath, "--rate-limit", "100000", "--rate-burst", "100000")
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

	// The writer streams creates without waiting; the server is killed
	// while they are still coming in.
	const total = 5000
	go func() {
		for id := range total {
			req := fmt.Sprintf(`{"type":"create","task":{"id":%d,"desc":"task %d"},"version":%d}`, id, id, 1800000000000+id)
			if writer.SendRaw([]byte(req)) != nil {
				return
			}
		}
	}()
	notified := map[float64]string{}
	for len(notified) < 300 {
		m, err := watcher.Next(10 * time.Second)
		if err != nil {
			t.Fatalf("after %d notifications: %v", len(notified), err)
		}
		if m.Type() != "create" {
			t.Fatalf("unexpected %v", m)
		}
		task := m["task"].(map[string]any)
		notified[task["id"].(float64)] = task["desc"].(string)
	}
	srv.kill9(t)

	srv = startServer(t, "--store", "bolt:"+dbPath)
	c, err := client.Dial(ctx, client.TCP, srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Login(user, login.Str("device_id"), 5*time.Second); err != nil {
		t.Fatalf("the user did not survive: %v", err)
	}
	if err := c.Send(map[string]any{"type": "read-all"}); err != nil {
		t.Fatal(err)
	}
	all, err := c.Next(5 * time.Second)
	if err != nil || all.Type() != "read-all" {
		t.Fatalf("read-all: %v %v", all, err)
	}
	stored := map[float64]string{}
	for _, v := range all["tasks"].([]any) {
		task := v.(map[string]any)
		id := task["id"].(float64)
		if _, dup := stored[id]; dup {
			t.Fatalf("task %v stored twice", id)
		}
		stored[id] = task["desc"].(string)
	}
	for id, desc := range notified {
		if stored[id] != desc {
			t.Fatalf("task %v was notified but is lost after kill -9 (stored %q)", id, stored[id])
		}
	}
	// The store holds a prefix of the writes, in the order they were sent,
	// and the version is the last one's.
	for id := range len(stored) {
		if stored[float64(id)] != fmt.Sprintf("task %d", id) {
			t.Fatalf("task %d missing though %d tasks are stored", id, len(stored))
		}
	}
	if want := float64(1800000000000 + len(stored) - 1); all["version"] != want {
		t.Fatalf("version %v, want %v", all["version"], want)
	}
	t.Logf("%d notified before the kill, %d stored", len(notified), len(stored))
}

func TestServeStopsCleanlyOnSignal(t *testing.T) {
	srv := startServer(t, "--store", "bolt:"+filepath.Join(t.TempDir(), "k.db"))
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get("http://" + srv.admin + path)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %v %v", path, resp, err)
		}
		resp.Body.Close()
	}
	resp, err := http.Get("http://" + srv.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, metric := range []string{"kronos_connections_open", "kronos_store_commit_batch_size", "go_goroutines"} {
		if !strings.Contains(string(body), metric) {
			t.Fatalf("/metrics lacks %s", metric)
		}
	}
	ctx := testContext(t)
	c, err := client.Dial(ctx, client.WebSocket, srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Login("", "", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := srv.stop(t); err != nil {
		t.Fatalf("exit status after SIGINT: %v\n%s", err, srv.logs)
	}
	if _, err := c.NextRaw(5 * time.Second); err == nil {
		t.Fatal("client still open after the server stopped")
	}
	srv.logs.waitFor(t, "stopped", time.Second)
}
