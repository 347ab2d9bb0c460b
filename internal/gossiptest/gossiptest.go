// Package gossiptest runs bare memberlist members for tests: strangers that
// join a Kronos cluster and gossip whatever metadata a test gives them, as
// an attacker on the gossip network could.
package gossiptest

import (
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// Options say what to start.
type Options struct {
	Name string // default "stranger"
	Key  []byte // nil: no encryption
	// Meta is the metadata to gossip; Heartbeat replaces it.
	Meta []byte
}

// Member is a running memberlist member, shut down when the test ends.
type Member struct {
	List *memberlist.Memberlist

	mu   sync.Mutex
	meta []byte

	stop chan struct{}
	done sync.WaitGroup
}

// Start creates the member on a random loopback port.
func Start(tb testing.TB, opts Options) *Member {
	tb.Helper()
	if opts.Name == "" {
		opts.Name = "stranger"
	}
	m := &Member{meta: opts.Meta, stop: make(chan struct{})}
	conf := memberlist.DefaultLocalConfig()
	conf.Name = opts.Name
	conf.BindAddr, conf.BindPort = "127.0.0.1", 0
	conf.ProbeInterval, conf.ProbeTimeout, conf.GossipInterval = 200*time.Millisecond, 100*time.Millisecond, 50*time.Millisecond
	conf.SecretKey = opts.Key
	conf.Delegate = (*delegate)(m)
	conf.LogOutput = io.Discard
	list, err := memberlist.Create(conf)
	if err != nil {
		tb.Fatal(err)
	}
	m.List = list
	tb.Cleanup(func() {
		close(m.stop)
		m.done.Wait()
		list.Shutdown()
	})
	return m
}

// Join joins the node at addr; it returns memberlist's error.
func (m *Member) Join(addr string) error {
	_, err := m.List.Join([]string{addr})
	return err
}

// SetMeta gossips new metadata.
func (m *Member) SetMeta(meta []byte) error {
	m.mu.Lock()
	m.meta = meta
	m.mu.Unlock()
	return m.List.UpdateNode(time.Second)
}

// Heartbeat gossips meta(i) every interval, i counting from 1, until the
// test ends: figures that look fresh.
func (m *Member) Heartbeat(interval time.Duration, meta func(i int) []byte) {
	m.done.Add(1)
	go func() {
		defer m.done.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for i := 1; ; i++ {
			m.SetMeta(meta(i))
			select {
			case <-m.stop:
				return
			case <-t.C:
			}
		}
	}()
}

// Node is how to reach the node at a host:port gossip address with
// SendReliable.
func Node(tb testing.TB, name, addr string) *memberlist.Node {
	tb.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		tb.Fatal(err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		tb.Fatal(fmt.Errorf("port of %s: %w", addr, err))
	}
	return &memberlist.Node{Name: name, Addr: net.ParseIP(host), Port: uint16(p)}
}

type delegate Member

func (d *delegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.meta) > limit {
		return nil
	}
	return d.meta
}
func (d *delegate) NotifyMsg([]byte)                {}
func (d *delegate) GetBroadcasts(int, int) [][]byte { return nil }
func (d *delegate) LocalState(bool) []byte          { return nil }
func (d *delegate) MergeRemoteState([]byte, bool)   {}
