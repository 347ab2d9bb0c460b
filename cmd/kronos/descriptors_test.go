package main

import (
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/node/client"
)

// Issue 12, defect 4: silent connections on a node short of descriptors
// left logins unanswered and /metrics unreachable. Now the default
// --max-conns keeps 256 descriptors out of the clients' reach and silent
// connections are closed at --handshake-timeout: the admin port answers
// throughout, and logins succeed once the flood is cut.
func TestSilentFloodLeavesAdminAndLoginsWorking(t *testing.T) {
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("needs prlimit (util-linux) to give the node a small descriptor limit")
	}
	const silent = 600 // with 700 descriptors, --max-conns defaults to 700 - 256 = 444
	srv := startCommand(t, exec.Command(prlimit, "--nofile=700:700", kronosBinary(t), "serve",
		"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--store", "bolt:"+filepath.Join(t.TempDir(), "k.db"), "--handshake-timeout", "2s"))

	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range silent {
		c, err := net.Dial("tcp", srv.addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	// The node refused what passed its limit, and its admin port answers.
	metric := func(name string) string {
		resp, err := http.Get("http://" + srv.admin + "/metrics")
		if err != nil {
			t.Fatalf("/metrics unreachable during the flood: %v", err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		for _, line := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				return v
			}
		}
		return ""
	}
	deadline := time.Now().Add(10 * time.Second)
	for metric(`kronos_connections_refused_total{limit="max_conns"}`) == "0" {
		if time.Now().After(deadline) {
			t.Fatal("no connection refused past --max-conns")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if resp, err := http.Get("http://" + srv.admin + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/healthz during the flood: %v %v", resp, err)
	}
	// Once the silent ones are cut, a device logs in.
	ctx := testContext(t)
	for {
		c, err := client.Dial(ctx, client.TCP, srv.addr)
		if err == nil {
			_, err = c.Login("", "", 3*time.Second)
			c.Close()
			if err == nil {
				return
			}
		}
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatalf("no login answered after the flood: %v", err)
		}
		time.Sleep(100 * time.Millisecond) // a client's retry pause
	}
}

// Issue 12, defect 6: the admin port's HTTP server has deadlines. A client
// that starts a request and never finishes it is cut (ReadHeaderTimeout 5 s;
// idle keep-alive connections go the same way after a minute), and
// /debug/pprof is not served unless --admin-pprof.
func TestAdminPortCutsHalfRequestsAndHidesPprof(t *testing.T) {
	srv := startServer(t, "--store", "bolt:"+filepath.Join(t.TempDir(), "k.db"))
	if resp, err := http.Get("http://" + srv.admin + "/debug/pprof/"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("/debug/pprof/ without --admin-pprof: %v %v", resp, err)
	}
	c, err := net.Dial("tcp", srv.admin)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n")) // never finished
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	start := time.Now()
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("half request not cut: %v after %v", err, time.Since(start))
	}
}
