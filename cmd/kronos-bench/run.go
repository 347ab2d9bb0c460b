package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Results is what one run measured.
type Results struct {
	Server      string    `json:"server"` // serverKronos or serverCentrifugo
	Label       string    `json:"label"`
	When        time.Time `json:"when"`
	Machine     string    `json:"machine"`
	Command     string    `json:"command"`
	Users       int       `json:"users"`
	Devices     int       `json:"devices_per_user"`
	Conns       int       `json:"connections"`
	WSShare     float64   `json:"websocket_share"`
	WorkerProcs int       `json:"worker_processes"`
	// WorkerPollers is the epoll pollers of each worker process (its
	// GOMAXPROCS, --worker-gomaxprocs), as the workers reported them.
	WorkerPollers []int `json:"worker_pollers"`
	// Probe is what the machine's basic operations cost just before the
	// run (probe.go).
	Probe *machineProbe `json:"machine_probe,omitempty"`

	Baseline serverSample   `json:"server_before"`
	Ramp     []serverSample `json:"server_during_ramp"`
	Idle     serverSample   `json:"server_idle"`
	// BytesPerConn is the server's RSS growth per idle logged-in
	// connection, from no connection to all of them.
	BytesPerConn float64 `json:"rss_bytes_per_idle_connection"`
	RampSeconds  float64 `json:"ramp_seconds"`

	Rate            float64 `json:"writes_per_second_asked"`
	WritesSent      int64   `json:"writes_sent"`
	Notifications   int64   `json:"notifications_received"`
	NotificationsPS float64 `json:"notifications_per_second"`
	// LoadSeconds runs from the first write to the last notification.
	LoadSeconds    float64 `json:"load_seconds"`
	LatencyP50MS   float64 `json:"latency_p50_ms"`
	LatencyP90MS   float64 `json:"latency_p90_ms"`
	LatencyP99MS   float64 `json:"latency_p99_ms"`
	LatencyMaxMS   float64 `json:"latency_max_ms"`
	LatencySamples uint64  `json:"latency_samples"`
	// NotificationBytes is the mean size of a notification as received:
	// the JSON message, without WebSocket framing or the raw stream's
	// newline.
	NotificationBytes float64 `json:"notification_bytes_mean"`
	// CPU used during the load phase: the server's from its
	// process_cpu_seconds_total (both servers export the Prometheus
	// process collector), the load tool's from its workers' getrusage;
	// per notification received. At saturation the two share the
	// machine's cores, so what one spends the other cannot.
	ServerCPUSeconds    float64 `json:"server_cpu_seconds_in_load,omitempty"`
	ServerCPUPerNotifUS float64 `json:"server_cpu_us_per_notification,omitempty"`
	ToolCPUSeconds      float64 `json:"tool_cpu_seconds_in_load,omitempty"`
	ToolCPUPerNotifUS   float64 `json:"tool_cpu_us_per_notification,omitempty"`
	StormSeconds        float64 `json:"reconnect_storm_seconds,omitempty"`
	StormReconnected    int     `json:"reconnect_storm_connections,omitempty"`
	Errors              int     `json:"errors"`
	FirstError          string  `json:"first_error,omitempty"`

	hist *Hist
}

func (r *Results) summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%s): %d connections (%d users x %d devices, %.0f%% WebSocket) in %d worker processes\n",
		r.Label, r.Server, r.Conns, r.Users, r.Devices, r.WSShare*100, r.WorkerProcs)
	fmt.Fprintf(&b, "  idle: server RSS %.1f MiB (+%.0f B per connection), %.0f goroutines, ramp %.1fs\n",
		r.Idle.RSSBytes/(1<<20), r.BytesPerConn, r.Idle.Goroutines, r.RampSeconds)
	fmt.Fprintf(&b, "  load: %d writes -> %d notifications in %.1fs = %.0f/s; latency p50 %.2fms p90 %.2fms p99 %.2fms max %.2fms\n",
		r.WritesSent, r.Notifications, r.LoadSeconds, r.NotificationsPS, r.LatencyP50MS, r.LatencyP90MS, r.LatencyP99MS, r.LatencyMaxMS)
	fmt.Fprintf(&b, "  a notification as received: %.0f bytes on average\n", r.NotificationBytes)
	if r.ServerCPUSeconds > 0 {
		fmt.Fprintf(&b, "  CPU in the load: server %.2fs (%.1f µs per notification), load tool %.2fs (%.1f µs)\n",
			r.ServerCPUSeconds, r.ServerCPUPerNotifUS, r.ToolCPUSeconds, r.ToolCPUPerNotifUS)
	}
	if r.Probe != nil {
		fmt.Fprintf(&b, "  machine before the run: %v\n", r.Probe)
	}
	if r.StormSeconds > 0 {
		fmt.Fprintf(&b, "  reconnect storm: %d connections back in %.2fs\n", r.StormReconnected, r.StormSeconds)
	}
	if r.Errors > 0 {
		fmt.Fprintf(&b, "  %d errors, first: %s\n", r.Errors, r.FirstError)
	}
	return b.String()
}

// cpuModel is the processor's name, for the record of a run.
func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, line := range strings.Split(string(data), "\n") {
		if name, value, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(name) == "model name" {
			return strings.TrimSpace(value)
		}
	}
	return "unknown CPU"
}

