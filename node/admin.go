package node

import (
	"context"
	"io"
	"net/http"
	"net/http/pprof"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// AdminHandler serves the operator's endpoints: /healthz (the process is
// alive), /readyz (200 only while the node accepts clients and its store
// answers), /cluster (the members, as JSON), /metrics (Prometheus),
// /backup (a consistent copy of the embedded store) and, with
// Options.AdminPprof, /debug/pprof (profiles cost CPU on the node's hot
// paths and show its internals: off unless asked for).
func (n *Node) AdminHandler(gatherer prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := n.Ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /cluster", n.clusterHandler)
	mux.HandleFunc("GET /backup", n.backupHandler)
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	if n.opts.AdminPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	}
	return mux
}

// backuper is a store that can copy itself while it serves: the embedded
// store (feed/bolt).
type backuper interface {
	Backup(ctx context.Context, w io.Writer, size func(int64)) (int64, error)
}

// backupHandler streams a consistent copy of the store, with its exact
// Content-Length: a copy cut short (the node stopped, the connection
// broke) is told from a whole one by its length. Shared stores have tools
// of their own.
func (n *Node) backupHandler(w http.ResponseWriter, r *http.Request) {
	b, ok := n.store.(backuper)
	if !ok {
		http.Error(w, "backup: this node's store is shared (PostgreSQL or RethinkDB): back it up with its own tools "+
			"(pg_dump, rethinkdb dump), or copy it with kronos migrate", http.StatusNotImplemented)
		return
	}
	// A large file takes longer than the admin server's write timeout.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	start, sent := time.Now(), false
	written, err := b.Backup(r.Context(), w, func(size int64) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		w.Header().Set("Content-Disposition", `attachment; filename="kronos.db"`)
		w.WriteHeader(http.StatusOK)
		sent = true
	})
	if err != nil {
		n.log.Warn().Err(err).Int64("bytes", written).Msg("backup failed")
		if !sent {
			http.Error(w, "backup: "+err.Error(), http.StatusServiceUnavailable)
		}
		return
	}
	n.log.Info().Int64("bytes", written).Dur("took", time.Since(start)).Msg("backup sent")
}
