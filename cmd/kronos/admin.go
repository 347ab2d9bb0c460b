package main

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// adminPort serves the admin port from the moment the process starts.
// Until the node runs (its store may not answer yet) it answers /healthz
// 200, /readyz 503 with the reason, and /metrics; then the node's own
// handler takes every path.
type adminPort struct {
	starting http.Handler
	node     atomic.Pointer[http.Handler]
	reason   atomic.Pointer[string]
}

func newAdminPort(reg *prometheus.Registry) *adminPort {
	a := &adminPort{}
	reason := "starting"
	a.reason.Store(&reason)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "not ready: "+*a.reason.Load(), http.StatusServiceUnavailable)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	a.starting = mux
	// Prometheus scrapes /metrics, not /readyz: this gauge carries what
	// /readyz answers, so that alerts see a node that is up but not ready
	// (waiting for its store, its feed down, draining).
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kronos_ready",
		Help: "1 while /readyz answers 200: the node accepts clients and its store and feed answer.",
	}, a.ready))
	return a
}

// ready asks /readyz, whoever serves it now.
func (a *adminPort) ready() float64 {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	r, _ := http.NewRequestWithContext(ctx, http.MethodGet, "/readyz", nil)
	var w statusWriter
	a.ServeHTTP(&w, r)
	if w.code == http.StatusOK {
		return 1
	}
	return 0
}

// statusWriter keeps a response's status only.
type statusWriter struct {
	code   int
	header http.Header
}

func (w *statusWriter) Header() http.Header {
	if w.header == nil {
		w.header = http.Header{}
	}
	return w.header
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}

func (w *statusWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return len(p), nil
}

// waiting says why the node is not up yet (shown by /readyz).
func (a *adminPort) waiting(reason string) { a.reason.Store(&reason) }

// serveNode hands every path to the node's handler.
func (a *adminPort) serveNode(h http.Handler) { a.node.Store(&h) }

func (a *adminPort) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h := a.node.Load(); h != nil {
		(*h).ServeHTTP(w, r)
		return
	}
	a.starting.ServeHTTP(w, r)
}
