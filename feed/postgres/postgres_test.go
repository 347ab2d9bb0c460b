package postgres_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/postgres"
	"github.com/kronos-sync/kronos-server/feed/storetest"
	"github.com/kronos-sync/kronos-server/internal/pgtest"
)

func openPostgres(t *testing.T, url string, opts feed.Options) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(context.Background(), url, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, opts feed.Options) feed.Backend {
		s := openPostgres(t, pgtest.URL(t), opts)
		return feed.Backend{Store: s, Feed: s}
	})
}

// Nodes starting together on an empty database migrate it once.
func TestConcurrentStart(t *testing.T) {
	url := pgtest.URL(t)
	errs := make(chan error, 4)
	stores := make(chan *postgres.Store, 4)
	for range 4 {
		go func() {
			s, err := postgres.Open(context.Background(), url, feed.Options{})
			errs <- err
			stores <- s
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		s := <-stores
		defer s.Close()
	}
}

// A change written through one store reaches the feed of another store on
// the same database: two nodes.
func TestFeedAcrossNodes(t *testing.T) {
	url := pgtest.URL(t)
	a := openPostgres(t, url, feed.Options{})
	defer a.Close()
	b := openPostgres(t, url, feed.Options{})
	defer b.Close()
	recA, recB := storetest.NewRecorder(), storetest.NewRecorder()
	a.Subscribe(recA.Sink)
	b.Subscribe(recB.Sink)
	sess, err := a.Login(context.Background(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Watch(context.Background(), sess.UserID, sess.Seq); err != nil {
		t.Fatal(err)
	}
	other, _ := a.Login(context.Background(), "", "")
	for i := range 20 {
		w := &feed.Write{Kind: feed.WriteCreate, UserID: sess.UserID, DeviceID: sess.DeviceID,
			Task: []byte(`{"id":` + strconv.Itoa(i) + `}`), Version: []byte(strconv.Itoa(i))}
		if err := a.Write(context.Background(), w); err != nil {
			t.Fatal(err)
		}
		// A user no node watches produces nothing on b.
		if err := a.Write(context.Background(), &feed.Write{Kind: feed.WriteCreate, UserID: other.UserID,
			Task: []byte(`{"id":` + strconv.Itoa(i) + `}`)}); err != nil {
			t.Fatal(err)
		}
	}
	got := recB.Wait(t, sess.UserID, 20)
	for i, c := range got {
		if c.TaskID != int64(i) || c.Seq != uint64(i+1) {
			t.Fatalf("change %d: %+v", i, c)
		}
	}
	if n := len(recB.Changes(other.UserID)); n != 0 {
		t.Fatalf("b delivered %d changes of a user it does not watch", n)
	}
	if len(recA.Changes(sess.UserID)) != 0 {
		t.Fatal("a delivered changes of a user it does not watch")
	}
}

// The listen connection is killed again and again while writes go on:
// every change still arrives, once, in order.
func TestListenConnectionKilled(t *testing.T) {
	url := pgtest.URL(t)
	writer := openPostgres(t, url, feed.Options{})
	defer writer.Close()
	reader := openPostgres(t, url, feed.Options{})
	defer reader.Close()
	rec := storetest.NewRecorder()
	reader.Subscribe(rec.Sink)
	ctx := context.Background()
	sess, err := writer.Login(ctx, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := reader.Watch(ctx, sess.UserID, sess.Seq); err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)

	const total = 300
	done := make(chan error, 1)
	go func() {
		for i := range total {
			w := &feed.Write{Kind: feed.WriteCreate, UserID: sess.UserID, DeviceID: sess.DeviceID,
				Task: []byte(`{"id":` + strconv.Itoa(i) + `}`), Version: []byte(strconv.Itoa(i))}
			if err := writer.Write(ctx, w); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	killed := 0
	for _, at := range []int{20, 100, 200} {
		rec.Wait(t, sess.UserID, at)
		tag, err := admin.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE application_name = 'kronos-listen' AND datname = current_database()`)
		if err != nil {
			t.Fatal(err)
		}
		killed += int(tag.RowsAffected())
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if killed < 3 {
		t.Fatalf("only %d listen connections were killed", killed)
	}
	got := rec.Wait(t, sess.UserID, total)
	if len(got) != total {
		t.Fatalf("%d changes delivered, want %d (doubled?)", len(got), total)
	}
	for i, c := range got {
		if c.TaskID != int64(i) {
			t.Fatalf("change %d is task %d: lost, doubled or out of order", i, c.TaskID)
		}
	}
}

// Devices from before migration 2 have no last-seen time: they log in, and
// at the limit one never seen since is the first retired.
func TestDeviceWithoutLastSeen(t *testing.T) {
	url := pgtest.URL(t)
	s := openPostgres(t, url, feed.Options{Limits: feed.Limits{MaxDevicesPerUser: 2}})
	defer s.Close()
	ctx := context.Background()
	a, err := s.Login(ctx, "", "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Login(ctx, a.UserID, "")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `UPDATE kronos_devices SET last_seen = NULL`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Login(ctx, a.UserID, b.DeviceID); err != nil {
		t.Fatalf("login of a device without last-seen: %v", err)
	}
	if _, err := s.Login(ctx, a.UserID, ""); err != nil {
		t.Fatalf("new device at the limit: %v", err)
	}
	if _, err := s.Login(ctx, a.UserID, a.DeviceID); !feed.IsCode(err, feed.CodeDeviceNotFound) {
		t.Fatalf("the never-seen device was not retired: %v", err)
	}
}
