package main

// The helpers of scaleout.sh, which measures three nodes on PostgreSQL in
// network namespaces behind a kernel balancer:
//
//	kronos-bench scaleout-forward LISTEN TARGET    a TCP port forward (PostgreSQL into the namespaces)
//	kronos-bench scaleout-report --dir DIR         per-node table from the snapshots the script took
//
// The script snapshots every node's /metrics and the host's CPU counters at
// four moments: before the bench ("before"), when the load phase starts
// ("idle": every connection logged in and idle), when the reconnect storm
// starts ("loaded"), and after the bench ("after"). The report reads those
// and the bench's results (DIR/bench.json) and writes DIR/scaleout.json and
// DIR/scaleout.md.

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kronos-sync/kronos-server/internal/tcppipe"
)

func init() {
	subcommands["scaleout-forward"] = runScaleoutForward
	subcommands["scaleout-report"] = runScaleoutReport
}

// runScaleoutForward forwards LISTEN to TARGET until killed. It costs two
// descriptors per forwarded connection, which is why it carries only the
// nodes' store connections and never the clients'.
func runScaleoutForward(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: scaleout-forward LISTEN TARGET")
	}
	ln, err := net.Listen("tcp", args[0])
	if err != nil {
		return err
	}
	target := args[1]
	tcppipe.Forward(ln, func() string { return target })
	return nil
}

// scaleoutPromSums reads a Prometheus text exposition and sums each metric's
// samples over their labels.
func scaleoutPromSums(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		name := line[:i]
		if strings.IndexByte(name, '{') >= 0 {
			out[name] = v
		}
		if j := strings.IndexByte(name, '{'); j >= 0 {
			name = name[:j]
		}
		out[name] += v
	}
	return out, sc.Err()
}

// scaleoutHost is what the script records of the host at a snapshot.
type scaleoutHost struct {
	Time      float64            // Unix seconds
	CPU       []float64          // /proc/stat's first line: user nice system idle iowait irq softirq steal …
	ProcTicks map[string]float64 // CPU ticks of the processes by name (postgres, kronos-bench, …)
	ClkTck    float64
}

func scaleoutReadHost(path string) (scaleoutHost, error) {
	h := scaleoutHost{ProcTicks: map[string]float64{}, ClkTck: 100}
	data, err := os.ReadFile(path)
	if err != nil {
		return h, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "time":
			h.Time, _ = strconv.ParseFloat(f[1], 64)
		case "cpu":
			for _, s := range f[1:] {
				v, _ := strconv.ParseFloat(s, 64)
				h.CPU = append(h.CPU, v)
			}
		case "clk_tck":
			h.ClkTck, _ = strconv.ParseFloat(f[1], 64)
		case "ticks":
			if len(f) == 3 {
				h.ProcTicks[f[1]], _ = strconv.ParseFloat(f[2], 64)
			}
		}
	}
	return h, nil
}

// scaleoutNode is one node's row of the report.
type scaleoutNode struct {
	Name            string  `json:"name"`
	ConnsIdle       int     `json:"connections_idle"`
	RSSBefore       float64 `json:"rss_bytes_before"`
	RSSIdle         float64 `json:"rss_bytes_idle"`
	RSSLoaded       float64 `json:"rss_bytes_after_load"`
	RSSPerConn      float64 `json:"rss_bytes_per_idle_connection"`
	HeapIdle        float64 `json:"heap_inuse_bytes_idle"`
	GoroutinesIdle  float64 `json:"goroutines_idle"`
	Writes          float64 `json:"writes_in_load"`
	WritesPS        float64 `json:"writes_per_second"`
	Notifications   float64 `json:"notifications_sent_in_load"`
	NotificationsPS float64 `json:"notifications_per_second"`
	CPUSeconds      float64 `json:"cpu_seconds_in_load"`
	CPUCores        float64 `json:"cpu_cores_in_load"`
	CPUPerNotifUS   float64 `json:"cpu_us_per_notification"`
	Logins          float64 `json:"logins_total"`
	RebalanceClosed float64 `json:"rebalance_closed_total"`
	QueueDrops      float64 `json:"queue_drops_total"`
	Refused         float64 `json:"connections_refused_total"`
	ConnsAfter      int     `json:"connections_after"`
}

// scaleoutReport is DIR/scaleout.json.
type scaleoutReport struct {
	Label       string         `json:"label"`
	Topology    string         `json:"topology"`
	Bench       *Results       `json:"bench"`
	Nodes       []scaleoutNode `json:"nodes"`
	Conns       int            `json:"connections"`
	Asked       float64        `json:"notifications_asked"`
	DeliveredPc float64        `json:"delivered_percent"`
	LoadWallS   float64        `json:"load_wall_seconds"`
	// The host during the load phase, in cores (of runtime.NumCPU).
	HostBusyCores    float64 `json:"host_busy_cores"`
	HostSoftirqCores float64 `json:"host_softirq_cores"`
	PostgresCores    float64 `json:"postgres_cores"`
	BenchCores       float64 `json:"bench_cores"`
	NodesCores       float64 `json:"nodes_cores"`
	PgfwdCores       float64 `json:"pgfwd_cores"` // the forward to PostgreSQL (kronos-pgfwd)
	PostgresUSPerW   float64 `json:"postgres_cpu_us_per_write"`
}

