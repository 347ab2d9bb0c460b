package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestProcsPolicy(t *testing.T) {
	t.Setenv("GOMAXPROCS", "") // whatever the test runs with
	base := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(base) })
	for _, c := range []struct {
		flag   int
		env    string
		want   int
		source string
	}{
		{flag: 0, want: procsPerCPU * base, source: "default"},
		{flag: 3, want: 3, source: "flag"},
		{flag: -1, want: base, source: "go"},
		{flag: 3, env: "1", want: base, source: "GOMAXPROCS"}, // the environment wins
	} {
		runtime.GOMAXPROCS(base)
		t.Setenv("GOMAXPROCS", c.env)
		p := applyProcsPolicy(c.flag)
		if p.procs != c.want || p.source != c.source || runtime.GOMAXPROCS(0) != c.want {
			t.Errorf("flag %d, env %q: %+v and GOMAXPROCS %d, want %d from %s",
				c.flag, c.env, p, runtime.GOMAXPROCS(0), c.want, c.source)
		}
	}
}

// The real binary runs with twice Go's default Ps unless told otherwise,
// as its /metrics show, and one fan-out shard per P.
func TestServeSetsGOMAXPROCS(t *testing.T) {
	procsOf := func(args ...string) (int, string) {
		cmd := exec.Command(kronosBinary(t), append([]string{"serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
			"--store", "bolt:" + filepath.Join(t.TempDir(), "k.db")}, args...)...)
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "GOMAXPROCS=") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		s := startCommand(t, cmd)
		source, _ := s.logs.waitFor(t, "scheduler policy", 5*time.Second)["source"].(string)
		n, err := strconv.Atoi(metricValue(t, s.admin, "go_sched_gomaxprocs_threads"))
		if err != nil {
			t.Fatal(err)
		}
		// The fan-out has one shard per P, and says so as it starts.
		if shards, _ := s.logs.waitFor(t, "accepting clients", 5*time.Second)["fanout_shards"].(float64); int(shards) != n {
			t.Fatalf("%d fan-out shards logged with %d Ps", int(shards), n)
		}
		return n, source
	}
	goDefault, source := procsOf("--gomaxprocs", "-1")
	if source != "go" || goDefault < 1 {
		t.Fatalf("--gomaxprocs -1: %d Ps, from %q", goDefault, source)
	}
	if n, source := procsOf(); n != procsPerCPU*goDefault || source != "default" {
		t.Fatalf("by default: %d Ps from %q, want %d", n, source, procsPerCPU*goDefault)
	}
}

// How long goroutines waited for a P is on /metrics: the first place a
// node short of CPU shows.
func TestServeExportsSchedulerLatency(t *testing.T) {
	s := startServer(t, "--store", "bolt:"+filepath.Join(t.TempDir(), "k.db"))
	n, err := strconv.ParseFloat(metricValue(t, s.admin, "go_sched_latencies_seconds_count"), 64)
	if err != nil || n < 1 {
		t.Fatalf("go_sched_latencies_seconds_count %v (%v): the node ran goroutines, so the histogram counts some", n, err)
	}
}
