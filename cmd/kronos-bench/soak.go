package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The soak run (issue 12): the legitimate load of a run (users × devices,
// one writer per user at a rate, the other devices measure the latency)
// for a long time, while groups of abusive clients press on the same node
// (abuse.go). It samples the node's RSS all along, and reports its
// maximum and final value, the node's closes by reason, and the
// legitimate devices' latency and delivery. The same command with
// --clean runs the legitimate load alone, for the comparison.
//
//	kronos-bench soak --addr 127.0.0.1:5055 --admin 127.0.0.1:9095 --duration 10m --label soak --out soak.json
//	kronos-bench soak --clean ... --label clean --out clean.json
//	kronos-bench soak-report --clean clean.json --soak soak.json --rss-bound-mib 256 --out soak-summary

// SoakResults is what one soak (or clean) run measured.
type SoakResults struct {
	Label   string    `json:"label"`
	When    time.Time `json:"when"`
	Machine string    `json:"machine"`
	Command string    `json:"command"`

	Users           int            `json:"users"`
	Devices         int            `json:"devices_per_user"`
	Conns           int            `json:"connections"`
	WSShare         float64        `json:"websocket_share"`
	Rate            float64        `json:"writes_per_second_asked"`
	DurationSeconds float64        `json:"duration_seconds"`
	Abusive         map[string]int `json:"abusive_clients"` // group → clients; empty in a clean run

	Baseline  serverSample `json:"server_before"`
	Connected serverSample `json:"server_connected"` // the legitimate devices logged in, before any abuse
	// Samples are taken every --sample-every from the start of the load
	// (abusive clients are already running then, since --warmup).
	Samples       []soakSample `json:"server_samples"`
	RSSMaxBytes   float64      `json:"rss_max_bytes"`
	RSSFinalBytes float64      `json:"rss_final_bytes"` // at the end of the load, abusers still running
	// With --server-pid: the largest anonymous and file-backed parts of
	// the RSS over the samples (not necessarily at the same moment).
	RSSAnonMaxBytes float64 `json:"rss_anon_max_bytes,omitempty"`
	RSSFileMaxBytes float64 `json:"rss_file_max_bytes,omitempty"`
	// RSSAfterBytes is read a few seconds after the abusive clients
	// stopped.
	RSSAfterBytes float64 `json:"rss_after_bytes"`

	WritesSent    int64 `json:"writes_sent"`
	Notifications int64 `json:"notifications_received"`
	// Delivered is the share of the notifications due (every write to
	// every device of its user) that arrived, in percent.
	Delivered      float64 `json:"delivered_percent"`
	LatencyP50MS   float64 `json:"latency_p50_ms"`
	LatencyP90MS   float64 `json:"latency_p90_ms"`
	LatencyP99MS   float64 `json:"latency_p99_ms"`
	LatencyMaxMS   float64 `json:"latency_max_ms"`
	LatencySamples uint64  `json:"latency_samples"`
	// P99ByWindowMS is the p99 of each --window of the load, by the time
	// of receipt: a p99 made by one moment shows as one window.
	WindowSeconds float64   `json:"window_seconds"`
	P99ByWindowMS []float64 `json:"latency_p99_by_window_ms"`
	// LegitConnsEnd is the legitimate devices still connected at the end
	// (they do not reconnect: a drop shows here and in Delivered).
	LegitConnsEnd int `json:"legit_connections_at_end"`

	// Closes are the node's kronos_connections_closed_total over the run,
	// by reason; Counters the other kronos_* counters that moved.
	Closes   map[string]float64    `json:"server_closes_by_reason"`
	Counters map[string]float64    `json:"server_counters"`
	Abuse    map[string]AbuseStats `json:"abuse,omitempty"`

	Errors     int    `json:"errors"`
	FirstError string `json:"first_error,omitempty"`
}

// soakSample is the node at one moment of the run.
type soakSample struct {
	Seconds float64 `json:"t_seconds"` // since the load started
	serverSample
	// With --server-pid, the RSS split as /proc/PID/status tells it:
	// anonymous memory (the heap, buffers) and file-backed pages (the
	// embedded store's memory-mapped file, the binary).
	RSSAnonBytes float64 `json:"rss_anon_bytes,omitempty"`
	RSSFileBytes float64 `json:"rss_file_bytes,omitempty"`
}

// procRSS reads RssAnon and RssFile from a /proc/PID/status.
func procRSS(status string) (anon, file float64, ok bool) {
	var found int
	for _, line := range strings.Split(status, "\n") {
		name, value, cut := strings.Cut(line, ":")
		if !cut || (name != "RssAnon" && name != "RssFile") {
			continue
		}
		f := strings.Fields(value)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		kb, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		found++
		if name == "RssAnon" {
			anon = kb * 1024
		} else {
			file = kb * 1024
		}
	}
	return anon, file, found == 2
}

type soakOptions struct {
	options
	abuse       abuseConfig
	abuseSrc    string
	clean       bool
	sampleEvery time.Duration
	window      time.Duration
	serverPID   int
	warmup      time.Duration
	settle      time.Duration
}

func parseSoakFlags(args []string) (soakOptions, error) {
	var o soakOptions
	o.server = serverKronos
	o.abuse.counts = map[string]int{}
	fs := flag.NewFlagSet("kronos-bench soak", flag.ContinueOnError)
	fs.StringVar(&o.addr, "addr", "127.0.0.1:5000", "the node's client address")
	fs.StringVar(&o.admin, "admin", "127.0.0.1:9090", "the node's admin address (for /metrics)")
	fs.IntVar(&o.users, "users", 200, "legitimate users")
	fs.IntVar(&o.devices, "devices", 10, "devices (connections) per legitimate user")
	fs.Float64Var(&o.wsShare, "ws", 0.5, "share of legitimate connections over WebSocket")
	fs.IntVar(&o.procs, "procs", 0, "worker processes for the legitimate devices (0: enough for --max-conns-per-proc)")
	fs.IntVar(&o.maxConnsPerProc, "max-conns-per-proc", 15000, "connections one worker process may hold")
	fs.StringVar(&o.sources, "sources", "127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8", "local addresses of the legitimate devices")
	fs.StringVar(&o.abuseSrc, "abuse-sources", "127.0.0.9,127.0.0.10,127.0.0.11,127.0.0.12", "local addresses of the abusive clients")
	fs.Float64Var(&o.rate, "rate", 200, "legitimate writes per second (each notifies every device of its user)")
	fs.DurationVar(&o.duration, "duration", 10*time.Minute, "length of the load, abusive clients running")
	fs.DurationVar(&o.warmup, "warmup", 10*time.Second, "abusive clients run this long before the load starts")
	fs.DurationVar(&o.settle, "settle", 5*time.Second, "after the abusive clients stop, wait this long and read the RSS again")
	fs.DurationVar(&o.sampleEvery, "sample-every", 5*time.Second, "how often the node's /metrics is read")
	fs.IntVar(&o.serverPID, "server-pid", 0, "the node's process ID, when it runs on this machine: samples also split its RSS into anonymous and file-backed (/proc/PID/status)")
	fs.DurationVar(&o.window, "window", time.Minute, "the legitimate p99 is also reported for each window of this length")
	fs.StringVar(&o.out, "out", "soak.json", "results file (JSON)")
	fs.StringVar(&o.label, "label", "", "a name for this run in the results (default soak, or clean with --clean)")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "timeout of one dial and login, and of waiting for /metrics at the start")
	fs.IntVar(&o.dialConc, "dial-concurrency", 256, "logins in flight per worker while connecting")
	fs.BoolVar(&o.clean, "clean", false, "no abusive client: the legitimate load alone, to compare with")
	counts := map[string]*int{}
	for _, g := range abuseGroups {
		counts[g] = fs.Int(strings.ReplaceAll(g, "_", "-"), defaultAbuse[g], "abusive clients: "+abuseHelp[g])
	}
	fs.DurationVar(&o.abuse.slowInterval, "slow-interval", 300*time.Millisecond, "slow: one byte per this")
	fs.IntVar(&o.abuse.maxMessage, "max-message-bytes", 4<<20, "the node's --max-message-bytes: oversized messages pass it")
	fs.IntVar(&o.abuse.halfMessage, "half-message-bytes", 3<<20, "oversized: bytes of a message (under the limit) sent before stalling")
	fs.IntVar(&o.abuse.nonReadingBytes, "non-reading-bytes", 3<<20, "non-reading: the size of the tasks of the user they log in as")
	fs.DurationVar(&o.abuse.nonReadingInterval, "non-reading-interval", 500*time.Millisecond, "non-reading: time between two read-alls")
	fs.DurationVar(&o.abuse.pause, "abuse-pause", 500*time.Millisecond, "oversized and garbage: pause between two connections")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for g, n := range counts {
		if *n < 0 {
			return o, fmt.Errorf("--%s %d: want 0 or more", strings.ReplaceAll(g, "_", "-"), *n)
		}
		if !o.clean {
			o.abuse.counts[g] = *n
		}
	}
	if o.abuse.halfMessage <= 0 || o.abuse.halfMessage+1024 > o.abuse.maxMessage {
		return o, fmt.Errorf("--half-message-bytes %d: want at least 1 KiB less than --max-message-bytes %d", o.abuse.halfMessage, o.abuse.maxMessage)
	}
	if n := len(heavyTasks(o.abuse.nonReadingBytes)); o.abuse.counts[groupNonReading] > 0 && n > o.abuse.maxMessage {
		return o, fmt.Errorf("--non-reading-bytes %d: the write-all (%d bytes) must fit --max-message-bytes %d", o.abuse.nonReadingBytes, n, o.abuse.maxMessage)
	}
	if o.sampleEvery <= 0 || o.window <= 0 || o.duration <= 0 || o.rate <= 0 || o.users <= 0 || o.devices < 2 {
		return o, errors.New("--sample-every, --duration, --rate and --users must be positive, --devices at least 2")
	}
	if o.label == "" {
		o.label = "soak"
		if o.clean {
			o.label = "clean"
		}
	}
	o.abuse.addr, o.abuse.timeout = o.addr, o.timeout
	o.abuse.sources = parseIPs(o.abuseSrc)
	o.steps = 1
	return o, nil
}

