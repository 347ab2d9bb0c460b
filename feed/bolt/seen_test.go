package bolt

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/kronos-sync/kronos-server/feed"
)

// The committer's last-seen cache holds what device_seen holds through
// logins, retirements, writes, touches, loads and failed transactions, so
// that writes stamp exactly when they did without it.
func TestSeenCacheFollowsStore(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	s, err := Open(filepath.Join(t.TempDir(), "kronos.db"), feed.Options{
		Limits: feed.Limits{MaxDevicesPerUser: 2}, DeviceIdleAfter: 30 * time.Minute, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	// checkOp compares the cache with device_seen as its transaction sees
	// it (an error would fail the group, which would then be retried).
	checkOp := func(step string) *op {
		return &op{name: "check", done: make(chan struct{}), run: func(tx *bbolt.Tx) ([]feed.Change, error) {
			for k, cached := range s.seen.at {
				if stored := lastSeen(tx, k.user, k.device); !stored.Equal(cached) {
					t.Errorf("%s: device %s: cached %v, stored %v", step, k.device, cached, stored)
				}
			}
			return nil, nil
		}}
	}
	check := func(step string) {
		t.Helper()
		if err := s.submit(ctx, checkOp(step)); err != nil || t.Failed() {
			t.Fatalf("%s: %v", step, err)
		}
	}
	stored := func(user, device string) (seen time.Time) {
		s.db.View(func(tx *bbolt.Tx) error { seen = lastSeen(tx, user, device); return nil })
		return seen
	}
	write := func(user, device string, id int64) {
		t.Helper()
		if err := s.Write(ctx, &feed.Write{Kind: feed.WriteCreate, UserID: user, DeviceID: device,
			Task: []byte(fmt.Sprintf(`{"id":%d}`, id))}); err != nil {
			t.Fatal(err)
		}
	}

	a, err := s.Login(ctx, "", "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Login(ctx, a.UserID, "")
	if err != nil {
		t.Fatal(err)
	}
	u := a.UserID
	write(u, a.DeviceID, 1)
	check("first write")
	advance(time.Minute + time.Second)
	write(u, a.DeviceID, 2) // due a stamp
	if !stored(u, a.DeviceID).Equal(clock()) {
		t.Fatalf("the write did not stamp its device: %v", stored(u, a.DeviceID))
	}
	check("stamp")
	advance(30 * time.Second)
	write(u, a.DeviceID, 3) // not due
	if stored(u, a.DeviceID).Equal(clock()) {
		t.Fatal("a write stamped its device seen 30s ago")
	}
	if err := s.TouchDevices(ctx, []string{b.DeviceID, "unknown"}); err != nil {
		t.Fatal(err)
	}
	check("touch")

	// B, idle, is retired by a third device; a write from it in the same
	// group stamps it again (the store does not check that a write's
	// device is the user's), as a write without the cache did.
	advance(time.Hour)
	write(u, a.DeviceID, 4)
	var c feed.Session
	login := &op{name: "login", run: func(tx *bbolt.Tx) ([]feed.Change, error) {
		var err error
		c, err = s.loginCreate(tx, u, "", []string{a.DeviceID})
		return nil, err
	}, done: make(chan struct{})}
	late := s.writeOp(&feed.Write{Kind: feed.WriteCreate, UserID: u, DeviceID: b.DeviceID, Task: []byte(`{"id":5}`)})
	late.done = make(chan struct{})
	between := checkOp("retire, in the transaction")
	s.commit([]*op{login, between, late})
	if login.err != nil || between.err != nil || late.err != nil {
		t.Fatal(login.err, between.err, late.err)
	}
	if _, err := s.Login(ctx, u, b.DeviceID); !feed.IsCode(err, feed.CodeDeviceNotFound) {
		t.Fatalf("B was not retired: %v", err)
	}
	if !stored(u, b.DeviceID).Equal(clock()) {
		t.Fatalf("the write of the retired device did not stamp it: %v", stored(u, b.DeviceID))
	}
	check("retire")

	// A transaction that fails leaves nothing of its stamps in the cache.
	advance(time.Hour)
	boom := errors.New("boom")
	err = s.submit(ctx, &op{name: "fail", run: func(tx *bbolt.Tx) ([]feed.Change, error) {
		if err := s.seen.stamp(tx, u, c.DeviceID, clock()); err != nil {
			return nil, err
		}
		return nil, boom
	}})
	if !errors.Is(err, boom) {
		t.Fatal(err)
	}
	check("failed transaction")
	write(u, c.DeviceID, 6)
	if !stored(u, c.DeviceID).Equal(clock()) {
		t.Fatal("the stamp of a failed transaction kept a write from stamping")
	}

	// A load registers a device unseen.
	if err := s.LoadUsers(ctx, []feed.UserData{{ID: u, Version: []byte(`1`), Devices: []string{"loaded"},
		Tasks: []feed.Task{{ID: 1, Raw: []byte(`{"id":1}`)}}}}); err != nil {
		t.Fatal(err)
	}
	check("load")
	write(u, "loaded", 7)
	if !stored(u, "loaded").Equal(clock()) {
		t.Fatal("a write from a device never seen did not stamp it")
	}
	check("end")
	if len(s.seen.at) == 0 {
		t.Fatal("nothing was cached")
	}
}
