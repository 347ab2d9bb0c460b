package main

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/internal/pgtest"
	"github.com/kronos-sync/kronos-server/internal/rethinktest"
	"github.com/kronos-sync/kronos-server/node/client"
)

// sharedStores are the backends a cluster runs on; each gives a fresh,
// empty store URL.
var sharedStores = []struct {
	name string
	url  func(testing.TB) string
}{
	{"postgres", pgtest.URL},
	{"rethinkdb", rethinktest.URL},
}

// Three nodes on one shared store; one user with devices on every node.
// Every write, made on any node, reaches every device, and every device
// sees the changes in the same order.
func TestClusterOnSharedStores(t *testing.T) {
	for _, st := range sharedStores {
		t.Run(st.name, func(t *testing.T) { testCluster(t, st.url(t)) })
	}
}

func testCluster(t *testing.T, url string) {
	var nodes []*server
	for range 3 {
		nodes = append(nodes, startServer(t, "--store", url))
	}
	ctx := testContext(t)
	first, err := client.Dial(ctx, client.TCP, nodes[0].addr)
	if err != nil {
		t.Fatal(err)
	}
	login, err := first.Login("", "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	user := login.Str("user_id")
	devices := []*client.Client{first}
	for i, n := range nodes {
		tr := client.WebSocket
		if i%2 == 1 {
			tr = client.TCP
		}
		c, err := client.Dial(ctx, tr, n.addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Login(user, "", 5*time.Second); err != nil {
			t.Fatal(err)
		}
		devices = append(devices, c)
	}
	defer func() {
		for _, c := range devices {
			c.Close()
		}
	}()

	// Every device writes at once; each write is one create.
	const perDevice = 25
	total := perDevice * len(devices)
	seen := make([][]string, len(devices))
	var wg sync.WaitGroup
	for d, c := range devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for len(seen[d]) < total {
				m, err := c.Next(15 * time.Second)
				if err != nil {
					t.Errorf("device %d after %d notifications: %v", d, len(seen[d]), err)
					return
				}
				if m.Type() != "create" || !m.Success() {
					t.Errorf("device %d: unexpected %v", d, m)
					return
				}
				seen[d] = append(seen[d], fmt.Sprint(m["task"].(map[string]any)["id"]))
			}
		}()
	}
	for d, c := range devices {
		go func() {
			for i := range perDevice {
				id := d*1000 + i
				c.SendRaw(fmt.Appendf(nil, `{"type":"create","task":{"id":%d},"version":%d}`, id, id))
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for d := range devices {
		if fmt.Sprint(seen[d]) != fmt.Sprint(seen[0]) {
			t.Fatalf("device %d saw another order:\n%v\n%v", d, seen[d], seen[0])
		}
	}
	unique := map[string]bool{}
	for _, id := range seen[0] {
		unique[id] = true
	}
	if len(unique) != total {
		t.Fatalf("%d distinct notifications, want %d", len(unique), total)
	}
}

// A node killed and restarted on the same database loses no write that
// was acknowledged (notified).
func TestNodeRestartLosesNothing(t *testing.T) {
	for _, st := range sharedStores {
		t.Run(st.name, func(t *testing.T) { testNodeRestart(t, st.url(t)) })
	}
}

func testNodeRestart(t *testing.T, url string) {
	a := startServer(t, "--store", url)
	ctx := testContext(t)
	c, err := client.Dial(ctx, client.TCP, a.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	login, err := c.Login("", "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		c.SendRaw(fmt.Appendf(nil, `{"type":"create","task":{"id":%d},"version":%d}`, i, i))
	}
	acked := 0
	for acked < 50 {
		if _, err := c.Next(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		acked++
	}
	a.kill9(t)
	a = startServer(t, "--store", url)
	c2, err := client.Dial(ctx, client.WebSocket, a.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.Login(login.Str("user_id"), login.Str("device_id"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	m := readAllAnswer(t, c2, 5*time.Second)
	tasks, _ := m["tasks"].([]any)
	if len(tasks) != 50 || m["version"] != float64(49) {
		t.Fatalf("after restart: %v; want 50 tasks and version 49", m)
	}
}
