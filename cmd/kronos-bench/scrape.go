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