// The default mix against 2,000 legitimate devices: enough of each kind
// to press on every limit at once, few enough that the two cores of the
// machine the figures come from are not saturated by the clients alone.
var defaultAbuse = map[string]int{
	groupSilent: 1000, groupSlow: 200, groupOversized: 10,
	groupNonReading: 4, groupUserCreating: 2, groupGarbage: 10,
}

var abuseHelp = map[string]string{
	groupSilent:       "connect and send nothing (raw TCP, or a WebSocket upgrade and then nothing)",
	groupSlow:         "start a message and send one byte per --slow-interval (raw TCP, a WebSocket frame, the upgrade request)",
	groupOversized:    "messages over --max-message-bytes, and half messages of --half-message-bytes that stall (raw TCP, WebSocket)",
	groupNonReading:   "log in as a user with --non-reading-bytes of tasks, ask for read-all every --non-reading-interval, never read",
	groupUserCreating: "log in without user_id (a new user) and close, in a loop",
	groupGarbage:      "random bytes, bad UTF-8, malformed WebSocket frames, a garbage HTTP request",
}

func parseIPs(list string) []net.IP {
	var ips []net.IP
	for _, s := range strings.Split(list, ",") {
		if ip := net.ParseIP(strings.TrimSpace(s)); ip != nil {
			ips = append(ips, ip)
		}
	}
	return ips
}

