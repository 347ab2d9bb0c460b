package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// The side-by-side report: compare.sh runs Kronos and Centrifugo in turn,
// several rounds at several write rates, and this reads every run's
// results and writes one table (the medians of the rounds) and one chart.

// comparePoint is one server at one write rate: the medians of its rounds.
type comparePoint struct {
	Server       string
	Rate         float64 // writes per second asked
	Rounds       int
	Devices      int
	Conns        int
	WSShare      float64
	NotifPS      float64 // notifications delivered per second
	P50MS, P99MS float64
	BytesPerConn float64 // idle RSS per connection
	NotifBytes   float64 // a notification's size as received
	StormSeconds float64
	// CPU in the load, µs per notification received and cores: zero for
	// runs from before the tool measured it.
	ServerCPUUS, ToolCPUUS float64
	ServerCores, ToolCores float64
	Errors                 int   // over all rounds
	Undelivered            int64 // notifications that did not arrive, over all rounds
}

func runCompareReport(args []string) error {
	fs := flag.NewFlagSet("compare-report", flag.ContinueOnError)
	in := fs.String("in", "", "directory of kronos-bench results (*.json), several servers, rates and rounds")
	out := fs.String("out", "compare", "output prefix: writes PREFIX.md (the table) and PREFIX.png (the chart)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *in == "" {
		return errors.New("--in is required")
	}
	runs, err := readResults(*in)
	if err != nil {
		return err
	}
	points := summarize(runs)
	f, err := os.Create(*out + ".md")
	if err != nil {
		return err
	}
	if err := writeCompareTable(f, points); err != nil {
		f.Close()
		return err
	}
	if err := writeCPUTable(f, points); err != nil {
		f.Close()
		return err
	}
	if err := writeProbeSummary(f, runs); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return compareChart(points, *out+".png")
}

// readResults reads every results file in dir.
func readResults(dir string) ([]Results, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("no results (*.json) in %s", dir)
	}
	var runs []Results
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		var r Results
		if err := json.Unmarshal(data, &r); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		if r.Server == "" {
			r.Server = serverKronos // results from before --server
		}
		runs = append(runs, r)
	}
	return runs, nil
}

// summarize groups the runs by server and rate and takes the median of
// each figure over the rounds: one slow round on a shared machine then
// moves nothing. Points are sorted by rate, then server.
func summarize(runs []Results) []comparePoint {
	type key struct {
		server string
		rate   float64
	}
	groups := map[key][]Results{}
	for _, r := range runs {
		k := key{r.Server, r.Rate}
		groups[k] = append(groups[k], r)
	}
	var points []comparePoint
	for k, rs := range groups {
		p := comparePoint{Server: k.server, Rate: k.rate, Rounds: len(rs),
			Devices: rs[0].Devices, Conns: rs[0].Conns, WSShare: rs[0].WSShare}
		pick := func(f func(Results) float64) float64 {
			v := make([]float64, len(rs))
			for i, r := range rs {
				v[i] = f(r)
			}
			return median(v)
		}
		p.NotifPS = pick(func(r Results) float64 { return r.NotificationsPS })
		p.P50MS = pick(func(r Results) float64 { return r.LatencyP50MS })
		p.P99MS = pick(func(r Results) float64 { return r.LatencyP99MS })
		p.BytesPerConn = pick(func(r Results) float64 { return r.BytesPerConn })
		p.NotifBytes = pick(func(r Results) float64 { return r.NotificationBytes })
		p.StormSeconds = pick(func(r Results) float64 { return r.StormSeconds })
		p.ServerCPUUS = pick(func(r Results) float64 { return r.ServerCPUPerNotifUS })
		p.ToolCPUUS = pick(func(r Results) float64 { return r.ToolCPUPerNotifUS })
		p.ServerCores = pick(func(r Results) float64 { return cores(r.ServerCPUSeconds, r.LoadSeconds) })
		p.ToolCores = pick(func(r Results) float64 { return cores(r.ToolCPUSeconds, r.LoadSeconds) })
		for _, r := range rs {
			p.Errors += r.Errors
			// Every device of the writer's user, the writer's included,
			// receives each write's notification, from either server.
			p.Undelivered += max(r.WritesSent*int64(r.Devices)-r.Notifications, 0)
		}
		points = append(points, p)
	}
	sort.Slice(points, func(i, j int) bool {
		a, b := points[i], points[j]
		if a.Rate != b.Rate {
			return a.Rate < b.Rate
		}
		if ra, rb := serverRank(a.Server), serverRank(b.Server); ra != rb {
			return ra < rb
		}
		return a.Server < b.Server
	})
	return points
}

