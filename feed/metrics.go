package feed

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type storeMetrics struct {
	opDuration *prometheus.HistogramVec
	batchSize  prometheus.Histogram
}

func newStoreMetrics(reg prometheus.Registerer, backend string) *storeMetrics {
	m := &storeMetrics{
		opDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:        "kronos_store_op_duration_seconds",
			Help:        "Store operation latency, by operation and outcome.",
			ConstLabels: prometheus.Labels{"backend": backend},
			Buckets:     prometheus.ExponentialBuckets(0.0001, 2, 16),
		}, []string{"op", "outcome"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "kronos_store_commit_batch_size",
			Help:        "Writes grouped into one durable commit.",
			ConstLabels: prometheus.Labels{"backend": backend},
			Buckets:     prometheus.ExponentialBuckets(1, 2, 9),
		}),
	}
	if reg != nil {
		reg.MustRegister(m.opDuration, m.batchSize)
	}
	return m
}

func (m *storeMetrics) observe(op string, start time.Time, err error) {
	outcome := "ok"
	switch {
	case err == nil:
	case isRefusal(err):
		outcome = "refused"
	default:
		outcome = "error"
	}
	m.opDuration.WithLabelValues(op, outcome).Observe(time.Since(start).Seconds())
}

func isRefusal(err error) bool {
	_, ok := err.(*Error)
	return ok
}