func runSoakCommand(args []string) error {
	o, err := parseSoakFlags(args)
	if err != nil {
		return err
	}
	res, err := runSoak(o)
	if err != nil {
		return err
	}
	data, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(o.out, append(data, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Print(res.summary())
	if res.Errors > 0 {
		return fmt.Errorf("%d errors, first: %s", res.Errors, res.FirstError)
	}
	return nil
}

func runSoak(o soakOptions) (*SoakResults, error) {
	res := &SoakResults{
		Label: o.label, When: time.Now().UTC(), Users: o.users, Devices: o.devices,
		Conns: o.users * o.devices, WSShare: o.wsShare, Rate: o.rate, DurationSeconds: o.duration.Seconds(),
		Machine: fmt.Sprintf("%s, %d CPUs, %s/%s", cpuModel(), runtime.NumCPU(), runtime.GOOS, runtime.GOARCH),
		Command: strings.Join(append([]string{filepath.Base(os.Args[0])}, os.Args[1:]...), " "),
		Abusive: map[string]int{},
	}
	for g, n := range o.abuse.counts {
		if n > 0 {
			res.Abusive[g] = n
		}
	}
	var err error
	if res.Baseline, err = waitForMetrics(o.admin, o.timeout); err != nil {
		return nil, err
	}
	before, err := scrapeAll(o.admin)
	if err != nil {
		return nil, err
	}

	// The legitimate devices, in worker processes, as in a run.
	children, err := spawn(o.options)
	if err != nil {
		return nil, err
	}
	defer func() {
		all(children, func(*child) command { return command{Cmd: "quit"} })
		for _, c := range children {
			c.in.Close()
			c.cmd.Wait()
		}
	}()
	connected, err := all(children, func(c *child) command { return command{Cmd: "connect", Count: c.conns} })
	if err != nil {
		return nil, err
	}
	res.addErrors(connected)
	if res.Connected, err = scrape(o.admin); err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "soak %s: %d legitimate connections, RSS %.1f MiB\n", o.label, res.Connected.Conns, res.Connected.RSSBytes/(1<<20))

	// The abusive clients, in this process.
	ab := newAbuser(o.abuse)
	if err := ab.prepare(context.Background()); err != nil {
		return nil, err
	}
	ab.start()
	stopped := false
	defer func() {
		if !stopped {
			ab.stop()
		}
	}()
	if len(res.Abusive) > 0 {
		fmt.Fprintf(os.Stderr, "soak %s: abusive clients %v, warming up %v\n", o.label, res.Abusive, o.warmup)
		time.Sleep(o.warmup)
	}

	// The load, sampled all along.
	fmt.Fprintf(os.Stderr, "soak %s: %.0f writes/s for %v\n", o.label, o.rate, o.duration)
	loadStart := time.Now()
	var samplesMu sync.Mutex
	sample := func() (soakSample, bool) {
		s, err := scrape(o.admin)
		samplesMu.Lock()
		defer samplesMu.Unlock()
		if err != nil {
			res.Errors++
			if res.FirstError == "" {
				res.FirstError = "scrape: " + err.Error()
			}
			return soakSample{}, false
		}
		ss := soakSample{Seconds: time.Since(loadStart).Seconds(), serverSample: s}
		if o.serverPID > 0 {
			if status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", o.serverPID)); err == nil {
				ss.RSSAnonBytes, ss.RSSFileBytes, _ = procRSS(string(status))
			}
		}
		res.Samples = append(res.Samples, ss)
		return ss, true
	}
	sampling := make(chan struct{})
	samplerDone := make(chan struct{})
	go func() {
		defer close(samplerDone)
		tick := time.NewTicker(o.sampleEvery)
		defer tick.Stop()
		sample()
		for n := 1; ; n++ {
			select {
			case <-sampling:
				return
			case <-tick.C:
				if s, ok := sample(); ok && n%12 == 0 { // a line a minute at the default period
					fmt.Fprintf(os.Stderr, "soak %s: %.0fs, RSS %.1f MiB, %d connections\n", o.label, s.Seconds, s.RSSBytes/(1<<20), s.Conns)
				}
			}
		}
	}()
	replies, err := all(children, func(c *child) command {
		return command{Cmd: "load", Rate: o.rate * float64(c.conns) / float64(res.Conns), Duration: o.duration, Window: o.window}
	})
	close(sampling)
	<-samplerDone
	if err != nil {
		return nil, err
	}
	sample() // the final one, abusers still running
	res.addErrors(replies)
	hist := NewHist()
	var windows []*Hist
	for _, rep := range replies {
		windows = mergeWindows(windows, rep.Windows)
		res.WritesSent += rep.Sent
		res.Notifications += rep.Received
		res.LegitConnsEnd += rep.Conns
		if rep.Hist != nil {
			hist.Merge(rep.Hist)
		}
	}
	if due := res.WritesSent * int64(o.devices); due > 0 {
		res.Delivered = 100 * float64(res.Notifications) / float64(due)
	}
	res.LatencyP50MS = ms(hist.Quantile(0.50))
	res.LatencyP90MS = ms(hist.Quantile(0.90))
	res.LatencyP99MS = ms(hist.Quantile(0.99))
	res.LatencyMaxMS = hist.MaxUS / 1000
	res.LatencySamples = hist.Count
	res.WindowSeconds = o.window.Seconds()
	for _, h := range windows {
		res.P99ByWindowMS = append(res.P99ByWindowMS, ms(h.Quantile(0.99)))
	}
	for _, s := range res.Samples {
		res.RSSMaxBytes = max(res.RSSMaxBytes, s.RSSBytes)
		res.RSSAnonMaxBytes = max(res.RSSAnonMaxBytes, s.RSSAnonBytes)
		res.RSSFileMaxBytes = max(res.RSSFileMaxBytes, s.RSSFileBytes)
	}
	if n := len(res.Samples); n > 0 {
		res.RSSFinalBytes = res.Samples[n-1].RSSBytes
	}
	after, err := scrapeAll(o.admin)
	if err != nil {
		return nil, err
	}
	res.Closes = metricValues(delta(before, after, "kronos_connections_closed_total")).byLabel("kronos_connections_closed_total", "reason")
	res.Counters = delta(before, after, "kronos_")
	for series := range res.Counters {
		if !strings.Contains(series, "_total") || strings.HasPrefix(series, "kronos_connections_closed_total") {
			delete(res.Counters, series) // gauges, histograms, and the closes told above
		}
	}

	res.Abuse = ab.stop()
	stopped = true
	if len(res.Abusive) > 0 {
		time.Sleep(o.settle)
	}
	if s, err := scrape(o.admin); err == nil {
		res.RSSAfterBytes = s.RSSBytes
	}
	return res, nil
}