func runScaleoutReport(args []string) error {
	fs := flag.NewFlagSet("scaleout-report", flag.ContinueOnError)
	dir := fs.String("dir", "", "the run's directory (bench.json, metrics/)")
	nodes := fs.Int("nodes", 3, "nodes")
	topology := fs.String("topology", "", "a line on the topology, for the record")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("--dir is required")
	}
	rep, err := buildScaleoutReport(*dir, *nodes)
	if err != nil {
		return err
	}
	rep.Topology = *topology
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*dir, "scaleout.json"), append(data, '\n'), 0o644); err != nil {
		return err
	}
	md := rep.markdown()
	if err := os.WriteFile(filepath.Join(*dir, "scaleout.md"), []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Print(md)
	return nil
}

func buildScaleoutReport(dir string, n int) (*scaleoutReport, error) {
	data, err := os.ReadFile(filepath.Join(dir, "bench.json"))
	if err != nil {
		return nil, err
	}
	var bench Results
	if err := json.Unmarshal(data, &bench); err != nil {
		return nil, fmt.Errorf("bench.json: %v", err)
	}
	rep := &scaleoutReport{Label: bench.Label, Bench: &bench, Conns: bench.Conns}
	rep.Asked = float64(bench.WritesSent) * float64(bench.Devices)
	if rep.Asked > 0 {
		rep.DeliveredPc = 100 * float64(bench.Notifications) / rep.Asked
	}
	metrics := func(phase string, i int) (map[string]float64, error) {
		f, err := os.Open(filepath.Join(dir, "metrics", fmt.Sprintf("%s-node%d.prom", phase, i)))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		return scaleoutPromSums(f)
	}
	idleHost, err1 := scaleoutReadHost(filepath.Join(dir, "metrics", "idle-host.txt"))
	loadedHost, err2 := scaleoutReadHost(filepath.Join(dir, "metrics", "loaded-host.txt"))
	if err := errors.Join(err1, err2); err != nil {
		return nil, err
	}
	const updatesOK = `kronos_requests_total{outcome="ok",type="update"}`
	wall := loadedHost.Time - idleHost.Time
	rep.LoadWallS = wall
	for i := range n {
		before, err1 := metrics("before", i)
		idle, err2 := metrics("idle", i)
		loaded, err3 := metrics("loaded", i)
		if err := errors.Join(err1, err2, err3); err != nil {
			return nil, fmt.Errorf("node %d: %v", i, err)
		}
		after, _ := metrics("after", i) // the node may be gone: optional
		nd := scaleoutNode{
			Name:           fmt.Sprintf("node%d", i),
			ConnsIdle:      int(idle["kronos_connections_open"]),
			RSSBefore:      before["process_resident_memory_bytes"],
			RSSIdle:        idle["process_resident_memory_bytes"],
			RSSLoaded:      loaded["process_resident_memory_bytes"],
			HeapIdle:       idle["go_memstats_heap_inuse_bytes"],
			GoroutinesIdle: idle["go_goroutines"],
			Writes:         loaded[updatesOK] - idle[updatesOK],
			Notifications:  loaded["kronos_notifications_sent_total"] - idle["kronos_notifications_sent_total"],
			CPUSeconds:     loaded["process_cpu_seconds_total"] - idle["process_cpu_seconds_total"],
		}
		if c := nd.ConnsIdle - int(before["kronos_connections_open"]); c > 0 {
			nd.RSSPerConn = (nd.RSSIdle - nd.RSSBefore) / float64(c)
		}
		if bench.LoadSeconds > 0 {
			nd.NotificationsPS = nd.Notifications / bench.LoadSeconds
			nd.WritesPS = nd.Writes / bench.LoadSeconds
		}
		if wall > 0 {
			nd.CPUCores = nd.CPUSeconds / wall
		}
		if nd.Notifications > 0 {
			nd.CPUPerNotifUS = 1e6 * nd.CPUSeconds / nd.Notifications
		}
		last := loaded
		if after != nil {
			last = after
			nd.ConnsAfter = int(after["kronos_connections_open"])
		}
		nd.Logins = last["kronos_logins_total"]
		nd.RebalanceClosed = last["kronos_rebalance_closed_total"]
		nd.QueueDrops = last["kronos_queue_drops_total"]
		nd.Refused = last["kronos_connections_refused_total"]
		rep.Nodes = append(rep.Nodes, nd)
		rep.NodesCores += nd.CPUCores
	}
	if wall > 0 && len(idleHost.CPU) >= 7 && len(loadedHost.CPU) == len(idleHost.CPU) {
		var total float64
		d := make([]float64, len(idleHost.CPU))
		for i := range d {
			d[i] = loadedHost.CPU[i] - idleHost.CPU[i]
			if i < 8 { // guest time is already in user
				total += d[i]
			}
		}
		cores := total / idleHost.ClkTck / wall
		if total > 0 {
			idle := d[3] + d[4]
			rep.HostBusyCores = cores * (total - idle) / total
			rep.HostSoftirqCores = cores * d[6] / total
		}
		ticks := func(name string) float64 {
			return (loadedHost.ProcTicks[name] - idleHost.ProcTicks[name]) / idleHost.ClkTck / wall
		}
		rep.PostgresCores = ticks("postgres")
		rep.BenchCores = ticks("kronos-bench")
		rep.PgfwdCores = ticks("kronos-pgfwd")
		if w := float64(bench.WritesSent); w > 0 {
			rep.PostgresUSPerW = 1e6 * rep.PostgresCores * wall / w
		}
	}
	return rep, nil
}

