package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// The soak report: a clean run and a soak run, side by side, against
// what issue 12 asks: the node's RSS under a stated bound, and the
// legitimate devices' p99 within 2× of the clean run's.

type soakSummary struct {
	Clean *SoakResults `json:"clean"`
	Soak  *SoakResults `json:"soak"`
	// P99Ratio is the soak's legitimate p99 over the clean run's.
	P99Ratio float64 `json:"p99_soak_over_clean"`
	P99Limit float64 `json:"p99_ratio_limit"`
	P99Met   bool    `json:"p99_met"`
	// RSSBound is the stated bound on the node's RSS during the soak.
	RSSBound float64 `json:"rss_bound_bytes"`
	RSSMet   bool    `json:"rss_met"`
	// DeliveredMet: every notification of the soak arrived, and the
	// legitimate devices were all still connected at the end.
	DeliveredMet bool `json:"delivered_met"`
}

func summarizeSoak(clean, soak *SoakResults, rssBound, p99Limit float64) soakSummary {
	s := soakSummary{Clean: clean, Soak: soak, P99Limit: p99Limit, RSSBound: rssBound}
	if clean.LatencyP99MS > 0 {
		s.P99Ratio = soak.LatencyP99MS / clean.LatencyP99MS
	}
	s.P99Met = clean.LatencyP99MS > 0 && soak.LatencySamples > 0 && s.P99Ratio <= p99Limit
	s.RSSMet = soak.RSSMaxBytes > 0 && soak.RSSMaxBytes <= rssBound
	s.DeliveredMet = soak.WritesSent > 0 && soak.Notifications == soak.WritesSent*int64(soak.Devices) &&
		soak.LegitConnsEnd == soak.Conns
	return s
}

func runSoakReport(args []string) error {
	fs := flag.NewFlagSet("soak-report", flag.ContinueOnError)
	cleanPath := fs.String("clean", "", "results of the clean run (kronos-bench soak --clean)")
	soakPath := fs.String("soak", "", "results of the soak run")
	boundMiB := fs.Float64("rss-bound-mib", 256, "the stated bound on the node's RSS during the soak, MiB")
	limit := fs.Float64("p99-limit", 2, "the soak's legitimate p99 may be at most this many times the clean run's")
	out := fs.String("out", "soak-summary", "output prefix: writes PREFIX.json and PREFIX.md")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cleanPath == "" || *soakPath == "" {
		return errors.New("--clean and --soak are required")
	}
	var clean, soak SoakResults
	for path, r := range map[string]*SoakResults{*cleanPath: &clean, *soakPath: &soak} {
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(data, r); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	s := summarizeSoak(&clean, &soak, *boundMiB*(1<<20), *limit)
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(*out+".json", append(data, '\n'), 0o644); err != nil {
		return err
	}
	f, err := os.Create(*out + ".md")
	if err != nil {
		return err
	}
	if err := writeSoakTable(f, s); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

func mib(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }

// writeSoakTable writes the markdown table of docs/benchmarks.md.
func writeSoakTable(w io.Writer, s soakSummary) error {
	c, k := s.Clean, s.Soak
	var b strings.Builder
	row := func(name, clean, soak string) { fmt.Fprintf(&b, "| %s | %s | %s |\n", name, clean, soak) }
	b.WriteString("| | clean | soak |\n|---|---|---|\n")
	row("abusive clients", abusiveList(c.Abusive), abusiveList(k.Abusive))
	row("legitimate load", fmt.Sprintf("%d connections, %.0f writes/s, %.0f s", c.Conns, c.Rate, c.DurationSeconds),
		fmt.Sprintf("%d connections, %.0f writes/s, %.0f s", k.Conns, k.Rate, k.DurationSeconds))
	row("notifications delivered", fmt.Sprintf("%.3f%% of %d", c.Delivered, c.WritesSent*int64(c.Devices)),
		fmt.Sprintf("%.3f%% of %d", k.Delivered, k.WritesSent*int64(k.Devices)))
	row("legitimate devices connected at the end", fmt.Sprintf("%d of %d", c.LegitConnsEnd, c.Conns),
		fmt.Sprintf("%d of %d", k.LegitConnsEnd, k.Conns))
	lat := func(r *SoakResults) string {
		return fmt.Sprintf("%.1f / %.1f / %.1f / %.1f ms", r.LatencyP50MS, r.LatencyP90MS, r.LatencyP99MS, r.LatencyMaxMS)
	}
	row("latency p50 / p90 / p99 / max", lat(c), lat(k))
	byWindow := func(r *SoakResults) string {
		if len(r.P99ByWindowMS) == 0 {
			return ""
		}
		return fmt.Sprintf("%s (by %.0f s)", msList(r.P99ByWindowMS), r.WindowSeconds)
	}
	row("latency p99 window by window", byWindow(c), byWindow(k))
	row("node RSS: connected / max / final", fmt.Sprintf("%s / %s / %s", mib(c.Connected.RSSBytes), mib(c.RSSMaxBytes), mib(c.RSSFinalBytes)),
		fmt.Sprintf("%s / %s / %s", mib(k.Connected.RSSBytes), mib(k.RSSMaxBytes), mib(k.RSSFinalBytes)))
	if c.RSSAnonMaxBytes > 0 || k.RSSAnonMaxBytes > 0 {
		row("node RSS, max of its anonymous / file-backed parts", fmt.Sprintf("%s / %s", mib(c.RSSAnonMaxBytes), mib(c.RSSFileMaxBytes)),
			fmt.Sprintf("%s / %s", mib(k.RSSAnonMaxBytes), mib(k.RSSFileMaxBytes)))
	}
	row("node RSS after the abuse stopped", "", mib(k.RSSAfterBytes))
	row("node closes by reason", reasonList(c.Closes), reasonList(k.Closes))
	fmt.Fprintf(&b, "\n- p99 soak / clean: %.2f× (limit %.0f×): %s\n", s.P99Ratio, s.P99Limit, met(s.P99Met))
	fmt.Fprintf(&b, "- node RSS max %s (bound %s): %s\n", mib(k.RSSMaxBytes), mib(s.RSSBound), met(s.RSSMet))
	fmt.Fprintf(&b, "- every notification delivered, every legitimate device still connected: %s\n", met(s.DeliveredMet))
	if len(k.Abuse) > 0 {
		b.WriteString("\n| abusive group | clients | connections | closed by the node | dial errors | requests | users created | refused | sent |\n|---|---|---|---|---|---|---|---|---|\n")
		for _, g := range abuseGroups {
			if a, ok := k.Abuse[g]; ok {
				fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d | %d | %d | %s |\n", strings.ReplaceAll(g, "_", "-"),
					a.Clients, a.Conns, a.ServerClosed, a.DialErrors, a.Requests, a.UsersCreated, a.Refused, mib(float64(a.BytesSent)))
			}
		}
	}
	if c.Errors+k.Errors > 0 {
		fmt.Fprintf(&b, "\nErrors: clean %d (%s), soak %d (%s)\n", c.Errors, c.FirstError, k.Errors, k.FirstError)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
