package node

import (
	"context"
	"encoding/json"
	"io"
	"testing"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/node/client"
)

var benchChange = feed.Change{
	Seq: 42, UserID: "5f0c2b9e-8d7a-4c1b-9e3f-2a6d4c8b1e07", Kind: feed.ChangeUpdate, TaskID: 1,
	Task:     json.RawMessage(`{"id":1,"desc":"write the report","tags":["work"],"start":1732540800,"active":true}`),
	DeviceID: "0f4b0e7c-3a1e-4f67-9a41-1f6f8a7d2c11", Version: json.RawMessage(`1732540800123`),
}

// BenchmarkEncodeNotification: the one encoding a change gets for all the
// devices of its user.
func BenchmarkEncodeNotification(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		encodeNotification(&benchChange)
	}
}

// BenchmarkFanOut: one change delivered to the ten connected devices of its
// user (real sockets, half of them WebSocket), from the hub lookup to the
// socket writes.
func BenchmarkFanOut(b *testing.B) {
	n := startNode(b)
	var user string
	for i := range 10 {
		tr := client.TCP
		if i%2 == 1 {
			tr = client.WebSocket
		}
		c, err := client.Dial(context.Background(), tr, n.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		m, err := c.Login(user, "", 5e9)
		if err != nil {
			b.Fatal(err)
		}
		user = m.Str("user_id")
		go io.Copy(io.Discard, c.Conn)
	}
	change := benchChange
	change.UserID = user
	batch := []feed.Change{change}
	b.ReportAllocs()
	for b.Loop() {
		n.deliver(batch)
	}
	b.ReportMetric(float64(b.N*10)/b.Elapsed().Seconds(), "notifications/s")
}
