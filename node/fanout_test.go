package node

import (
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kronos-sync/kronos-server/conn"
	"github.com/kronos-sync/kronos-server/feed"
)

// By default the fan-out has one shard per P; a setting is kept.
func TestFanoutShardsDefault(t *testing.T) {
	base := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(base) })
	for procs, want := range map[int]int{1: 1, 2: 2, 4: 4, 16: 16} {
		runtime.GOMAXPROCS(procs)
		var o Options
		o.setDefaults()
		if o.FanoutShards != want {
			t.Errorf("GOMAXPROCS %d: %d fan-out shards, want %d", procs, o.FanoutShards, want)
		}
	}
	o := Options{FanoutShards: 3}
	o.setDefaults()
	if o.FanoutShards != 3 {
		t.Errorf("FanoutShards 3 became %d", o.FanoutShards)
	}
	for _, bad := range []int{-1, maxFanoutShards + 1} {
		o := Options{FanoutShards: bad}
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "FanoutShards") {
			t.Errorf("FanoutShards %d: %v, want a refusal naming it", bad, err)
		}
	}
}

// A shard that has fallen behind takes everything queued in one round, and
// flushes once: each connection's notifications of the whole backlog go
// out in one writev. (The round used to stop at 64 batches.)
func TestFanoutRoundTakesTheWholeBacklog(t *testing.T) {
	var delivered, flushes int
	f := &fanout{deliver: func([]feed.Change, *conn.Batch) { delivered++ }}
	f.flush = func(*conn.Batch) { flushes++ }
	queue := make(chan []feed.Change, fanoutQueue)
	const backlog = 300
	for i := range backlog {
		queue <- []feed.Change{{UserID: "u", TaskID: int64(i)}}
	}
	close(queue)
	f.wg.Add(1)
	f.run(queue)
	if delivered != backlog || flushes != 1 {
		t.Fatalf("%d batches queued: %d delivered in %d rounds, want all in 1", backlog, delivered, flushes)
	}
}

// The fan-out's backlog is on /metrics.
func TestFanoutQueuedMetric(t *testing.T) {
	f := &fanout{shards: []chan []feed.Change{make(chan []feed.Change, 4), make(chan []feed.Change, 4)}}
	f.shards[0] <- nil
	f.shards[1] <- nil
	f.shards[1] <- nil
	reg := prometheus.NewRegistry()
	newMetrics(reg, newHub(), f)
	const want = `
# HELP kronos_fanout_queued_batches Committed batches of changes waiting for the fan-out to write them: a backlog the node is behind by.
# TYPE kronos_fanout_queued_batches gauge
kronos_fanout_queued_batches 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "kronos_fanout_queued_batches"); err != nil {
		t.Fatal(err)
	}
}
