// Package nodetest starts real nodes for tests: the real listener on a
// random loopback port, on a fresh bbolt file unless the test brings its own
// backend, optionally in a cluster, stopped when the test ends.
package nodetest

import (
	"context"
	"crypto/rand"
	"io"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/kronos-sync/kronos-server/cluster"
	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/bolt"
	"github.com/kronos-sync/kronos-server/node"
)

// Options say what to start. The zero value is a single node on a fresh
// bbolt file with the node's defaults.
type Options struct {
	Node node.Options
	// Backend is the store and feed to use; nil: a fresh bbolt file, closed
	// when the test ends (a backend the test brings, it closes itself).
	Backend *feed.Backend
	// Join makes the node a cluster member (fast timers, loopback) joining
	// these gossip addresses; an empty non-nil slice starts a cluster.
	Join []string
	// Key is the cluster's gossip key. Nil when starting a cluster: a
	// random one (in Node.Key, for the nodes that join). Nil when joining
	// one: the test fails, unless Insecure.
	Key []byte
	// Insecure clusters without a key (cluster.Options.Insecure).
	Insecure bool
}

// Node is a started node.
type Node struct {
	*node.Node
	Backend feed.Backend
	Addr    string           // client port
	Cluster *cluster.Cluster // nil unless Join was given
	Key     []byte           // the cluster's gossip key; nil if Insecure
}

// Start runs a node and stops it (Shutdown, 10s) when tb ends.
func Start(tb testing.TB, opts Options) *Node {
	tb.Helper()
	nopts := opts.Node
	nopts.Conn.Listen = "127.0.0.1:0"
	if nopts.Logger.GetLevel() == zerolog.TraceLevel { // the zero Logger: keep tests quiet
		nopts.Logger = zerolog.New(io.Discard)
	}
	var b feed.Backend
	if opts.Backend != nil {
		b = *opts.Backend
	} else {
		s, err := bolt.Open(filepath.Join(tb.TempDir(), "kronos.db"), feed.Options{Limits: nopts.Limits})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { s.Close() }) // runs after the node's Shutdown below
		b = feed.Backend{Store: s, Feed: s}
	}
	n, err := node.New(b, nopts)
	if err != nil {
		tb.Fatal(err)
	}
	if err := n.Start(); err != nil {
		tb.Fatal(err)
	}
	tn := &Node{Node: n, Backend: b, Addr: n.Addr().String()}
	if opts.Join != nil {
		key := opts.Key
		switch {
		case opts.Insecure:
		case key == nil && len(opts.Join) > 0:
			tb.Fatal("nodetest: joining a cluster needs its Key (or Insecure)")
		case key == nil:
			key = NewKey(tb)
		}
		c, err := n.JoinCluster(cluster.Options{Bind: "127.0.0.1:0", Join: opts.Join, Key: key,
			Insecure: opts.Insecure, Fast: true, Logger: zerolog.New(io.Discard)})
		if err != nil {
			tb.Fatal(err)
		}
		tn.Cluster, tn.Key = c, key
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := n.Shutdown(ctx); err != nil {
			tb.Errorf("shutdown: %v", err)
		}
	})
	return tn
}

// NewKey returns a random 32-byte gossip key.
func NewKey(tb testing.TB) []byte {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		tb.Fatal(err)
	}
	return key
}

// SinkTap is a feed.Feed that passes everything to a real feed and keeps
// the node's Sink, so that a test can hand the node changes no store made
// (a resync, say).
type SinkTap struct {
	feed.Feed
	mu   sync.Mutex
	sink feed.Sink
}

// Subscribe implements feed.Feed.
func (t *SinkTap) Subscribe(s feed.Sink) {
	t.mu.Lock()
	t.sink = s
	t.mu.Unlock()
	t.Feed.Subscribe(s)
}

// Deliver hands changes to the node as its feed would.
func (t *SinkTap) Deliver(changes []feed.Change) {
	t.mu.Lock()
	s := t.sink
	t.mu.Unlock()
	s(changes)
}
