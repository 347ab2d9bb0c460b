package main

import (
	"math"
	"sort"
	"time"
)

// histRatio is the width of a latency bucket: each is 2% wider than the
// last, so percentiles are exact to 2% with about a thousand buckets from
// a microsecond to a minute, and histograms of several processes merge.
const histRatio = 1.02

// Hist is a log-bucketed latency histogram, in microseconds.
type Hist struct {
	Buckets map[int]uint64 `json:"buckets"`
	Count   uint64         `json:"count"`
	MaxUS   float64        `json:"max_us"`
}

func NewHist() *Hist { return &Hist{Buckets: map[int]uint64{}} }

func bucketOf(us float64) int {
	if us < 1 {
		us = 1
	}
	return int(math.Log(us) / math.Log(histRatio))
}

// bucketValue is a bucket's upper bound.
func bucketValue(b int) float64 { return math.Pow(histRatio, float64(b+1)) }

func (h *Hist) Add(d time.Duration) {
	us := float64(d) / float64(time.Microsecond)
	h.Buckets[bucketOf(us)]++
	h.Count++
	h.MaxUS = max(h.MaxUS, us)
}

func (h *Hist) Merge(o *Hist) {
	for b, n := range o.Buckets {
		h.Buckets[b] += n
	}
	h.Count += o.Count
	h.MaxUS = max(h.MaxUS, o.MaxUS)
}

// Quantile returns the latency below which a fraction q of samples fall.
func (h *Hist) Quantile(q float64) time.Duration {
	if h.Count == 0 {
		return 0
	}
	keys := h.sortedBuckets()
	want := uint64(math.Ceil(q * float64(h.Count)))
	var seen uint64
	for _, b := range keys {
		seen += h.Buckets[b]
		if seen >= want {
			return time.Duration(min(bucketValue(b), h.MaxUS) * float64(time.Microsecond))
		}
	}
	return time.Duration(h.MaxUS * float64(time.Microsecond))
}

func (h *Hist) sortedBuckets() []int {
	keys := make([]int, 0, len(h.Buckets))
	for b := range h.Buckets {
		keys = append(keys, b)
	}
	sort.Ints(keys)
	return keys
}
