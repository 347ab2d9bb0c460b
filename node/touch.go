package node

import (
	"context"
	"time"
)

// touchBatch bounds the devices of one TouchDevices call.
const touchBatch = 500

// touchLoop refreshes the last-seen time of the devices connected here, so
// that a login on another node, which cannot see them, never retires them
// (see feed.Store.Login). It visits one shard of the hub's device index per
// tick, each shard once per DeviceTouchInterval, so the store sees a steady
// trickle rather than a burst of every connected device at once.
func (n *Node) touchLoop() {
	defer n.loops.Done()
	tick := time.NewTicker(max(n.opts.DeviceTouchInterval/hubShards, time.Millisecond))
	defer tick.Stop()
	// A store call in flight ends with the node rather than hold up its
	// stop.
	base, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	go func() {
		select {
		case <-n.stop:
			cancelBase()
		case <-base.Done():
		}
	}()
	var ids []string
	for shard := 0; ; shard = (shard + 1) % hubShards {
		select {
		case <-n.stop:
			return
		case <-tick.C:
		}
		ids = n.hub.shardDevices(shard, ids[:0])
		for len(ids) > 0 {
			batch := ids[:min(len(ids), touchBatch)]
			ids = ids[len(batch):]
			ctx, cancel := context.WithTimeout(base, n.opts.StoreTimeout)
			err := n.store.TouchDevices(ctx, batch)
			cancel()
			if err != nil && base.Err() == nil {
				// The next round tries again, well within the idle window.
				n.log.Warn().Err(err).Int("devices", len(batch)).Msg("refreshing devices' last-seen time failed")
			}
		}
	}
}
