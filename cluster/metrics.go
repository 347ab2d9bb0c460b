package cluster

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	members  *prometheus.GaugeVec
	changes  *prometheus.CounterVec
	sends    *prometheus.CounterVec
	sent     prometheus.Counter
	dropped  *prometheus.CounterVec
	received *prometheus.CounterVec
	rejected *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		members: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kronos_cluster_members",
			Help: "Cluster members this node knows, by gossip status and node state (ready, draining, or stale or invalid: figures ignored).",
		}, []string{"status", "state"}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kronos_cluster_membership_changes_total",
			Help: "Nodes that joined, or left or died.",
		}, []string{"event"}),
		sends: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kronos_cluster_sends_total",
			Help: "Batches of messages sent to other nodes, one connection each, by result.",
		}, []string{"result"}),
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kronos_cluster_messages_sent_total",
			Help: "Messages (takeovers) delivered to other nodes in those batches.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kronos_cluster_messages_dropped_total",
			Help: "Messages for other nodes never sent: queue_full (oldest dropped), send_failed, peer_left, stopped, too_large.",
		}, []string{"reason"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kronos_cluster_messages_received_total",
			Help: "Messages from other nodes, by kind (unknown: a newer node's, skipped).",
		}, []string{"kind"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kronos_cluster_messages_rejected_total",
			Help: "Batches from other nodes refused: malformed, or not_member (no key, and the sender is not a member).",
		}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.members, m.changes, m.sends, m.sent, m.dropped, m.received, m.rejected)
	}
	return m
}

func (m *metrics) update(members []Member) {
	m.members.Reset()
	for _, mem := range members {
		// A label from gossip would let any member make up series.
		state := mem.State
		switch {
		case strings.HasPrefix(mem.Ignored, "invalid"):
			state = "invalid"
		case mem.Ignored != "":
			state = "stale"
		}
		m.members.WithLabelValues(mem.Status, state).Inc()
	}
}
