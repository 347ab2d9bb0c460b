package node_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kronos-sync/kronos-server/node"
)

// /debug/pprof is served only when asked for.
func TestPprofOnlyWhenAsked(t *testing.T) {
	for _, on := range []bool{false, true} {
		h := start(t, node.Options{AdminPprof: on})
		rec := httptest.NewRecorder()
		h.node.AdminHandler(prometheus.NewRegistry()).ServeHTTP(rec, httptest.NewRequest("GET", "/debug/pprof/", nil))
		if want := map[bool]int{false: http.StatusNotFound, true: http.StatusOK}[on]; rec.Code != want {
			t.Fatalf("AdminPprof %v: /debug/pprof/ answered %d, want %d", on, rec.Code, want)
		}
	}
}