// redactSecret hides the value of --centrifugo-secret from the record of
// the command, which results files carry into reports.
func redactSecret(args []string) []string {
	out := slices.Clone(args)
	for i, a := range out {
		switch {
		case a == "--centrifugo-secret" || a == "-centrifugo-secret":
			if i+1 < len(out) {
				out[i+1] = "REDACTED"
			}
		case strings.HasPrefix(a, "--centrifugo-secret=") || strings.HasPrefix(a, "-centrifugo-secret="):
			name, _, _ := strings.Cut(a, "=")
			out[i] = name + "=REDACTED"
		}
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func (r *Results) addErrors(replies []reply) {
	for _, rep := range replies {
		if rep.Errors > 0 && r.FirstError == "" {
			r.FirstError = rep.FirstErr
		}
		r.Errors += rep.Errors
	}
}

func run(o options) (*Results, error) {
	res := &Results{
		Server: o.server, Label: o.label, When: time.Now().UTC(), Users: o.users, Devices: o.devices,
		Conns: o.users * o.devices, WSShare: o.wsShare, Rate: o.rate,
		Machine: fmt.Sprintf("%s, %d CPUs, %s/%s", cpuModel(), runtime.NumCPU(), runtime.GOOS, runtime.GOARCH),
		Command: strings.Join(append([]string{filepath.Base(os.Args[0])}, redactSecret(os.Args[1:])...), " "),
	}
	var err error
	if res.Baseline, err = waitForMetrics(o.admin, o.timeout); err != nil {
		return nil, err
	}
	// Before any connection: the server is idle, and the probe measures
	// the machine rather than the load.
	if res.Probe, err = probeMachine(); err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "machine: %v\n", res.Probe)
	children, err := spawn(o)
	if err != nil {
		return nil, err
	}
	res.WorkerProcs = len(children)
	defer func() {
		all(children, func(*child) command { return command{Cmd: "quit"} })
		for _, c := range children {
			c.in.Close()
			c.cmd.Wait()
		}
	}()

	// Ramp up in steps, sampling the server after each.
	rampStart := time.Now()
	var connected []reply // the workers' last word on their connections
	for step := 1; step <= o.steps; step++ {
		connected, err = all(children, func(c *child) command {
			return command{Cmd: "connect", Count: c.conns * step / o.steps}
		})
		if err != nil {
			return nil, err
		}
		res.addErrors(connected)
		res.WorkerPollers = res.WorkerPollers[:0]
		for _, r := range connected {
			res.WorkerPollers = append(res.WorkerPollers, r.Pollers)
		}
		sample, err := scrapeCounted(o, connected)
		if err != nil {
			return nil, err
		}
		res.Ramp = append(res.Ramp, sample)
		fmt.Fprintf(os.Stderr, "ramp %d/%d: %d connections, RSS %.1f MiB\n", step, o.steps, sample.Conns, sample.RSSBytes/(1<<20))
	}
	res.RampSeconds = time.Since(rampStart).Seconds()
	time.Sleep(o.idle)
	if res.Idle, err = scrapeCounted(o, connected); err != nil {
		return nil, err
	}
	if n := res.Idle.Conns - res.Baseline.Conns; n > 0 {
		res.BytesPerConn = (res.Idle.RSSBytes - res.Baseline.RSSBytes) / float64(n)
	}

	// Load: writes spread over the workers; every device of the writing
	// user receives the notification.
	fmt.Fprintf(os.Stderr, "load: %.0f writes/s for %v\n", o.rate, o.duration)
	cpuBefore, err := serverCPU(o.admin)
	if err != nil {
		return nil, err
	}
	loadStart := time.Now()
	replies, err := all(children, func(c *child) command {
		return command{Cmd: "load", Rate: o.rate * float64(c.conns) / float64(res.Conns), Duration: o.duration}
	})
	if err != nil {
		return nil, err
	}
	res.addErrors(replies)
	res.hist = NewHist()
	cpuAfter, err := serverCPU(o.admin)
	if err != nil {
		return nil, err
	}
	res.ServerCPUSeconds = cpuAfter - cpuBefore
	var size int64
	for _, rep := range replies {
		res.WritesSent += rep.Sent
		res.Notifications += rep.Received
		res.ToolCPUSeconds += rep.CPUSeconds
		size += rep.Bytes
		if rep.Hist != nil {
			res.hist.Merge(rep.Hist)
		}
	}
	// The span runs from the first write to the last notification
	// received. The workers then wait for a quiet second, which is not
	// counted: counting it whenever a notification came after the last
	// write, as the run's wall time did, took up to a second off the rate
	// of the slower server.
	var last int64
	for _, rep := range replies {
		last = max(last, rep.LastNS)
	}
	res.LoadSeconds = max(time.Duration(last-loadStart.UnixNano()).Seconds(), o.duration.Seconds())
	res.NotificationsPS = float64(res.Notifications) / res.LoadSeconds
	res.LatencyP50MS = ms(res.hist.Quantile(0.50))
	res.LatencyP90MS = ms(res.hist.Quantile(0.90))
	res.LatencyP99MS = ms(res.hist.Quantile(0.99))
	res.LatencyMaxMS = res.hist.MaxUS / 1000
	res.LatencySamples = res.hist.Count
	if res.Notifications > 0 {
		res.NotificationBytes = float64(size) / float64(res.Notifications)
		res.ServerCPUPerNotifUS = res.ServerCPUSeconds / float64(res.Notifications) * 1e6
		res.ToolCPUPerNotifUS = res.ToolCPUSeconds / float64(res.Notifications) * 1e6
	}

	if o.storm {
		fmt.Fprintln(os.Stderr, "reconnect storm")
		replies, err := all(children, func(*child) command { return command{Cmd: "storm"} })
		if err != nil {
			return nil, err
		}
		res.addErrors(replies)
		for _, rep := range replies {
			res.StormSeconds = max(res.StormSeconds, rep.StormMS/1000)
			res.StormReconnected += rep.Conns
		}
	}
	return res, nil
}
