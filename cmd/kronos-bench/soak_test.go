package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseMetrics(t *testing.T) {
	text := `# HELP kronos_connections_closed_total Client connections closed, by reason.
# TYPE kronos_connections_closed_total counter
kronos_connections_closed_total{reason="timeout"} 12
kronos_connections_closed_total{reason="slow_consumer"} 3
kronos_connections_closed_total{reason="a b",x="y"} 1 1700000000000
kronos_connections_open{transport="pending"} 2
kronos_connections_open{transport="tcp"} 1000
kronos_connections_open{transport="websocket"} 998
process_resident_memory_bytes 5.24288e+07
go_goroutines 79
kronos_queue_drops_total 3
not a number
`
	m, err := parseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	s := sampleOf(m)
	if s.RSSBytes != 50<<20 || s.Goroutines != 79 || s.Conns != 2000 {
		t.Fatalf("sample %+v", s)
	}
	closes := m.byLabel("kronos_connections_closed_total", "reason")
	if len(closes) != 3 || closes["timeout"] != 12 || closes["slow_consumer"] != 3 || closes["a b"] != 1 {
		t.Fatalf("closes %v", closes)
	}
	if v, ok := labelValue(`a="1",reason="x\"y"`, "reason"); !ok || v != `x\"y` {
		t.Fatalf("labelValue: %q %v", v, ok)
	}
	if _, ok := labelValue(`a="1"`, "reason"); ok {
		t.Fatal("labelValue found a label that is not there")
	}

	before := metricValues{`kronos_connections_closed_total{reason="timeout"}`: 2, "kronos_queue_drops_total": 3}
	d := delta(before, m, "kronos_connections_closed_total")
	if got := metricValues(d).byLabel("kronos_connections_closed_total", "reason"); got["timeout"] != 10 || got["slow_consumer"] != 3 {
		t.Fatalf("delta %v", got)
	}
	if _, moved := delta(before, m, "kronos_queue")["kronos_queue_drops_total"]; moved {
		t.Fatal("a counter that did not move is in the delta")
	}
}

func TestSoakSummary(t *testing.T) {
	clean := &SoakResults{Label: "clean", Conns: 20, Devices: 10, WritesSent: 100, Notifications: 1000,
		Delivered: 100, LatencyP99MS: 10, LatencySamples: 900, LegitConnsEnd: 20, RSSMaxBytes: 30 << 20}
	soak := *clean
	soak.Label, soak.LatencyP99MS, soak.RSSMaxBytes = "soak", 15, 100<<20
	soak.P99ByWindowMS, soak.WindowSeconds = []float64{12, 15.04}, 60
	soak.Abusive = map[string]int{groupSilent: 5, groupNonReading: 2}
	soak.Closes = map[string]float64{"timeout": 7, "slow_consumer": 9}
	soak.Abuse = map[string]AbuseStats{groupSilent: {Clients: 5, Conns: 12, ServerClosed: 7}}
	s := summarizeSoak(clean, &soak, 512<<20, 2)
	if s.P99Ratio != 1.5 || !s.P99Met || !s.RSSMet || !s.DeliveredMet {
		t.Fatalf("summary %+v", s)
	}
	var b bytes.Buffer
	if err := writeSoakTable(&b, s); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| abusive clients | none | 5 silent, 2 non-reading |", "slow_consumer 9, timeout 7",
		"p99 soak / clean: 1.50× (limit 2×): met", "| silent | 5 | 12 | 7 |",
		"| latency p99 window by window |  | 12.0 15.0 ms (by 60 s) |"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}

	soak.LatencyP99MS, soak.RSSMaxBytes, soak.Notifications = 25, 600<<20, 999
	s = summarizeSoak(clean, &soak, 512<<20, 2)
	if s.P99Met || s.RSSMet || s.DeliveredMet {
		t.Fatalf("summary %+v", s)
	}
}

func TestProcRSS(t *testing.T) {
	status := "Name:\tkronos\nVmRSS:\t  3072 kB\nRssAnon:\t    2048 kB\nRssFile:\t    1024 kB\nRssShmem:\t       0 kB\n"
	anon, file, ok := procRSS(status)
	if !ok || anon != 2<<20 || file != 1<<20 {
		t.Fatalf("anon %v file %v ok %v", anon, file, ok)
	}
	if _, _, ok := procRSS("Name:\tx\n"); ok {
		t.Fatal("ok without the fields")
	}
}

