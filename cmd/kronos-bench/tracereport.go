package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"golang.org/x/exp/trace"
)

// The trace report: where a node's goroutines spend their time, from a
// runtime trace (the node's /debug/pprof/trace with --admin-pprof). A
// goroutine's group is the function at the bottom of its own stack (its
// start: the commit loop, a pool worker, a fan-out shard). For each group:
// time running, waiting for a CPU (runnable), in system calls and blocked,
// and how long a wake-up waited for a CPU. This is what showed the read
// workers waiting in the epoll loop's run queue (docs/benchmarks.md).

func runTraceReport(args []string) error {
	fs := flag.NewFlagSet("trace-report", flag.ContinueOnError)
	top := fs.Int("top", 8, "groups shown, by running time")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: kronos-bench trace-report [--top N] TRACE_FILE")
	}
	groups, err := traceGroups(fs.Arg(0))
	if err != nil {
		return err
	}
	writeTraceReport(os.Stdout, groups, *top)
	return nil
}

// waitBounds are the upper bounds of the wait histogram's buckets; the
// last bucket holds the rest.
var waitBounds = []time.Duration{10 * time.Microsecond, 100 * time.Microsecond, time.Millisecond,
	5 * time.Millisecond, 10 * time.Millisecond, 50 * time.Millisecond}

type goGroup struct {
	name                                string
	goroutines                          int
	running, runnable, syscall, waiting time.Duration
	wakes                               int // runnable spells: wake-ups and preemptions
	maxWait                             time.Duration
	waits                               []int // runnable spells by waitBounds
}

// traceGroups reads the trace twice: first to name each goroutine by its
// own stack (a state change's stack is the goroutine's own only when it
// stops running), then to add up its time in each state.
func traceGroups(path string) ([]*goGroup, error) {
	names := map[trace.GoID]string{}
	err := eachGoTransition(path, func(ev *trace.Event, id trace.GoID, from, _ trace.GoState) {
		if from != trace.GoRunning || names[id] != "" {
			return
		}
		for f := range ev.StateTransition().Stack.Frames() {
			names[id] = f.Func // the last frame is the bottom of the stack
		}
	})
	if err != nil {
		return nil, err
	}
	type spell struct {
		state trace.GoState
		since trace.Time
	}
	spells := map[trace.GoID]*spell{}
	byName := map[string]*goGroup{}
	err = eachGoTransition(path, func(ev *trace.Event, id trace.GoID, from, to trace.GoState) {
		sp := spells[id]
		if sp == nil {
			sp = &spell{state: from, since: ev.Time()}
			spells[id] = sp
		}
		name := names[id]
		if name == "" {
			name = "(no stack seen)"
		}
		g := byName[name]
		if g == nil {
			g = &goGroup{name: name, waits: make([]int, len(waitBounds)+1)}
			byName[name] = g
		}
		d := time.Duration(ev.Time() - sp.since)
		switch from {
		case trace.GoRunning:
			g.running += d
		case trace.GoRunnable:
			g.runnable += d
			g.wakes++
			g.maxWait = max(g.maxWait, d)
			i, _ := slices.BinarySearch(waitBounds, d+1)
			g.waits[i]++
		case trace.GoSyscall:
			g.syscall += d
		case trace.GoWaiting:
			g.waiting += d
		}
		sp.state, sp.since = to, ev.Time()
	})
	if err != nil {
		return nil, err
	}
	for id, name := range names {
		if _, seen := spells[id]; seen && byName[name] != nil {
			byName[name].goroutines++
		}
	}
	groups := make([]*goGroup, 0, len(byName))
	for _, g := range byName {
		groups = append(groups, g)
	}
	slices.SortFunc(groups, func(a, b *goGroup) int { return int(b.running - a.running) })
	return groups, nil
}

// eachGoTransition calls f for every goroutine state change in the trace.
func eachGoTransition(path string, f func(ev *trace.Event, id trace.GoID, from, to trace.GoState)) error {
	file, err := os.Open(path)
	if err != nil {
		return err
	}
	defer file.Close()
	r, err := trace.NewReader(file)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	for {
		ev, err := r.ReadEvent()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if ev.Kind() != trace.EventStateTransition {
			continue
		}
		st := ev.StateTransition()
		if st.Resource.Kind != trace.ResourceGoroutine {
			continue
		}
		from, to := st.Goroutine()
		f(&ev, st.Resource.Goroutine(), from, to)
	}
}

func writeTraceReport(w io.Writer, groups []*goGroup, top int) {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.0f", d.Seconds()*1000) }
	fmt.Fprintln(w, "| goroutines (where they start) | count | running ms | runnable ms | syscalls ms | blocked ms | times runnable | mean wait for a CPU | longest | waits <10µs / <100µs / <1ms / <5ms / <10ms / <50ms / more |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
	for _, g := range groups[:min(top, len(groups))] {
		mean := time.Duration(0)
		if g.wakes > 0 {
			mean = g.runnable / time.Duration(g.wakes)
		}
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %s | %d | %v | %v | %v |\n", g.name, g.goroutines,
			ms(g.running), ms(g.runnable), ms(g.syscall), ms(g.waiting), g.wakes,
			mean.Round(time.Microsecond), g.maxWait.Round(time.Microsecond), g.waits)
	}
}
