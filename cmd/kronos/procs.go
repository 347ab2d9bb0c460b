package main

// The scheduler's policy. A node's goroutines spend much of their time in
// system calls that hold their P while they run: the fan-out's writev
// (several microseconds each, the loopback or network stack under it),
// the store's pwrite and fdatasync, the epoll loop's wait. With one P per
// CPU, two fan-out goroutines writing a backlog could hold both Ps for a
// whole round while the commit loop and the read workers, runnable, waited
// for one: on two CPUs at 6,000 writes/s, changes waited 200–400 ms (p90,
// p99) between commit and their turn to be written. With twice as many Ps
// as CPUs the kernel shares the CPUs among those threads instead, and the
// same load's p50 fell from about 320 ms to 30–65 ms (docs/benchmarks.md,
// "More Ps than CPUs").

import (
	"os"
	"runtime"
)

// procsPerCPU is how many Ps the node runs per CPU it may use. Three and
// four per CPU did no better than two in the measurements, and eight did
// worse.
const procsPerCPU = 2

// procsPolicy is the policy in force, for the start-up log.
type procsPolicy struct {
	procs  int    // GOMAXPROCS
	source string // flag, default, go (Go's own), or GOMAXPROCS (the environment)
}

// applyProcsPolicy sets GOMAXPROCS from --gomaxprocs: positive, that many;
// 0, procsPerCPU times Go's default (the CPUs, or the container's CPU
// quota, as the runtime reads them at start); negative, Go's default,
// which then also follows a quota that changes. GOMAXPROCS in the
// environment means the operator chose: nothing is changed then.
func applyProcsPolicy(flagProcs int) procsPolicy {
	if os.Getenv("GOMAXPROCS") != "" {
		return procsPolicy{procs: runtime.GOMAXPROCS(0), source: "GOMAXPROCS"}
	}
	switch {
	case flagProcs < 0:
		return procsPolicy{procs: runtime.GOMAXPROCS(0), source: "go"}
	case flagProcs == 0:
		n := procsPerCPU * runtime.GOMAXPROCS(0)
		runtime.GOMAXPROCS(n)
		return procsPolicy{procs: n, source: "default"}
	default:
		runtime.GOMAXPROCS(flagProcs)
		return procsPolicy{procs: flagProcs, source: "flag"}
	}
}
