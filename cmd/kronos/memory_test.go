package main

import (
	"bufio"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "-1": -1, "1048576": 1 << 20, "512MiB": 512 << 20,
		"1.5GiB": 3 << 29, "2 GiB": 2 << 30, "64KiB": 64 << 10, "1GB": 1e9, "100B": 100} {
		if got, err := parseBytes(in); err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "lots", "1TiB2", "NaN", "1e300GiB"} {
		if _, err := parseBytes(bad); err == nil {
			t.Errorf("parseBytes(%q) accepted", bad)
		}
	}
}

func TestGCPercentFor(t *testing.T) {
	for _, tc := range []struct {
		live, ceiling int64
		want          int
	}{
		{40 << 20, 512 << 20, 300},  // 40 MiB live may grow by 120 MiB
		{10 << 20, 512 << 20, 640},  // 10 MiB live may grow by 64 MiB
		{100 << 20, 256 << 20, 156}, // the ceiling bounds the growth
		{300 << 20, 512 << 20, 100}, // above half the ceiling: Go's default
		{0, 512 << 20, 100},
		{1, 1 << 40, 100_000}, // capped
	} {
		if got := gcPercentFor(tc.live, tc.ceiling); got != tc.want {
			t.Errorf("gcPercentFor(%d, %d) = %d, want %d", tc.live, tc.ceiling, got, tc.want)
		}
	}
}

func TestIdleCollection(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name                              string
		perSecond, live, heap, goal, free uint64
		want                              bool
	}{
		{"after a burst, quiet", 1 * mib, 40 * mib, 300 * mib, 512 * mib, 0, true},
		{"under load", 50 * mib, 40 * mib, 300 * mib, 512 * mib, 0, false},
		{"quiet, no garbage", 0, 40 * mib, 45 * mib, 512 * mib, 0, false},
		{"quiet, freed pages kept", 0, 40 * mib, 45 * mib, 512 * mib, 60 * mib, true},
		{"under load, freed pages kept", 50 * mib, 40 * mib, 45 * mib, 100 * mib, 60 * mib, false},
		{"past the goal", 0, 40 * mib, 600 * mib, 512 * mib, 60 * mib, false},
		// The heap's goal near: a quiet node still collects (it took the
		// time to the goal as the measure of quiet, and kept a ramp's
		// garbage for most of a minute).
		{"quiet, near the goal", mib / 4, 20 * mib, 72 * mib, 81 * mib, 40 * mib, true},
	} {
		if got := idle(tc.perSecond, tc.live, tc.heap, tc.goal, tc.free, time.Second); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestCgroupMemoryLimit(t *testing.T) {
	write := func(t *testing.T, root, name, content string) {
		t.Helper()
		path := filepath.Join(root, name)
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	v2 := t.TempDir()
	write(t, v2, "memory.max", "2147483648\n")
	v2max := t.TempDir()
	write(t, v2max, "memory.max", "max\n")
	v1 := t.TempDir()
	write(t, v1, "memory/memory.limit_in_bytes", "1073741824\n")
	v1none := t.TempDir()
	write(t, v1none, "memory/memory.limit_in_bytes", "9223372036854771712\n")
	for root, want := range map[string]int64{v2: 2 << 30, v2max: 0, v1: 1 << 30, v1none: 0, t.TempDir(): 0} {
		if got := cgroupMemoryLimit(root); got != want {
			t.Errorf("%s: %d, want %d", root, got, want)
		}
	}
}

// The real binary hands --memory-limit to the runtime, as its /metrics show.
func TestServeSetsTheMemoryLimit(t *testing.T) {
	srv := startServer(t, "--store", "bolt:"+filepath.Join(t.TempDir(), "k.db"), "--memory-limit", "512MiB")
	if v := metricValue(t, srv.admin, "go_gc_gomemlimit_bytes"); v != "5.36870912e+08" {
		t.Fatalf("go_gc_gomemlimit_bytes %s, want 512 MiB", v)
	}
}

// metricValue reads one unlabelled metric from a node's /metrics.
func metricValue(t *testing.T, admin, name string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return v
		}
	}
	t.Fatalf("no %s in /metrics", name)
	return ""
}
