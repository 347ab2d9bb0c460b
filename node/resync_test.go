package node_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/bolt"
	"github.com/kronos-sync/kronos-server/internal/nodetest"
	"github.com/kronos-sync/kronos-server/node"
	"github.com/kronos-sync/kronos-server/node/client"
)

// startTapped runs a node whose feed the test can also speak for.
func startTapped(tb testing.TB) (*nodetest.Node, *nodetest.SinkTap) {
	tb.Helper()
	s, err := bolt.Open(filepath.Join(tb.TempDir(), "k.db"), feed.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	tap := &nodetest.SinkTap{Feed: s}
	return nodetest.Start(tb, nodetest.Options{Node: node.Options{}, Backend: &feed.Backend{Store: s, Feed: tap}}), tap
}

// When a feed lost changes of a user, the node closes that user's
// connections (they log in again and re-sync) and no one else's.
func TestResyncClosesTheUsersConnections(t *testing.T) {
	n, tap := startTapped(t)
	dial := func(tr client.Transport, user string) (*client.Client, string) {
		c, err := client.Dial(context.Background(), tr, n.Addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		m, err := c.Login(user, "", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return c, m.Str("user_id")
	}
	a1, user := dial(client.TCP, "")
	a2, _ := dial(client.WebSocket, user)
	other, _ := dial(client.TCP, "")
	tap.Deliver([]feed.Change{{UserID: user, Kind: feed.ChangeResync}})
	for _, c := range []*client.Client{a1, a2} {
		for {
			if _, err := c.NextRaw(5 * time.Second); err != nil {
				break // closed (a WebSocket gets its close frame first)
			}
		}
	}
	if err := other.Send(map[string]any{"type": "read-all"}); err != nil {
		t.Fatal(err)
	}
	if m, err := other.Next(5 * time.Second); err != nil || m.Type() != "read-all" {
		t.Fatalf("another user's connection was disturbed: %v %v", m, err)
	}
}
