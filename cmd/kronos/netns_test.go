package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/internal/pgtest"
	"github.com/kronos-sync/kronos-server/internal/tcppipe"
	"github.com/kronos-sync/kronos-server/node/client"
)

// A multi-host cluster on one machine: each node is a `kronos serve`
// process in a network namespace of its own, with its own address on a
// bridge that this test creates (198.18.0.0/24, the benchmarking range) and
// removes. The nodes share the test PostgreSQL, reached through a port the
// test forwards from the bridge. Needs root; skipped, saying so, otherwise.

type netnsHost struct {
	ns, veth, ip string
}

type netnsLab struct {
	t      *testing.T
	bridge string
	gw     string // the bridge's address in the root namespace
	hosts  []netnsHost
	key    string // the cluster's gossip key, base64
}

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func newNetnsLab(t *testing.T, n int) *netnsLab {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: the multi-host cluster test creates network namespaces and needs root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("SKIPPED: the multi-host cluster test needs iproute2's ip command")
	}
	var b [3]byte
	rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	key := make([]byte, 32)
	rand.Read(key)
	lab := &netnsLab{t: t, bridge: "kb" + id, gw: "198.18.0.1", key: base64.StdEncoding.EncodeToString(key)}
	t.Cleanup(lab.cleanup)
	sh(t, "ip", "link", "add", lab.bridge, "type", "bridge")
	sh(t, "ip", "addr", "add", lab.gw+"/24", "dev", lab.bridge)
	sh(t, "ip", "link", "set", lab.bridge, "up")
	for i := range n {
		h := netnsHost{ns: fmt.Sprintf("kn%s-%d", id, i), veth: fmt.Sprintf("kv%s%d", id, i), ip: fmt.Sprintf("198.18.0.%d", 10+i)}
		lab.hosts = append(lab.hosts, h)
		sh(t, "ip", "netns", "add", h.ns)
		sh(t, "ip", "link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.ns)
		sh(t, "ip", "link", "set", h.veth, "master", lab.bridge)
		sh(t, "ip", "link", "set", h.veth, "up")
		sh(t, "ip", "-n", h.ns, "addr", "add", h.ip+"/24", "dev", "eth0")
		sh(t, "ip", "-n", h.ns, "link", "set", "eth0", "up")
		sh(t, "ip", "-n", h.ns, "link", "set", "lo", "up")
	}
	return lab
}

func (l *netnsLab) cleanup() {
	for _, h := range l.hosts {
		exec.Command("ip", "netns", "del", h.ns).Run()
	}
	exec.Command("ip", "link", "del", l.bridge).Run()
}

// forward makes addr (on the bridge) lead to target, for the nodes.
func forward(t *testing.T, addr, target string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go tcppipe.Forward(ln, func() string { return target })
}

// startInNetns runs a node in host h's namespace.
func (l *netnsLab) start(h netnsHost, store string, extra ...string) *server {
	args := append([]string{"netns", "exec", h.ns, kronosBinary(l.t), "serve",
		"--listen", h.ip + ":5000", "--admin-listen", h.ip + ":9090", "--store", store,
		"--cluster-bind", h.ip + ":7946", "--node-name", h.ns, "--join", l.hosts[0].ip + ":7946", "--cluster-key", l.key,
		"--rejoin-interval", "1s", "--drain-period", "2s"}, extra...)
	cmd := exec.Command("ip", args...)
	return startCommand(l.t, cmd)
}

type clusterView struct {
	Members []struct {
		Name   string `json:"name"`
		Status string `json:"status"`
		State  string `json:"s"`
		Conns  int    `json:"c"`
	} `json:"members"`
}

func members(admin string) (map[string]string, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + admin + "/cluster")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var v clusterView
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, m := range v.Members {
		out[m.Name] = m.State
	}
	return out, nil
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not after %v", what, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(start)
}

