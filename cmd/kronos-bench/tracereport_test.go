package main

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"runtime/trace"
	"strings"
	"testing"
)

// traceTestWorker answers each ping; it blocks on the channel in between,
// so every ping is one wake-up.
func traceTestWorker(ping <-chan int, pong chan<- int) {
	for v := range ping {
		pong <- v
	}
}

// The report finds a goroutine by the function it started in and counts
// its wake-ups, from a real runtime trace.
func TestTraceReport(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trace.out")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := trace.Start(f); err != nil {
		t.Fatal(err)
	}
	const pings = 200
	// One P: each exchange then blocks the worker once. With more, the
	// main goroutine can send the next ping before the worker waits for it
	// (a busy machine, CI), and that ping wakes nobody.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	ping, pong := make(chan int), make(chan int)
	go traceTestWorker(ping, pong)
	for i := range pings {
		ping <- i
		<-pong
	}
	close(ping)
	trace.Stop()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	groups, err := traceGroups(path)
	if err != nil {
		t.Fatal(err)
	}
	var worker *goGroup
	for _, g := range groups {
		if strings.HasSuffix(g.name, ".traceTestWorker") {
			worker = g
		}
	}
	if worker == nil {
		t.Fatalf("no group for traceTestWorker among %d groups", len(groups))
	}
	waits := 0
	for _, n := range worker.waits {
		waits += n
	}
	if worker.goroutines != 1 || worker.wakes < pings || waits != worker.wakes || worker.running <= 0 || worker.waiting <= 0 {
		t.Fatalf("traceTestWorker: %+v, want 1 goroutine, at least %d wake-ups counted in the histogram, time running and blocked", worker, pings)
	}
	var out bytes.Buffer
	writeTraceReport(&out, groups, len(groups))
	if !strings.Contains(out.String(), ".traceTestWorker | 1 |") {
		t.Fatalf("report:\n%s", out.String())
	}
}
