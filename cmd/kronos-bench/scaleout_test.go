package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestScaleoutReport builds the per-node report from snapshots written the
// way scaleout.sh writes them.
func TestScaleoutReport(t *testing.T) {
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "metrics"), 0o755))
	bench := Results{Label: "unit", Users: 30, Devices: 10, Conns: 300, WritesSent: 100, Notifications: 1000,
		LoadSeconds: 10, NotificationsPS: 100, Machine: "x, 2 CPUs, linux/amd64"}
	data, _ := json.Marshal(bench)
	must(os.WriteFile(filepath.Join(dir, "bench.json"), data, 0o644))
	// phase → connections, RSS, notifications sent, CPU seconds, updates
	phases := map[string][5]float64{
		"before": {0, 20 << 20, 0, 1, 0},
		"idle":   {100, 20<<20 + 100*2000, 10, 2, 0},
		"loaded": {100, 21 << 20, 343, 3, 33},
	}
	for phase, v := range phases {
		for i := range 3 {
			prom := fmt.Sprintf("# HELP x\nkronos_connections_open{transport=\"tcp\"} %v\nkronos_connections_open{transport=\"websocket\"} 0\n"+
				"process_resident_memory_bytes %v\nkronos_notifications_sent_total %v\nprocess_cpu_seconds_total %v\n"+
				"kronos_requests_total{outcome=\"ok\",type=\"update\"} %v\nkronos_requests_total{outcome=\"done\",type=\"login\"} 100\n",
				v[0], v[1], v[2], v[3], v[4])
			must(os.WriteFile(filepath.Join(dir, "metrics", fmt.Sprintf("%s-node%d.prom", phase, i)), []byte(prom), 0o644))
		}
	}
	host := "time %v\ncpu  %v 0 0 %v 0 0 %v 0 0 0\nclk_tck 100\nticks postgres %v\nticks kronos-bench 0\nticks kronos-pgfwd %v\n"
	must(os.WriteFile(filepath.Join(dir, "metrics", "idle-host.txt"), fmt.Appendf(nil, host, 100.0, 0, 0, 0, 0, 0), 0o644))
	// 10 s on 2 CPUs: 2,000 ticks, 1,000 busy (200 of them softirq); PostgreSQL 500 ticks, its forward 100.
	must(os.WriteFile(filepath.Join(dir, "metrics", "loaded-host.txt"), fmt.Appendf(nil, host, 110.0, 800, 1000, 200, 500, 100), 0o644))

	rep, err := buildScaleoutReport(dir, 3)
	if err != nil {
		t.Fatal(err)
	}
	near := func(what string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-6*math.Max(1, math.Abs(want)) {
			t.Errorf("%s: %v, want %v", what, got, want)
		}
	}
	n := rep.Nodes[0]
	if n.ConnsIdle != 100 {
		t.Errorf("connections: %d, want 100", n.ConnsIdle)
	}
	near("RSS per connection", n.RSSPerConn, 2000)
	near("notifications/s", n.NotificationsPS, 33.3)
	near("writes/s", n.WritesPS, 3.3)
	near("CPU cores", n.CPUCores, 0.1)
	near("delivered %", rep.DeliveredPc, 100)
	near("host busy cores", rep.HostBusyCores, 1)
	near("softirq cores", rep.HostSoftirqCores, 0.2)
	near("PostgreSQL cores", rep.PostgresCores, 0.5)
	near("PostgreSQL µs per write", rep.PostgresUSPerW, 50000)
	near("forward cores", rep.PgfwdCores, 0.1)
	md := rep.markdown()
	for _, want := range []string{"| node0 | 100 |", "2,000 B", "| **all** | 300 |", "1,000 of 1,000 asked (100.00%)", "(of 2)", "its forward 0.10"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if scaleoutCommas(1234567.4) != "1,234,567" || scaleoutCommas(-999) != "-999" || scaleoutCommas(1000) != "1,000" {
		t.Error("scaleoutCommas")
	}
}
