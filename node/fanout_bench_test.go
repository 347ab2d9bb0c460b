package node_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/node/client"
)

// BenchmarkFanOut: changes handed to the node as its feed does, each
// delivered to the ten connected devices of its user (real sockets, half of
// them WebSocket): the fan-out queue, the hub lookup, the encoding and the
// socket writes, until every device has read every notification.
func BenchmarkFanOut(b *testing.B) {
	n, tap := startTapped(b)
	const devices = 10
	var user string
	var devs []*client.Client
	for i := range devices {
		tr := client.TCP
		if i%2 == 1 {
			tr = client.WebSocket
		}
		c, err := client.Dial(context.Background(), tr, n.Addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		m, err := c.Login(user, "", 5*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		user = m.Str("user_id")
		devs = append(devs, c)
	}
	change := feed.Change{
		UserID: user, Kind: feed.ChangeUpdate, TaskID: 1,
		Task:     json.RawMessage(`{"id":1,"desc":"write the report","tags":["work"],"start":1732540800,"active":true}`),
		DeviceID: "0f4b0e7c-3a1e-4f67-9a41-1f6f8a7d2c11", Version: json.RawMessage(`1732540800123`),
	}
	var wg sync.WaitGroup
	var short sync.Once
	for _, c := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range b.N {
				if _, err := c.NextRaw(10 * time.Second); err != nil {
					short.Do(func() { b.Error("a device missed notifications:", err) })
					return
				}
			}
		}()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		c := change
		c.Seq = uint64(i + 1)
		tap.Deliver([]feed.Change{c})
	}
	wg.Wait() // timed: the devices' reads are part of the fan-out
	b.StopTimer()
	b.ReportMetric(float64(b.N*devices)/b.Elapsed().Seconds(), "notifications/s")
}
