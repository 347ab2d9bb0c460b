package main

// The garbage collector's policy. By default Go collects whenever the heap
// doubles its live size: a node holding 20,000 idle connections has a live
// heap of some 40 MB and, under load, collects several times a second
// (about a fifth of its CPU at saturation, docs/benchmarks.md) while the
// memory it was given sits unused. With a memory limit, from --memory-limit
// or the container's cgroup, the node lets the heap grow between
// collections by three times its live size or 64 MiB, whichever is more,
// up to half the limit (never less than Go's default), and tells the
// runtime the limit as a soft ceiling, which makes it collect harder
// instead of passing it. The growth is bounded below half the limit
// because a heap that grows far past its live size spreads the long-lived
// objects made meanwhile (a ramp's connections) over many spans that stay
// partly used once the garbage is collected: with half of 1 GiB, a node
// kept 2.6 KB of RSS per idle connection instead of 1.6 KB.

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"time"
)

// memoryLimitShare is the part of the cgroup's limit the heap may use: the
// rest is for goroutine stacks, the kernel's socket buffers charged to the
// container, and what the runtime has not returned yet.
const memoryLimitShare = 0.8

// parseBytes reads a size: a number of bytes with an optional unit, KiB,
// MiB, GiB (or KB, MB, GB as powers of 1000).
func parseBytes(s string) (int64, error) {
	units := []struct {
		suffix string
		scale  float64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	num, scale := strings.TrimSpace(s), 1.0
	for _, u := range units {
		if strings.HasSuffix(num, u.suffix) {
			num, scale = strings.TrimSpace(strings.TrimSuffix(num, u.suffix)), u.scale
			break
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(f) || math.Abs(f*scale) > math.MaxInt64/2 {
		return 0, fmt.Errorf("%q is not a size (bytes, or a number with KiB, MiB or GiB)", s)
	}
	return int64(f * scale), nil
}

// cgroupMemoryLimit returns the memory limit of this process's cgroup (v2,
// else v1), or 0 when there is none. root is /sys/fs/cgroup.
func cgroupMemoryLimit(root string) int64 {
	for _, name := range []string{cgroupV2Path(root), filepath.Join(root, "memory.max"),
		filepath.Join(root, "memory", "memory.limit_in_bytes")} {
		b, err := os.ReadFile(name)
		if err != nil {
			continue
		}
		v := strings.TrimSpace(string(b))
		if v == "max" {
			return 0
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 || n >= 1<<60 { // v1 says "no limit" with a huge number
			return 0
		}
		return n
	}
	return 0
}

// cgroupV2Path is memory.max of the cgroup /proc/self/cgroup names (where
// the container does not have a cgroup namespace of its own).
func cgroupV2Path(root string) string {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if path, ok := strings.CutPrefix(line, "0::"); ok && path != "/" {
			return filepath.Join(root, filepath.Clean(path), "memory.max")
		}
	}
	return ""
}

// minGrowth is the least a heap may grow by between collections under a
// memory limit: a small live heap still collects rarely.
const minGrowth = 64 << 20

// gcPercentFor is the GOGC that lets a heap with live bytes grow by
// max(3×live, minGrowth) before the next collection, but not past ceiling,
// and never less than Go's default of 100.
func gcPercentFor(live, ceiling int64) int {
	if live <= 0 {
		return 100
	}
	target := min(ceiling, live+max(3*live, minGrowth))
	if target <= 2*live {
		return 100
	}
	return int(min((target-live)*100/live, 100_000))
}

// memoryPolicy is the policy in force, for the start-up log.
type memoryPolicy struct {
	limit  int64  // soft limit given to the runtime; 0: none
	source string // flag, cgroup, GOMEMLIMIT/GOGC, or none
}

// applyMemoryPolicy sets the runtime's soft memory limit and starts tuning
// GOGC after each collection. flagLimit is --memory-limit: positive bytes,
// 0 for the cgroup's limit, negative for Go's defaults. GOGC or GOMEMLIMIT
// in the environment mean the operator chose: nothing is changed then.
func applyMemoryPolicy(flagLimit int64, cgroupRoot string) memoryPolicy {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		return memoryPolicy{source: "GOGC/GOMEMLIMIT"}
	}
	p := memoryPolicy{limit: flagLimit, source: "flag"}
	switch {
	case flagLimit < 0:
		return memoryPolicy{source: "none"}
	case flagLimit == 0:
		cg := cgroupMemoryLimit(cgroupRoot)
		if cg == 0 {
			return memoryPolicy{source: "none"}
		}
		p = memoryPolicy{limit: int64(float64(cg) * memoryLimitShare), source: "cgroup"}
	}
	debug.SetMemoryLimit(p.limit)
	startGCTuner(p.limit / 2)
	go collectWhenIdle(time.Second)
	return p
}

// collectWhenIdle gives memory back once the node goes quiet. With the heap
// allowed to grow well past its live size, the garbage of a burst (a
// reconnect storm's logins, say) would otherwise stay until the next
// collection, which an idle node does not reach for minutes, and the
// runtime keeps freed pages up to the heap's goal instead of returning
// them. Each interval: if the node allocated little (under 2 MiB a second:
// an idle node allocates a few hundred KiB) and the heap holds garbage
// (more than half again its live size, and 8 MiB more) or pages freed but
// not returned (over 8 MiB), it collects and returns the memory to the
// system. Once done, neither holds again until garbage has built up anew.
func collectWhenIdle(interval time.Duration) {
	samples := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/gc/heap/live:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/gc/heap/goal:bytes"},
		{Name: "/memory/classes/heap/free:bytes"}}
	var lastAllocs uint64
	for range time.Tick(interval) {
		metrics.Read(samples)
		if samples[0].Value.Kind() != metrics.KindUint64 || samples[4].Value.Kind() != metrics.KindUint64 {
			return
		}
		allocs, live, heap, goal, free := samples[0].Value.Uint64(), samples[1].Value.Uint64(),
			samples[2].Value.Uint64(), samples[3].Value.Uint64(), samples[4].Value.Uint64()
		rate := allocs - lastAllocs
		lastAllocs = allocs
		if idle(rate, live, heap, goal, free, interval) {
			debug.FreeOSMemory()
		}
	}
}

// idle reports whether a heap with these figures should be collected and
// its free pages returned now: allocation is slow, the next collection is
// not due anyway, and there is garbage or free memory worth returning.
func idle(allocatedPerInterval, live, heap, goal, free uint64, interval time.Duration) bool {
	if goal <= heap || live == 0 {
		return false
	}
	quiet := float64(allocatedPerInterval)/interval.Seconds() < 2<<20
	return quiet && (heap > live+live/2+8<<20 || free > 8<<20)
}

// startGCTuner sets GOGC after every collection so that the heap may grow
// as gcPercentFor says, up to ceiling: an object without references is finalized once per cycle and
// arms the next one.
func startGCTuner(ceiling int64) {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	var arm func()
	arm = func() {
		sentinel := new([16]byte)
		runtime.SetFinalizer(sentinel, func(*[16]byte) {
			metrics.Read(sample)
			if sample[0].Value.Kind() == metrics.KindUint64 {
				debug.SetGCPercent(gcPercentFor(int64(sample[0].Value.Uint64()), ceiling))
			}
			arm()
		})
	}
	arm()
}
