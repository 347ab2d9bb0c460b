package main

import (
	"bufio"
	"fmt"
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
	client := http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + admin + "/metrics")
	if err != nil {
		return serverSample{}, err
	}
	defer resp.Body.Close()
	var s serverSample
	conns := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		switch {
		case name == "process_resident_memory_bytes":
			s.RSSBytes = v
		case name == "go_goroutines":
			s.Goroutines = v
		case name == "go_memstats_heap_inuse_bytes":
			s.HeapBytes = v
		case strings.HasPrefix(name, "kronos_connections_open{"):
			conns += v
		}
	}
	s.Conns = int(conns)
	if s.RSSBytes == 0 {
		return s, fmt.Errorf("%s/metrics has no process_resident_memory_bytes", admin)
	}
	return s, sc.Err()
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
