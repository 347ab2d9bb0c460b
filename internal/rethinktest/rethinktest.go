// Package rethinktest gives tests a fresh database on the test RethinkDB,
// and RethinkDB servers of their own for tests that kill and restart one.
//
// KRONOS_TEST_RETHINKDB names the shared test server
// (rethinkdb://127.0.0.1:28015); KRONOS_RETHINKDB_START names the start
// script of a RethinkDB build (start DATA_DIR PORT prints the PID), used by
// the tests that need a server to themselves. .ci/run sets both. Without
// them the tests are skipped, saying how to run them; with
// KRONOS_TEST_RETHINKDB set they fail instead of skipping.
package rethinktest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	r "gopkg.in/rethinkdb/rethinkdb-go.v6"
)

const howTo = "start one with `RETHINKDB_NO_HTTP=1 ../shared/rethinkdb/start /tmp/rdb 28015` and set " +
	"KRONOS_TEST_RETHINKDB=rethinkdb://127.0.0.1:28015 KRONOS_RETHINKDB_START=$PWD/../shared/rethinkdb/start (as .ci/run does)"

// Required reports whether the RethinkDB tests must run (not skip).
func Required() bool { return os.Getenv("KRONOS_TEST_RETHINKDB") != "" }

// URL returns the URL of a fresh database on the shared test server,
// dropped when the test ends.
func URL(t testing.TB) string {
	t.Helper()
	base := os.Getenv("KRONOS_TEST_RETHINKDB")
	if base == "" {
		t.Skip("SKIPPED: no RethinkDB for the tests: " + howTo)
	}
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("KRONOS_TEST_RETHINKDB: %v", err)
	}
	return Fresh(t, u.Host)
}

// Fresh returns the URL of a new database on the server at addr, dropped
// when the test ends.
func Fresh(t testing.TB, addr string) string {
	t.Helper()
	session, err := r.Connect(r.ConnectOpts{Address: addr, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("RethinkDB at %s is not reachable: %v", addr, err)
	}
	session.Close()
	var suffix [6]byte
	rand.Read(suffix[:])
	db := "kronos_test_" + hex.EncodeToString(suffix[:])
	t.Cleanup(func() {
		if s, err := r.Connect(r.ConnectOpts{Address: addr, Timeout: 5 * time.Second}); err == nil {
			r.DBDrop(db).Exec(s)
			s.Close()
		}
	})
	return "rethinkdb://" + addr + "/" + db
}

// Server is a RethinkDB server of the test's own.
type Server struct {
	t    testing.TB
	dir  string
	port int
	pid  int
}

// Start runs a RethinkDB server of the test's own on a free port, stopped
// (kill -9) when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	script := os.Getenv("KRONOS_RETHINKDB_START")
	if script == "" {
		if Required() {
			t.Fatal("KRONOS_TEST_RETHINKDB is set but KRONOS_RETHINKDB_START is not: " + howTo)
		}
		t.Skip("SKIPPED: this test runs a RethinkDB of its own: " + howTo)
	}
	s := &Server{t: t, dir: filepath.Join(t.TempDir(), "rethinkdb"), port: freePort(t)}
	s.Restart()
	t.Cleanup(s.Kill)
	return s
}

// Addr is the server's driver address.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// Port is the server's driver port.
func (s *Server) Port() int { return s.port }

// Restart starts the server again on its data directory and port.
func (s *Server) Restart() {
	s.t.Helper()
	cmd := exec.Command(os.Getenv("KRONOS_RETHINKDB_START"), s.dir, strconv.Itoa(s.port))
	cmd.Env = append(os.Environ(), "RETHINKDB_NO_HTTP=1")
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		s.t.Fatalf("starting RethinkDB: %v\n%s", err, stderr)
	}
	if s.pid, err = strconv.Atoi(strings.TrimSpace(string(out))); err != nil {
		s.t.Fatalf("starting RethinkDB: pid %q", out)
	}
}

// Kill stops the server with SIGKILL, as a crash would, and waits until it
// is gone.
func (s *Server) Kill() {
	if s.pid == 0 {
		return
	}
	syscall.Kill(s.pid, syscall.SIGKILL)
	for range 500 { // the server is not our child: poll until it is gone
		if syscall.Kill(s.pid, 0) != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.pid = 0
}

// freePort finds a driver port whose cluster port (port+1) is free too,
// below the kernel's range of ephemeral ports: a server of the test's own is
// killed and restarted on its ports, and in between an outgoing connection
// (a node retrying it, say) could take one of them as its source port.
func freePort(t testing.TB) int {
	t.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	for range 200 {
		port := 10000 + mrand.IntN(max(low-10002, 1))
		if free(port) && free(port+1) {
			return port
		}
	}
	t.Fatal("no free port pair below the ephemeral range")
	return 0
}

func free(port int) bool {
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}