// mergeWindows adds the windows of one worker to those of the others.
func mergeWindows(into, from []*Hist) []*Hist {
	for i, h := range from {
		for len(into) <= i {
			into = append(into, NewHist())
		}
		if h != nil {
			into[i].Merge(h)
		}
	}
	return into
}

func (r *SoakResults) addErrors(replies []reply) {
	for _, rep := range replies {
		if rep.Errors > 0 && r.FirstError == "" {
			r.FirstError = rep.FirstErr
		}
		r.Errors += rep.Errors
	}
}

// abusiveList tells the abusive clients, e.g. "1000 silent, 200 slow".
func abusiveList(m map[string]int) string {
	var parts []string
	for _, g := range abuseGroups {
		if m[g] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", m[g], strings.ReplaceAll(g, "_", "-")))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// msList tells latencies: "4.1 9.3 5.0 ms".
func msList(v []float64) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = fmt.Sprintf("%.1f", x)
	}
	return strings.Join(parts, " ") + " ms"
}

// reasonList tells the closes by reason, most first.
func reasonList(m map[string]float64) string {
	reasons := make([]string, 0, len(m))
	for r := range m {
		reasons = append(reasons, r)
	}
	sort.Slice(reasons, func(i, j int) bool {
		if m[reasons[i]] != m[reasons[j]] {
			return m[reasons[i]] > m[reasons[j]]
		}
		return reasons[i] < reasons[j]
	})
	var parts []string
	for _, r := range reasons {
		parts = append(parts, fmt.Sprintf("%s %.0f", r, m[r]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func (r *SoakResults) summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d legitimate connections (%d users x %d devices), %.0f writes/s for %.0fs; abusive clients: %s\n",
		r.Label, r.Conns, r.Users, r.Devices, r.Rate, r.DurationSeconds, abusiveList(r.Abusive))
	fmt.Fprintf(&b, "  legitimate: %d writes, %.3f%% delivered, latency p50 %.2fms p90 %.2fms p99 %.2fms max %.2fms; %d of %d connected at the end\n",
		r.WritesSent, r.Delivered, r.LatencyP50MS, r.LatencyP90MS, r.LatencyP99MS, r.LatencyMaxMS, r.LegitConnsEnd, r.Conns)
	if len(r.P99ByWindowMS) > 0 {
		fmt.Fprintf(&b, "  legitimate p99 by %.0fs window: %s\n", r.WindowSeconds, msList(r.P99ByWindowMS))
	}
	fmt.Fprintf(&b, "  node RSS: %.1f MiB connected, max %.1f MiB, final %.1f MiB, %.1f MiB after the abuse stopped (%d samples)\n",
		r.Connected.RSSBytes/(1<<20), r.RSSMaxBytes/(1<<20), r.RSSFinalBytes/(1<<20), r.RSSAfterBytes/(1<<20), len(r.Samples))
	if r.RSSAnonMaxBytes > 0 {
		fmt.Fprintf(&b, "  node RSS split: anonymous at most %.1f MiB, file-backed at most %.1f MiB\n", r.RSSAnonMaxBytes/(1<<20), r.RSSFileMaxBytes/(1<<20))
	}
	fmt.Fprintf(&b, "  node closes: %s\n", reasonList(r.Closes))
	for _, g := range abuseGroups {
		if s, ok := r.Abuse[g]; ok {
			fmt.Fprintf(&b, "  %s: %d clients, %d connections (%d closed by the node, %d dial errors), %d requests, %d users created, %d refused, %.1f MiB sent\n",
				g, s.Clients, s.Conns, s.ServerClosed, s.DialErrors, s.Requests, s.UsersCreated, s.Refused, float64(s.BytesSent)/(1<<20))
		}
	}
	if r.Errors > 0 {
		fmt.Fprintf(&b, "  %d errors, first: %s\n", r.Errors, r.FirstError)
	}
	return b.String()
}