func TestMergeWindows(t *testing.T) {
	a, b := NewHist(), NewHist()
	a.Add(time.Millisecond)
	b.Add(3 * time.Millisecond)
	w := mergeWindows(nil, []*Hist{a})
	w = mergeWindows(w, []*Hist{b, b})
	if len(w) != 2 || w[0].Count != 2 || w[1].Count != 1 || w[0].Quantile(1) != 3*time.Millisecond {
		t.Fatalf("windows %+v", w)
	}
}

func TestSoakFlags(t *testing.T) {
	o, err := parseSoakFlags([]string{"--silent", "7", "--user-creating", "0"})
	if err != nil {
		t.Fatal(err)
	}
	if o.abuse.counts[groupSilent] != 7 || o.abuse.counts[groupUserCreating] != 0 || o.abuse.counts[groupSlow] != defaultAbuse[groupSlow] {
		t.Fatalf("counts %v", o.abuse.counts)
	}
	o, err = parseSoakFlags([]string{"--clean", "--silent", "7"})
	if err != nil {
		t.Fatal(err)
	}
	for g, n := range o.abuse.counts {
		if n != 0 {
			t.Fatalf("--clean left %d %s clients", n, g)
		}
	}
	for _, bad := range [][]string{{"--half-message-bytes", "5000000"}, {"--garbage", "-1"}, {"--devices", "1"}, {"extra"}} {
		if _, err := parseSoakFlags(bad); err == nil {
			t.Errorf("%v: no error", bad)
		}
	}
}

// The soak mode against the real server for a few seconds, every abusive
// group at once, at small limits so that each group meets its limit: it
// checks what happened, never how fast.
func TestSoakSmallRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the server")
	}
	dir := t.TempDir()
	server := build(t, dir, "kronos", "github.com/kronos-sync/kronos-server/cmd/kronos")
	bench := build(t, dir, "kronos-bench", ".")
	addr, admin := startServer(t, server, "--max-message-bytes", "65536", "--max-queue-bytes", "131072",
		"--handshake-timeout", "500ms", "--read-timeout", "1s")
	out := filepath.Join(dir, "soak.json")
	run := exec.Command(bench, "soak", "--addr", addr, "--admin", admin, "--users", "10", "--devices", "3",
		"--rate", "20", "--duration", "3s", "--window", "1s", "--warmup", "1500ms", "--settle", "0s", "--sample-every", "500ms",
		"--silent", "2", "--slow", "3", "--oversized", "5", "--non-reading", "2", "--user-creating", "1", "--garbage", "7",
		"--max-message-bytes", "65536", "--half-message-bytes", "32768", "--non-reading-bytes", "40000",
		"--slow-interval", "50ms", "--abuse-pause", "50ms", "--non-reading-interval", "20ms", "--out", out)
	run.Stderr = os.Stderr
	summary, err := run.Output()
	t.Logf("%s", summary)
	if err != nil {
		t.Fatalf("kronos-bench soak: %v", err)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var r SoakResults
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	if r.Errors != 0 || r.WritesSent == 0 || r.Delivered != 100 || r.LegitConnsEnd != 30 || r.LatencyP99MS <= 0 {
		t.Fatalf("legitimate devices: %d errors (%s), %d writes, %.2f%% delivered, %d connected at the end, p99 %vms",
			r.Errors, r.FirstError, r.WritesSent, r.Delivered, r.LegitConnsEnd, r.LatencyP99MS)
	}
	if len(r.P99ByWindowMS) < 3 {
		t.Errorf("p99 by window: %v", r.P99ByWindowMS)
	}
	if len(r.Samples) < 2 || r.RSSMaxBytes <= 0 || r.RSSFinalBytes <= 0 {
		t.Fatalf("%d samples, RSS max %v final %v", len(r.Samples), r.RSSMaxBytes, r.RSSFinalBytes)
	}
	for _, g := range abuseGroups {
		a := r.Abuse[g]
		if a.Clients == 0 || a.Conns == 0 {
			t.Errorf("%s: %+v", g, a)
		}
	}
	// Each of these is certain within the warm-up: a silent connection
	// times out in 500 ms, the first garbage connection sends invalid JSON
	// on raw TCP, each user-creating login makes a user.
	if r.Closes["timeout"] == 0 || r.Closes["protocol_error"] == 0 || r.Abuse[groupUserCreating].UsersCreated == 0 {
		t.Errorf("closes %v, users created %d", r.Closes, r.Abuse[groupUserCreating].UsersCreated)
	}
}
