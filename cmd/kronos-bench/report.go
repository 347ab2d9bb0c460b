package main

import (
	"encoding/json"
	"fmt"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// writeResults saves the JSON results and, with --png, the charts.
func writeResults(o options, r *Results) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(o.out, append(data, '\n'), 0o644); err != nil {
		return err
	}
	if o.image == "" {
		return nil
	}
	if err := latencyChart(r, o.image+"-latency.png"); err != nil {
		return err
	}
	return memoryChart(r, o.image+"-memory.png")
}

// latencyChart draws the share of notifications delivered within each
// latency: the cumulative distribution.
func latencyChart(r *Results, path string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Notification latency, %s (%d samples)", r.Label, r.LatencySamples)
	p.X.Label.Text = "latency (ms, log scale)"
	p.Y.Label.Text = "share delivered within"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	var pts plotter.XYs
	var seen uint64
	for _, b := range r.hist.sortedBuckets() {
		seen += r.hist.Buckets[b]
		pts = append(pts, plotter.XY{X: bucketValue(b) / 1000, Y: float64(seen) / float64(r.hist.Count)})
	}
	if len(pts) == 0 {
		pts = append(pts, plotter.XY{X: 1, Y: 0})
	}
	line, err := plotter.NewLine(pts)
	if err != nil {
		return err
	}
	p.Add(line, plotter.NewGrid())
	return p.Save(8*vg.Inch, 5*vg.Inch, path)
}

// memoryChart draws the server's RSS against its open connections.
func memoryChart(r *Results, path string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Server memory, %s", r.Label)
	p.X.Label.Text = "open connections"
	p.Y.Label.Text = "RSS (MiB)"
	pts := plotter.XYs{{X: float64(r.Baseline.Conns), Y: r.Baseline.RSSBytes / (1 << 20)}}
	for _, s := range r.Ramp {
		pts = append(pts, plotter.XY{X: float64(s.Conns), Y: s.RSSBytes / (1 << 20)})
	}
	line, points, err := plotter.NewLinePoints(pts)
	if err != nil {
		return err
	}
	p.Add(line, points, plotter.NewGrid())
	return p.Save(8*vg.Inch, 5*vg.Inch, path)
}
