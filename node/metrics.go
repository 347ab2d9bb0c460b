package node

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	logins        *prometheus.CounterVec
	requests      *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	notifications prometheus.Counter
	rebalanced    prometheus.Counter
	// rebalancePaused counts pauses of rebalancing that did not move
	// clients away.
	rebalancePaused prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, h *hub, f *fanout) *metrics {
	m := &metrics{
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kronos_logins_total",
			Help: "Logins by outcome: new_user, new_device, existing, refused, error.",
		}, []string{"outcome"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kronos_requests_total",
			Help: "Requests by type and outcome.",
		}, []string{"type", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kronos_request_duration_seconds",
			Help:    "Time from a request's arrival to its answer or commit.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}, []string{"type"}),
		notifications: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kronos_notifications_sent_total",
			Help: "Notifications queued to devices.",
		}),
		rebalanced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kronos_rebalance_closed_total",
			Help: "Connections closed to move them to less loaded nodes.",
		}),
		rebalancePaused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kronos_rebalance_paused_total",
			Help: "Times rebalancing paused because the connections it closed came back to this node.",
		}),
	}
	if reg != nil {
		users := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kronos_users_connected",
			Help: "Users with at least one logged-in device on this node.",
		}, func() float64 { return float64(h.users()) })
		fanoutQueued := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kronos_fanout_queued_batches",
			Help: "Committed batches of changes waiting for the fan-out to write them: a backlog the node is behind by.",
		}, func() float64 { return float64(f.queued()) })
		reg.MustRegister(m.logins, m.requests, m.latency, m.notifications, m.rebalanced, m.rebalancePaused, users, fanoutQueued)
	}
	return m
}