func (r *scaleoutReport) markdown() string {
	var b strings.Builder
	b1 := r.Bench
	fmt.Fprintf(&b, "## %s\n\n", r.Label)
	if r.Topology != "" {
		fmt.Fprintf(&b, "%s\n\n", r.Topology)
	}
	fmt.Fprintf(&b, "%d connections (%d users × %d devices, %.0f%% WebSocket), %d bench worker processes; %.0f writes/s asked for %.0f s.\n\n",
		r.Conns, b1.Users, b1.Devices, b1.WSShare*100, b1.WorkerProcs, b1.Rate, b1.LoadSeconds)
	b.WriteString("| node | connections | RSS before | RSS idle | RSS per idle connection | heap in use, idle | goroutines, idle | writes/s taken | notifications sent/s | CPU in load (cores) | CPU per notification | RSS at the end of the load | rebalanced away | queue drops |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	var conns int
	var nps, wps, cores float64
	for _, n := range r.Nodes {
		conns += n.ConnsIdle
		nps += n.NotificationsPS
		wps += n.WritesPS
		cores += n.CPUCores
		fmt.Fprintf(&b, "| %s | %s | %.1f MiB | %.1f MiB | %s B | %.1f MiB | %.0f | %s | %s | %.2f | %.1f µs | %.1f MiB | %.0f | %.0f |\n",
			n.Name, scaleoutCommas(float64(n.ConnsIdle)), n.RSSBefore/(1<<20), n.RSSIdle/(1<<20), scaleoutCommas(n.RSSPerConn),
			n.HeapIdle/(1<<20), n.GoroutinesIdle, scaleoutCommas(n.WritesPS), scaleoutCommas(n.NotificationsPS), n.CPUCores, n.CPUPerNotifUS,
			n.RSSLoaded/(1<<20), n.RebalanceClosed, n.QueueDrops)
	}
	fmt.Fprintf(&b, "| **all** | %s | | | | | | %s | %s | %.2f | | | | |\n\n", scaleoutCommas(float64(conns)), scaleoutCommas(wps), scaleoutCommas(nps), cores)
	b.WriteString("| bench | |\n|---|---|\n")
	fmt.Fprintf(&b, "| notifications received/s | %s |\n", scaleoutCommas(b1.NotificationsPS))
	fmt.Fprintf(&b, "| delivered | %s of %s asked (%.2f%%) |\n", scaleoutCommas(float64(b1.Notifications)), scaleoutCommas(r.Asked), r.DeliveredPc)
	fmt.Fprintf(&b, "| latency p50 / p90 / p99 / max | %.1f / %.1f / %.1f / %.1f ms |\n", b1.LatencyP50MS, b1.LatencyP90MS, b1.LatencyP99MS, b1.LatencyMaxMS)
	fmt.Fprintf(&b, "| ramp (logins) | %.1f s (%s/s) |\n", b1.RampSeconds, scaleoutCommas(float64(b1.Conns)/max(b1.RampSeconds, 1e-9)))
	if b1.StormSeconds > 0 {
		fmt.Fprintf(&b, "| reconnect storm | %s back in %.2f s |\n", scaleoutCommas(float64(b1.StormReconnected)), b1.StormSeconds)
	}
	fmt.Fprintf(&b, "| errors | %d %s |\n", b1.Errors, b1.FirstError)
	fmt.Fprintf(&b, "| host CPU in load (of %d) | %.2f cores busy, %.2f in softirq; nodes %.2f, PostgreSQL %.2f (%.0f µs per write), its forward %.2f, bench %.2f |\n\n",
		scaleoutNumCPU(b1.Machine), r.HostBusyCores, r.HostSoftirqCores, r.NodesCores, r.PostgresCores, r.PostgresUSPerW, r.PgfwdCores, r.BenchCores)
	return b.String()
}

// scaleoutNumCPU reads the CPU count back from the results' machine line.
func scaleoutNumCPU(machine string) int {
	f := strings.Split(machine, ", ")
	for _, s := range f {
		if n, ok := strings.CutSuffix(s, " CPUs"); ok {
			v, _ := strconv.Atoi(n)
			return v
		}
	}
	return 0
}

// scaleoutCommas formats a count with thousands separators.
func scaleoutCommas(v float64) string {
	n := int64(math.Round(v))
	sign := ""
	if n < 0 {
		sign, n = "-", -n
	}
	s := strconv.FormatInt(n, 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return sign + b.String()
}
