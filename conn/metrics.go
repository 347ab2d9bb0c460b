package conn

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	open           *prometheus.GaugeVec
	accepted       prometheus.Counter
	refused        *prometheus.CounterVec
	acceptErrors   prometheus.Counter
	closes         *prometheus.CounterVec
	queueOverflows prometheus.Counter
	tlsHandshakes  *prometheus.CounterVec
	tlsReloads     *prometheus.CounterVec
	tlsExpiry      prometheus.Gauge
	proxyHeaders   *prometheus.CounterVec
	budgetCuts     *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kronos_connections_open",
			Help: "Open client connections by transport (pending: not sniffed yet).",
		}, []string{"transport"}),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kronos_connections_accepted_total",
			Help: "Client connections accepted.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kronos_connections_refused_total",
			Help: "Client connections refused, by limit: max_conns, max_conns_per_ip.",
		}, []string{"limit"}),
		acceptErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kronos_accept_pauses_total",
			Help: "Times accepting paused for lack of descriptors or memory.",
		}),
		closes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kronos_connections_closed_total",
			Help: "Client connections closed, by reason.",
		}, []string{"reason"}),
		queueOverflows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kronos_queue_drops_total",
			Help: "Connections dropped because their outgoing queue overflowed (slow consumers).",
		}),
		tlsHandshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kronos_tls_handshakes_total",
			Help: "TLS handshakes on the client port, by result: ok, error.",
		}, []string{"result"}),
		tlsReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kronos_tls_certificate_reloads_total",
			Help: "Reloads of the client port's certificate after its files changed, by result: ok, error.",
		}, []string{"result"}),
		tlsExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kronos_tls_certificate_expiry_timestamp_seconds",
			Help: "When the client port's certificate in use expires (Unix time); 0 without TLS.",
		}),
		proxyHeaders: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kronos_proxy_headers_total",
			Help: "PROXY protocol headers read on the client port, by result: ok, invalid.",
		}, []string{"result"}),
		budgetCuts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kronos_budget_cuts_total",
			Help: "Connections cut because a node-wide memory budget was full and they held the most, by budget: input, output.",
		}, []string{"budget"}),
	}
	for _, t := range []string{"pending", "tcp", "websocket"} {
		m.open.WithLabelValues(t) // exported as 0 from the start
	}
	for _, l := range []string{"max_conns", "max_conns_per_ip"} {
		m.refused.WithLabelValues(l)
	}
	for _, b := range []string{"input", "output"} {
		m.budgetCuts.WithLabelValues(b)
	}
	if reg != nil {
		reg.MustRegister(m.open, m.accepted, m.refused, m.acceptErrors, m.closes, m.queueOverflows, m.budgetCuts,
			m.tlsHandshakes, m.tlsReloads, m.tlsExpiry, m.proxyHeaders)
	}
	return m
}

// watchBudgets exports the node-wide sums the budgets bound.
func (m *metrics) watchBudgets(reg prometheus.Registerer, in, out *budget) {
	if reg == nil {
		return
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kronos_input_buffered_bytes",
			Help: "Bytes held for client messages not yet received whole, on all connections (bounded by --input-budget-bytes).",
		}, func() float64 { return float64(in.used.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kronos_output_queued_bytes",
			Help: "Bytes queued for clients and not yet written, on all connections, a payload shared by connections counted once (bounded by --output-budget-bytes).",
		}, func() float64 { return float64(out.used.Load()) }),
	)
}

func transportLabel(t Transport) string {
	switch t {
	case TransportTCP, TransportWebSocket:
		return t.String()
	}
	return "pending"
}

func (m *metrics) opened() { m.open.WithLabelValues("pending").Inc() }

func (m *metrics) transportKnown(t Transport) {
	m.open.WithLabelValues("pending").Dec()
	m.open.WithLabelValues(transportLabel(t)).Inc()
}

func (m *metrics) closed(t Transport) { m.open.WithLabelValues(transportLabel(t)).Dec() }

func (m *metrics) closing(r CloseReason) { m.closes.WithLabelValues(r.String()).Inc() }

func (m *metrics) tlsHandshake(err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.tlsHandshakes.WithLabelValues(result).Inc()
}
