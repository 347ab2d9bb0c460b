package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// serverSample is what the server's /metrics says about its process.
type serverSample struct {
	Conns      int     `json:"connections"`
	RSSBytes   float64 `json:"rss_bytes"`
	Goroutines float64 `json:"goroutines"`
	HeapBytes  float64 `json:"heap_inuse_bytes"`
}

// scrape reads the few metrics the report needs from the admin endpoint.
// Kronos and Centrifugo both export the Prometheus Go and process
// collectors; the open connections are Kronos's own gauge (0 from
// Centrifugo: see scrapeCounted).
func scrape(admin string) (serverSample, error) {
	m, err := scrapeAll(admin)
	if err != nil {
		return serverSample{}, err
	}
	s := sampleOf(m)
	if s.RSSBytes == 0 {
		return s, fmt.Errorf("%s/metrics has no process_resident_memory_bytes", admin)
	}
	return s, nil
}

// sampleOf picks a serverSample out of a scrape.
func sampleOf(m metricValues) serverSample {
	return serverSample{
		RSSBytes:   m["process_resident_memory_bytes"],
		Goroutines: m["go_goroutines"],
		HeapBytes:  m["go_memstats_heap_inuse_bytes"],
		Conns:      int(m.sum("kronos_connections_open")),
	}
}

// serverCPU is the CPU time the server's process has used, from the
// Prometheus process collector.
func serverCPU(admin string) (float64, error) {
	m, err := scrapeAll(admin)
	if err != nil {
		return 0, err
	}
	v, ok := m["process_cpu_seconds_total"]
	if !ok {
		return 0, fmt.Errorf("%s/metrics has no process_cpu_seconds_total", admin)
	}
	return v, nil
}

// metricValues is a scrape: each series, as name{labels} the way the
// server writes it, and its value.
type metricValues map[string]float64

func scrapeAll(admin string) (metricValues, error) {
	client := http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s/metrics: %s", admin, resp.Status)
	}
	return parseMetrics(resp.Body)
}

// parseMetrics reads the Prometheus text format: comments are skipped, a
// series is its name and labels as written, up to the value (a timestamp
// after the value is ignored); lines that do not parse are skipped.
func parseMetrics(r io.Reader) (metricValues, error) {
	m := metricValues{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		// The labels may hold spaces: the series ends at the last '}'.
		cut := 0
		if i := strings.LastIndexByte(line, '}'); i >= 0 {
			cut = i + 1
		}
		rest := strings.Fields(line[cut:])
		if cut == 0 {
			if len(rest) < 2 {
				continue
			}
			line, rest = rest[0], rest[1:]
			cut = len(line)
		}
		if len(rest) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(rest[0], 64)
		if err != nil {
			continue
		}
		m[line[:cut]] = v
	}
	return m, sc.Err()
}

// sum adds the series of one metric, whatever their labels.
func (m metricValues) sum(name string) float64 {
	total := 0.0
	for series, v := range m {
		if series == name || strings.HasPrefix(series, name+"{") {
			total += v
		}
	}
	return total
}

// byLabel returns the series of one metric by the value of one label.
func (m metricValues) byLabel(name, label string) map[string]float64 {
	out := map[string]float64{}
	for series, v := range m {
		if rest, ok := strings.CutPrefix(series, name+"{"); ok {
			if value, ok := labelValue(strings.TrimSuffix(rest, "}"), label); ok {
				out[value] += v
			}
		}
	}
	return out
}

// labelValue finds label="value" in a series' labels (escapes are kept
// as written: the labels read here have none).
func labelValue(labels, label string) (string, bool) {
	for labels != "" {
		name, rest, ok := strings.Cut(labels, "=\"")
		if !ok {
			return "", false
		}
		end := 0
		for end < len(rest) && rest[end] != '"' {
			if rest[end] == '\\' {
				end++
			}
			end++
		}
		if strings.TrimSpace(strings.TrimPrefix(name, ",")) == label {
			return rest[:min(end, len(rest))], true
		}
		labels = strings.TrimPrefix(rest[min(end+1, len(rest)):], ",")
	}
	return "", false
}

// delta is after less before, for the series of counters named by
// prefix that changed.
func delta(before, after metricValues, prefix string) map[string]float64 {
	out := map[string]float64{}
	for series, v := range after {
		if strings.HasPrefix(series, prefix) {
			if d := v - before[series]; d != 0 {
				out[series] = d
			}
		}
	}
	return out
}

// scrapeCounted is scrape with the connections counted by the workers
// when the server is Centrifugo: its centrifugo_node_num_clients gauge is
// refreshed only every 10 s, too late for a sample taken right after a
// ramp step. Kronos's gauge is live, and it is the server's own count.
func scrapeCounted(o options, workers []reply) (serverSample, error) {
	s, err := scrape(o.admin)
	if err != nil || o.server != serverCentrifugo {
		return s, err
	}
	s.Conns = 0
	for _, r := range workers {
		s.Conns += r.Conns
	}
	return s, nil
}

// waitForMetrics scrapes until the server answers or timeout passes, so
// that a script may start the server and the tool together.
func waitForMetrics(admin string, timeout time.Duration) (serverSample, error) {
	end := time.Now().Add(timeout)
	for {
		s, err := scrape(admin)
		if err == nil || time.Now().After(end) {
			return s, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}