func TestMultiHostCluster(t *testing.T) {
	lab := newNetnsLab(t, 3)
	pg, err := url.Parse(pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	pgForward := lab.gw + ":15432"
	forward(t, pgForward, pg.Host)
	pg.Host = pgForward
	store := pg.String()

	var nodes []*server
	for _, h := range lab.hosts {
		nodes = append(nodes, lab.start(h, store))
	}
	// Three nodes join through one seed.
	waitFor(t, 20*time.Second, "every node sees three members", func() bool {
		for _, n := range nodes {
			m, err := members(n.admin)
			if err != nil || len(m) != 3 {
				return false
			}
		}
		return true
	})

	ctx := testContext(t)
	dial := func(n *server, tr client.Transport) *client.Client {
		c, err := client.Dial(ctx, tr, n.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// Takeover across hosts.
	first := dial(nodes[0], client.TCP)
	login, err := first.Login("", "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	user, device := login.Str("user_id"), login.Str("device_id")
	again := dial(nodes[1], client.WebSocket)
	began := time.Now()
	if _, err := again.Login(user, device, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := first.NextRaw(5 * time.Second); err == nil {
		t.Fatal("the older connection of the device was not closed")
	}
	t.Logf("takeover across hosts: the older connection closed %v after the login was sent", time.Since(began))

	// A node cut off is declared dead; healed, it rejoins.
	cut := lab.hosts[2]
	sh(t, "ip", "link", "set", cut.veth, "down")
	took := waitFor(t, 30*time.Second, "the cut-off node dropped", func() bool {
		m, err := members(nodes[0].admin)
		_, present := m[cut.ns]
		return err == nil && !present
	})
	t.Logf("cut-off node dropped after %v", took)
	sh(t, "ip", "link", "set", cut.veth, "up")
	took = waitFor(t, 30*time.Second, "the healed node back", func() bool {
		m, err := members(nodes[0].admin)
		_, present := m[cut.ns]
		return err == nil && present
	})
	t.Logf("healed node rejoined after %v", took)

	// kill -9: declared dead, and its clients re-sync on another node.
	victim := dial(nodes[2], client.TCP)
	vlogin, err := victim.Login(user, "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	nodes[2].kill9(t)
	took = waitFor(t, 30*time.Second, "the killed node declared dead", func() bool {
		m, err := members(nodes[0].admin)
		_, present := m[lab.hosts[2].ns]
		return err == nil && !present
	})
	t.Logf("killed node declared dead after %v", took)
	if _, err := victim.NextRaw(5 * time.Second); err == nil {
		t.Fatal("a client of the killed node is still connected")
	}
	resynced := dial(nodes[0], client.WebSocket)
	if _, err := resynced.Login(user, vlogin.Str("device_id"), 5*time.Second); err != nil {
		t.Fatalf("re-login on another node: %v", err)
	}

	// Drain: writes keep coming while node 1 drains; its clients are all
	// closed and every acknowledged write is in the store.
	writer := dial(nodes[1], client.TCP)
	if _, err := writer.Login(user, "", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	acked := map[string]bool{}
	for i := range 20 {
		writer.SendRaw(fmt.Appendf(nil, `{"type":"create","task":{"id":%d},"version":%d}`, 100+i, 100+i))
	}
	if err := nodes[1].cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := writer.Next(10 * time.Second)
		if err != nil {
			break // closed by the drain
		}
		if m.Type() == "create" {
			acked[fmt.Sprint(m["task"].(map[string]any)["id"])] = true
		}
	}
	select {
	case err := <-nodes[1].done:
		if err != nil {
			t.Fatalf("drained node exit: %v\n%s", err, nodes[1].logs)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("drained node did not exit")
	}
	resynced.Send(map[string]any{"type": "read-all"})
	for {
		m, err := resynced.Next(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if m.Type() != "read-all" {
			continue // notifications of the writes above
		}
		stored := map[string]bool{}
		for _, task := range m["tasks"].([]any) {
			stored[fmt.Sprint(task.(map[string]any)["id"])] = true
		}
		for id := range acked {
			if !stored[id] {
				t.Fatalf("task %s was acknowledged during the drain but is not stored", id)
			}
		}
		t.Logf("%d writes acknowledged during the drain, all stored", len(acked))
		break
	}
}