// serverRank puts Kronos first: the table and the legends compare others
// with it.
func serverRank(s string) int {
	if s == serverKronos {
		return 0
	}
	return 1
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

// writeCompareTable writes the Markdown table, one row per server and
// rate, with what the figures are above it.
func writeCompareTable(w io.Writer, points []comparePoint) error {
	if len(points) == 0 {
		return errors.New("no runs to report")
	}
	rounds := 0
	for _, p := range points {
		rounds = max(rounds, p.Rounds)
	}
	fmt.Fprintf(w, "Medians of %d round(s); %d connections (%d devices per user).\n\n", rounds, points[0].Conns, points[0].Devices)
	fmt.Fprintln(w, "| writes/s asked | server | WebSocket share | notifications/s asked | notifications/s delivered | p50 ms | p99 ms | idle RSS per connection | bytes per notification received | reconnect storm s | undelivered | errors |")
	fmt.Fprintln(w, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, p := range points {
		_, err := fmt.Fprintf(w, "| %s | %s | %.0f%% | %s | %s | %.2f | %.2f | %s B | %.0f | %.2f | %d | %d |\n",
			thousands(p.Rate), p.Server, p.WSShare*100, thousands(p.Rate*float64(p.Devices)), thousands(p.NotifPS),
			p.P50MS, p.P99MS, thousands(p.BytesPerConn), p.NotifBytes, p.StormSeconds, p.Undelivered, p.Errors)
		if err != nil {
			return err
		}
	}
	_, err := fmt.Fprintln(w, "\nundelivered and errors: totals over the rounds; every other column: the median of the rounds.")
	return err
}

// cores is CPU seconds over a span of wall time.
func cores(cpuSeconds, wallSeconds float64) float64 {
	if wallSeconds <= 0 {
		return 0
	}
	return cpuSeconds / wallSeconds
}

// writeCPUTable says what the load cost each side in CPU: what a server
// spends per notification is what bounds it once the cores are shared
// with the load tool. Runs from before the tool measured it add nothing.
func writeCPUTable(w io.Writer, points []comparePoint) error {
	if !slices.ContainsFunc(points, func(p comparePoint) bool { return p.ServerCPUUS > 0 }) {
		return nil
	}
	fmt.Fprintln(w, "\nCPU during the load (the server's `process_cpu_seconds_total`, the load tool's workers' `getrusage`), medians of the rounds:")
	fmt.Fprintln(w, "\n| writes/s asked | server | server µs per notification | server cores | load tool µs per notification | load tool cores |")
	fmt.Fprintln(w, "|---:|---|---:|---:|---:|---:|")
	for _, p := range points {
		if p.ServerCPUUS == 0 {
			continue
		}
		if _, err := fmt.Fprintf(w, "| %s | %s | %.1f | %.2f | %.1f | %.2f |\n", thousands(p.Rate), p.Server,
			p.ServerCPUUS, p.ServerCores, p.ToolCPUUS, p.ToolCores); err != nil {
			return err
		}
	}
	return nil
}

// writeProbeSummary says what the machine probe read before the runs
// (probe.go), by server: a slower machine shows there before it shows in
// the table. Runs from before the probe have none, and add nothing.
func writeProbeSummary(w io.Writer, runs []Results) error {
	byServer := map[string][]*machineProbe{}
	var servers []string
	for _, r := range runs {
		if r.Probe == nil {
			continue
		}
		if byServer[r.Server] == nil {
			servers = append(servers, r.Server)
		}
		byServer[r.Server] = append(byServer[r.Server], r.Probe)
	}
	if len(servers) == 0 {
		return nil
	}
	sort.Slice(servers, func(i, j int) bool { return serverRank(servers[i]) < serverRank(servers[j]) })
	fmt.Fprintln(w, "\nThe machine just before each run, idle (`kronos-bench machine-probe`): median, and lowest–highest over the runs.")
	fmt.Fprintln(w, "\n| before the runs of | runs | system call ns | wake round trip µs, busy | wake round trip µs, after 200 µs idle | 4 KiB write + fdatasync µs |")
	fmt.Fprintln(w, "|---|---:|---|---|---|---|")
	for _, s := range servers {
		ps := byServer[s]
		field := func(get func(*machineProbe) float64) string {
			v := make([]float64, len(ps))
			for i, p := range ps {
				v[i] = get(p)
			}
			return fmt.Sprintf("%.1f (%.1f–%.1f)", median(v), slices.Min(v), slices.Max(v))
		}
		if _, err := fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %s |\n", s, len(ps),
			field(func(p *machineProbe) float64 { return p.SyscallNS }),
			field(func(p *machineProbe) float64 { return p.WakeRTTBusyUS }),
			field(func(p *machineProbe) float64 { return p.WakeRTTIdleUS }),
			field(func(p *machineProbe) float64 { return p.FdatasyncUS })); err != nil {
			return err
		}
	}
	return nil
}

// thousands formats v rounded, with commas: 27300 → "27,300".
func thousands(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// serverStyle gives each server one colour in both panels.
var serverStyle = map[string]color.Color{
	serverKronos:     color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	serverCentrifugo: color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
}

// compareChart draws two panels against the writes asked per second:
// the notifications delivered per second (with what was asked), and the
// p99 latency on a log scale.
func compareChart(points []comparePoint, path string) error {
	servers := map[string]bool{}
	for _, p := range points {
		servers[p.Server] = true
	}
	names := make([]string, 0, len(servers))
	for s := range servers {
		names = append(names, s)
	}
	sort.Slice(names, func(i, j int) bool {
		if ri, rj := serverRank(names[i]), serverRank(names[j]); ri != rj {
			return ri < rj
		}
		return names[i] < names[j]
	})

	tput := plot.New()
	tput.Title.Text = "Notifications delivered per second"
	tput.X.Label.Text = "writes per second asked"
	tput.Y.Label.Text = "notifications per second (median of rounds)"
	lat := plot.New()
	lat.Title.Text = "p99 latency, send to receipt"
	lat.X.Label.Text = "writes per second asked"
	lat.Y.Label.Text = "ms (log scale, median of rounds)"
	lat.Y.Scale = plot.LogScale{}
	lat.Y.Tick.Marker = logTicks{}

	var asked plotter.XYs
	for i, name := range names {
		var t, l plotter.XYs
		for _, p := range points {
			if p.Server != name {
				continue
			}
			t = append(t, plotter.XY{X: p.Rate, Y: p.NotifPS})
			// A log scale cannot show 0: a run with no sample shows at 1 µs.
			l = append(l, plotter.XY{X: p.Rate, Y: max(p.P99MS, 0.001)})
			if i == 0 {
				asked = append(asked, plotter.XY{X: p.Rate, Y: p.Rate * float64(p.Devices)})
			}
		}
		c := serverStyle[name]
		if c == nil {
			c = color.Gray{Y: 0x60}
		}
		for _, panel := range []struct {
			p   *plot.Plot
			pts plotter.XYs
		}{{tput, t}, {lat, l}} {
			line, marks, err := plotter.NewLinePoints(panel.pts)
			if err != nil {
				return err
			}
			line.Color, marks.Color = c, c
			marks.Shape = draw.CircleGlyph{}
			panel.p.Add(line, marks)
			panel.p.Legend.Add(name, line, marks)
		}
	}
	if len(asked) > 0 {
		line, err := plotter.NewLine(asked)
		if err != nil {
			return err
		}
		line.Dashes = []vg.Length{vg.Points(4), vg.Points(4)}
		line.Color = color.Gray{Y: 0x80}
		tput.Add(line)
		tput.Legend.Add("asked (writes × devices)", line)
	}
	// A factor of two of room around the latencies, so that a narrow
	// range still spans a few labelled ticks.
	lat.Y.Min, lat.Y.Max = lat.Y.Min/2, lat.Y.Max*2
	tput.Add(plotter.NewGrid())
	lat.Add(plotter.NewGrid())
	tput.Legend.Left = false // under the lines, which rise to the right
	lat.Legend.Top, lat.Legend.Left = true, true

	const width, height = 12 * vg.Inch, 5 * vg.Inch
	img := vgimg.New(width, height)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Inch / 4, PadY: vg.Inch / 8,
		PadTop: vg.Inch / 8, PadBottom: vg.Inch / 8, PadLeft: vg.Inch / 8, PadRight: vg.Inch / 8}
	canvases := plot.Align([][]*plot.Plot{{tput, lat}}, tiles, dc)
	tput.Draw(canvases[0][0])
	lat.Draw(canvases[0][1])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// logTicks labels 1, 2 and 5 times each power of ten in range, where
// plot.LogTicks labels only the powers of ten.
type logTicks struct{}

func (logTicks) Ticks(lo, hi float64) []plot.Tick {
	var ticks []plot.Tick
	for e := math.Floor(math.Log10(lo)); math.Pow(10, e) <= hi; e++ {
		for _, m := range []float64{1, 2, 5} {
			if v := m * math.Pow(10, e); v >= lo && v <= hi {
				ticks = append(ticks, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', -1, 64)})
			}
		}
	}
	return ticks
}
