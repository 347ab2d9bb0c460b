package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func build(t *testing.T, dir, name, pkg string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	if msg, err := exec.Command("go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, msg)
	}
	return out
}

// The load tool, end to end in a small configuration (CI runs it so that it
// cannot rot): a real server, worker processes, every phase, the reports.
// It checks what was delivered, never how fast.
func TestBenchSmallRun(t *testing.T) {
	dir := t.TempDir()
	server := build(t, dir, "kronos", "github.com/kronos-sync/kronos-server/cmd/kronos")
	bench := build(t, dir, "kronos-bench", ".")
	for _, engine := range []string{"epoll", "goroutine"} {
		t.Run(engine, func(t *testing.T) {
			addr, admin := startServer(t, server, "--engine", engine)
			r := runBench(t, bench, "--addr", addr, "--admin", admin, "--label", engine)
			checkDelivered(t, r, 500, 5)
			if r.Server != serverKronos || r.WSShare != 0.5 {
				t.Fatalf("server %q, WebSocket share %v", r.Server, r.WSShare)
			}
		})
	}
}

// startServer starts the server binary on free loopback ports, with a
// bbolt store in a temporary directory and args, and returns its client
// and admin addresses; the test's end kills it.
func startServer(t *testing.T, server string, args ...string) (addr, admin string) {
	t.Helper()
	cmd := exec.Command(server, append([]string{"serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--store", "bolt:" + filepath.Join(t.TempDir(), "k.db")}, args...)...)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(stderr)
	for (addr == "" || admin == "") && sc.Scan() {
		var ev map[string]any
		json.Unmarshal(sc.Bytes(), &ev)
		if a, ok := ev["addr"].(string); ok {
			addr = a
		}
		if a, ok := ev["admin"].(string); ok {
			admin = a
		}
	}
	if addr == "" || admin == "" {
		t.Fatalf("the server did not tell its addresses: %v", sc.Err())
	}
	go func() {
		for sc.Scan() {
		}
	}()
	return addr, admin
}

// runBench runs the load tool in the tests' small configuration, 100
// users of 5 devices, with args for the server, and returns its results
// after checking that it wrote its charts.
func runBench(t *testing.T, bench string, args ...string) Results {
	t.Helper()
	out := filepath.Join(t.TempDir(), "r.json")
	run := exec.Command(bench, append([]string{"--users", "100", "--devices", "5",
		"--procs", "2", "--steps", "2", "--idle", "500ms", "--rate", "200", "--duration", "2s",
		"--out", out, "--png", strings.TrimSuffix(out, ".json")}, args...)...)
	run.Stderr = os.Stderr
	summary, err := run.Output()
	if err != nil {
		t.Fatalf("kronos-bench: %v\n%s", err, summary)
	}
	t.Logf("%s", summary)
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var r Results
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	for _, chart := range []string{"-latency.png", "-memory.png"} {
		info, err := os.Stat(strings.TrimSuffix(out, ".json") + chart)
		if err != nil || info.Size() < 1000 {
			t.Fatalf("chart %s: %v", chart, err)
		}
	}
	return r
}

// checkDelivered checks that every phase ran with every connection, that
// every write reached every device of its user, and that the other
// devices measured each: what was delivered, never how fast.
func checkDelivered(t *testing.T, r Results, conns, devices int) {
	t.Helper()
	if r.Errors != 0 || r.WorkerProcs != 2 || r.Idle.Conns != conns || r.StormReconnected != conns ||
		fmt.Sprint(r.WorkerPollers) != "[1 1]" { // --worker-gomaxprocs 1 by default
		t.Fatalf("results: %+v", r)
	}
	if r.WritesSent == 0 || r.Notifications != r.WritesSent*int64(devices) {
		t.Fatalf("%d writes gave %d notifications, want %d each", r.WritesSent, r.Notifications, devices)
	}
	if r.LatencySamples != uint64(r.WritesSent*int64(devices-1)) || r.LatencyP99MS <= 0 || r.BytesPerConn == 0 {
		t.Fatalf("latency samples %d for %d writes (want %d other devices each), p99 %v",
			r.LatencySamples, r.WritesSent, devices-1, r.LatencyP99MS)
	}
	if r.NotificationBytes <= 0 {
		t.Fatalf("notification size %v", r.NotificationBytes)
	}
	// The load's CPU was read on both sides: the server's from its
	// /metrics, the tool's from its workers.
	if r.ServerCPUSeconds <= 0 || r.ToolCPUSeconds <= 0 ||
		r.ServerCPUPerNotifUS != r.ServerCPUSeconds/float64(r.Notifications)*1e6 {
		t.Fatalf("CPU in the load: server %vs (%v µs per notification), tool %vs",
			r.ServerCPUSeconds, r.ServerCPUPerNotifUS, r.ToolCPUSeconds)
	}
	// The probe ran: the two costs every machine has (the wake round trips
	// need two CPUs).
	if r.Probe == nil || r.Probe.SyscallNS <= 0 || r.Probe.FdatasyncUS <= 0 {
		t.Fatalf("machine probe: %+v", r.Probe)
	}
}

func TestHistQuantiles(t *testing.T) {
	h := NewHist()
	for i := 1; i <= 1000; i++ {
		h.Add(time.Duration(i) * time.Millisecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Millisecond}, {0.99, 990 * time.Millisecond}, {1, time.Second}} {
		got := h.Quantile(c.q)
		if got < c.want*98/100 || got > c.want*102/100 {
			t.Errorf("q%.2f = %v, want %v within 2%%", c.q, got, c.want)
		}
	}
	o := NewHist()
	o.Add(5 * time.Second)
	h.Merge(o)
	if h.Count != 1001 || h.Quantile(1) != 5*time.Second {
		t.Fatalf("merge: count %d max %v", h.Count, h.Quantile(1))
	}
}
