package node_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/bolt"
	"github.com/kronos-sync/kronos-server/feed/storetest"
	"github.com/kronos-sync/kronos-server/internal/nodetest"
	"github.com/kronos-sync/kronos-server/node"
	"github.com/kronos-sync/kronos-server/node/client"
)

const deviceIdle = 30 * time.Minute

// touchSpy reports each TouchDevices call, after the store ran it.
type touchSpy struct {
	feed.Store
	touched chan []string
}

func (s *touchSpy) TouchDevices(ctx context.Context, ids []string) error {
	err := s.Store.TouchDevices(ctx, ids)
	select {
	case s.touched <- slices.Clone(ids):
	case <-ctx.Done(): // the node is stopping
	}
	return err
}

// startDevices runs a node allowing 2 devices per user on a bbolt store
// whose last-seen clock the test moves.
func startDevices(t *testing.T, touchEvery time.Duration) (*harness, *storetest.Clock, *touchSpy) {
	t.Helper()
	clock := storetest.NewClock()
	limits := feed.Limits{MaxDevicesPerUser: 2}
	s, err := bolt.Open(filepath.Join(t.TempDir(), "kronos.db"), feed.Options{Limits: limits, DeviceIdleAfter: deviceIdle, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() }) // after the node's Shutdown
	spy := &touchSpy{Store: s, touched: make(chan []string)}
	n := nodetest.Start(t, nodetest.Options{
		Node:    node.Options{Limits: limits, DeviceTouchInterval: touchEvery},
		Backend: &feed.Backend{Store: spy, Feed: s},
	})
	return &harness{t: t, node: n, addr: n.Addr}, clock, spy
}

// A user at the device limit adds a device over a real connection: the
// least recently seen device that is not connected is retired, never a
// connected one however long unseen; when every device is connected the
// new one is refused.
func TestDeviceLimitRetiresIdleDevice(t *testing.T) {
	h, clock, _ := startDevices(t, 0)
	ctx := context.Background()
	ca, m := h.login(client.TCP, "", "")
	user, a := m.Str("user_id"), m.Str("device_id")
	clock.Advance(time.Minute)
	b, err := h.node.Backend.Store.Login(ctx, user, "") // registered, never connected here
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * deviceIdle) // a and b both unseen for long; a is the older

	cc, m := h.login(client.WebSocket, user, "")
	c := m.Str("device_id")
	if c == "" || c == a || c == b.DeviceID {
		t.Fatalf("new device at the limit: %v", m)
	}
	d := h.dial(client.TCP)
	send(t, d, map[string]any{"type": "login", "user_id": user, "device_id": b.DeviceID})
	expectError(t, d, "login", "is not registered for this user")
	send(t, ca, map[string]any{"type": "read-all"})
	expectType(t, ca, "read-all")

	// Both devices are connected: however long unseen, neither goes.
	clock.Advance(2 * deviceIdle)
	send(t, d, map[string]any{"type": "login", "user_id": user})
	expectError(t, d, "login", "too many devices: at most 2 per user")
	send(t, cc, map[string]any{"type": "read-all"})
	expectType(t, cc, "read-all")
	h.login(client.TCP, user, a) // a is still the user's (and takes over ca)
}

// A node refreshes the last-seen time of its connected devices, so that a
// login elsewhere in the cluster (which does not know them) retires an idle
// device rather than one connected here.
func TestConnectedDevicesAreTouched(t *testing.T) {
	h, clock, spy := startDevices(t, 64*time.Millisecond)
	ctx := context.Background()
	ca, m := h.login(client.TCP, "", "")
	user, a := m.Str("user_id"), m.Str("device_id")
	clock.Advance(time.Minute)
	b, err := h.node.Backend.Store.Login(ctx, user, "")
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * deviceIdle)
	// The first touch of a seen now may have read the clock before it
	// moved; the second began after the first was reported.
	for seen := 0; seen < 2; {
		select {
		case ids := <-spy.touched:
			if slices.Contains(ids, a) {
				seen++
			}
		case <-time.After(wait):
			t.Fatal("the connected device was not touched")
		}
	}
	// Another node's login: it names no connected device.
	if _, err := h.node.Backend.Store.Login(ctx, user, ""); err != nil {
		t.Fatalf("new device on another node: %v", err)
	}
	if _, err := h.node.Backend.Store.Login(ctx, user, b.DeviceID); !feed.IsCode(err, feed.CodeDeviceNotFound) {
		t.Fatalf("the idle device was not the one retired: %v", err)
	}
	send(t, ca, map[string]any{"type": "read-all"})
	expectType(t, ca, "read-all")
	if _, err := h.node.Backend.Store.Login(ctx, user, a); err != nil {
		t.Fatalf("the connected device was retired: %v", err)
	}
}
