package feed

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// StoreMetrics are the metrics every backend exports.
type StoreMetrics struct {
	opDuration *prometheus.HistogramVec
	// BatchSize observes how many writes one durable commit grouped.
	BatchSize prometheus.Histogram
}

// NewStoreMetrics registers the store metrics of a backend on reg (nil: not
// registered).
func NewStoreMetrics(reg prometheus.Registerer, backend string) *StoreMetrics {
	m := &StoreMetrics{
		opDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:        "kronos_store_op_duration_seconds",
			Help:        "Store operation latency, by operation and outcome.",
			ConstLabels: prometheus.Labels{"backend": backend},
			Buckets:     prometheus.ExponentialBuckets(0.0001, 2, 16),
		}, []string{"op", "outcome"}),
		BatchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "kronos_store_commit_batch_size",
			Help:        "Writes grouped into one durable commit.",
			ConstLabels: prometheus.Labels{"backend": backend},
			// 1 to 1,024: the embedded store groups up to 1,024 writes.
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		}),
	}
	if reg != nil {
		reg.MustRegister(m.opDuration, m.BatchSize)
	}
	return m
}

// Observe records one operation's latency and outcome (ok, refused, error).
func (m *StoreMetrics) Observe(op string, start time.Time, err error) {
	outcome := "ok"
	switch {
	case err == nil:
	case IsRefusal(err):
		outcome = "refused"
	default:
		outcome = "error"
	}
	m.opDuration.WithLabelValues(op, outcome).Observe(time.Since(start).Seconds())
}

// FeedMetrics are the metrics of a shared backend's feed.
type FeedMetrics struct {
	Reconnects prometheus.Counter
	Resyncs    prometheus.Counter
	Pruned     prometheus.Counter
}

// NewFeedMetrics registers the feed metrics on reg (nil: not registered).
func NewFeedMetrics(reg prometheus.Registerer) *FeedMetrics {
	m := &FeedMetrics{
		Reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kronos_feed_reconnects_total",
			Help: "Times the feed's connection was (re)established.",
		}),
		Resyncs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kronos_feed_resyncs_total",
			Help: "Users whose devices were asked to re-sync because the feed lost changes.",
		}),
		Pruned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kronos_changelog_pruned_total",
			Help: "Change log entries pruned.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.Reconnects, m.Resyncs, m.Pruned)
	}
	return m
}
