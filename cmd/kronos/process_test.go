package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/node/client"
)

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// kronosBinary builds the real binary once per test run.
func kronosBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kronos-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binary = filepath.Join(dir, "kronos")
		out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

// server is a `kronos serve` child process.
type server struct {
	cmd   *exec.Cmd
	addr  string // client port
	admin string // admin port
	logs  *logTail
	done  chan error
}

// logTail keeps the child's log lines and lets a test wait for one.
type logTail struct {
	mu    sync.Mutex
	lines []string
	added chan struct{}
}

func (l *logTail) add(line string) {
	l.mu.Lock()
	l.lines = append(l.lines, line)
	close(l.added)
	l.added = make(chan struct{})
	l.mu.Unlock()
}

// waitFor returns the first log line whose message is msg.
func (l *logTail) waitFor(t *testing.T, msg string, timeout time.Duration) map[string]any {
	t.Helper()
	deadline := time.After(timeout)
	for seen := 0; ; {
		l.mu.Lock()
		lines, added := l.lines[seen:], l.added
		l.mu.Unlock()
		for _, line := range lines {
			seen++
			var ev map[string]any
			if json.Unmarshal([]byte(line), &ev) == nil && ev["message"] == msg {
				return ev
			}
		}
		select {
		case <-added:
		case <-deadline:
			t.Fatalf("no %q in the server log after %v:\n%s", msg, timeout, l.String())
		}
	}
}

func (l *logTail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// startServer runs the binary on random loopback ports and waits until it
// accepts clients.
func startServer(t *testing.T, args ...string) *server {
	t.Helper()
	args = append([]string{"serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"}, args...)
	return startCommand(t, exec.Command(kronosBinary(t), args...))
}

// startCommand runs a prepared `kronos serve` command and waits until it
// accepts clients.
func startCommand(t *testing.T, cmd *exec.Cmd) *server {
	t.Helper()
	s := launch(t, cmd)
	s.addr = s.logs.waitFor(t, "accepting clients", 20*time.Second)["addr"].(string)
	s.admin = s.logs.waitFor(t, "kronos started", 20*time.Second)["admin"].(string)
	return s
}

// launch starts a prepared `kronos serve` command, keeps its log lines, and
// kills it when the test ends; it waits for nothing.
func launch(t *testing.T, cmd *exec.Cmd) *server {
	t.Helper()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &server{cmd: cmd, logs: &logTail{added: make(chan struct{})}, done: make(chan error, 1)}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			s.logs.add(sc.Text())
		}
		io.Copy(io.Discard, stderr)
		s.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-s.done
		}
	})
	return s
}

func (s *server) kill9(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	<-s.done
}

func (s *server) stop(t *testing.T) error {
	t.Helper()
	if err := s.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-s.done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("server did not stop within 30s of SIGINT")
	}
	return nil
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// readAllAnswer asks for read-all and returns the answer, skipping the
// notifications that come before it (a write a killed node committed but
// had not applied yet comes after the login, on RethinkDB).
func readAllAnswer(t *testing.T, c *client.Client, timeout time.Duration) client.Message {
	t.Helper()
	if err := c.Send(map[string]any{"type": "read-all"}); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := c.Next(timeout)
		if err != nil {
			t.Fatalf("waiting for the read-all answer: %v", err)
		}
		if m.Type() == "read-all" {
			return m
		}
	}
}
