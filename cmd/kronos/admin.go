package main

import (
	"net/http"
	"sync/atomic"

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

func newAdminPort(gatherer prometheus.Gatherer) *adminPort {
	a := &adminPort{}
	reason := "starting"
	a.reason.Store(&reason)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "not ready: "+*a.reason.Load(), http.StatusServiceUnavailable)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	a.starting = mux
	return a
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
