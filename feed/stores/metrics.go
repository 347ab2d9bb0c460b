package stores

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kronos-sync/kronos-server/feed"
)

// registerFeedUp exports the state of a shared store's feed, for
// dashboards and alerts: kronos_feed_up is Store.Ready, asked at each
// scrape. (A node's /readyz also fails when its feed is down, but it mixes
// in the node's own state; this gauge names the cause.) The embedded store
// has no feed to lose and does not export it.
func registerFeedUp(reg prometheus.Registerer, s feed.Store) {
	if reg == nil {
		return
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kronos_feed_up",
		Help: "1 while the shared store answers and this node's change feed delivers (PostgreSQL LISTEN, RethinkDB changefeeds).",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if s.Ready(ctx) != nil {
			return 0
		}
		return 1
	}))
}
