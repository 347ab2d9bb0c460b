package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/feed/storetest"
	"github.com/kronos-sync/kronos-server/internal/pgtest"
)

func TestFetchLimitSQL(t *testing.T) {
	if fetchLimitSQL != strconv.Itoa(fetchLimit) {
		t.Fatalf("fetchLimitSQL %s, fetchLimit %d", fetchLimitSQL, fetchLimit)
	}
}

// openStore opens a store on url, closed when the test ends.
func openStore(t *testing.T, url string) *Store {
	t.Helper()
	s, err := Open(context.Background(), url, feed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// The change log's reads probe its (user_id, user_seq) index per user in
// every plan, the generic one included, whatever the table's size and
// statistics: a plan that scans the log or merges it with the user list
// costs in proportion to the whole log on each fetch.
func TestReadLogPlans(t *testing.T) {
	ctx := context.Background()
	url := pgtest.URL(t)
	openStore(t, url) // for its schema
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	stmt := 0
	for _, analyze := range []bool{false, true} {
		if _, err := conn.Exec(ctx, `INSERT INTO kronos_changes (user_id, user_seq, kind, task_id, task, device_id, version)
			SELECT md5((i % 500)::text), i / 500 + 1 + $1::int, 2, 1, '{"id":1}', 'd', '1' FROM generate_series(0, 19999) AS i`,
			map[bool]int{false: 0, true: 1000}[analyze]); err != nil {
			t.Fatal(err)
		}
		if analyze {
			if _, err := conn.Exec(ctx, `ANALYZE kronos_changes`); err != nil {
				t.Fatal(err)
			}
		}
		for _, mode := range []string{"force_generic_plan", "force_custom_plan"} {
			if _, err := conn.Exec(ctx, "SET plan_cache_mode = "+mode); err != nil {
				t.Fatal(err)
			}
			for name, q := range map[string]struct {
				sql  string
				args string
			}{
				"one":  {readLogOne, `('` + md5(t, conn, "7") + `', 3)`},
				"many": {readLogMany, `(ARRAY['` + md5(t, conn, "7") + `', '` + md5(t, conn, "300") + `'], ARRAY[3, 5]::bigint[])`},
			} {
				stmt++
				ps := "q" + strconv.Itoa(stmt)
				if _, err := conn.Exec(ctx, "PREPARE "+ps+" AS "+q.sql); err != nil {
					t.Fatal(err)
				}
				rows, err := conn.Query(ctx, "EXPLAIN EXECUTE "+ps+q.args)
				if err != nil {
					t.Fatal(err)
				}
				lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
				if err != nil {
					t.Fatal(err)
				}
				plan := strings.Join(lines, "\n")
				if strings.Contains(plan, "Merge Join") || strings.Contains(plan, "Hash Join") ||
					strings.Contains(plan, "Seq Scan") || !strings.Contains(plan, "kronos_changes_user_id_user_seq_key") {
					t.Errorf("analyzed %v, %s, %s: the plan does not probe the index per user:\n%s", analyze, mode, name, plan)
				}
			}
		}
	}
}

func md5(t *testing.T, conn *pgx.Conn, s string) string {
	t.Helper()
	var h string
	if err := conn.QueryRow(context.Background(), `SELECT md5($1)`, s).Scan(&h); err != nil {
		t.Fatal(err)
	}
	return h
}

// Several users read in one query: each from its own point, in user_seq
// order, and a read cut at fetchLimit is a prefix of the log in (user,
// user_seq) order, which the next round continues.
func TestReadLogMany(t *testing.T) {
	ctx := context.Background()
	url := pgtest.URL(t)
	s := openStore(t, url)
	var users []string
	for range 3 {
		sess, err := s.Login(ctx, "", "")
		if err != nil {
			t.Fatal(err)
		}
		users = append(users, sess.UserID)
	}
	// A write-all of fetchLimit+1 tasks for the first user, ten creates for
	// the others.
	many := make([]feed.Task, fetchLimit+1)
	for i := range many {
		many[i] = feed.Task{ID: int64(i), Raw: json.RawMessage(`{"id":` + strconv.Itoa(i) + `}`)}
	}
	if err := s.Write(ctx, &feed.Write{Kind: feed.WriteAll, UserID: users[0], Tasks: many}); err != nil {
		t.Fatal(err)
	}
	for _, u := range users[1:] {
		for i := range 10 {
			if err := s.Write(ctx, &feed.Write{Kind: feed.WriteCreate, UserID: u, Task: []byte(`{"id":` + strconv.Itoa(i) + `}`)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	got, err := s.readLog(ctx, users[1:], []int64{0, 4})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{users[1]: 1, users[2]: 5}
	if len(got) != 16 {
		t.Fatalf("read %d changes, want 16", len(got))
	}
	for i, c := range got {
		if i > 0 && c.UserID < got[i-1].UserID {
			t.Fatalf("change %d: users out of order", i)
		}
		if c.Seq != want[c.UserID] {
			t.Fatalf("change %d of %s: seq %d, want %d", i, c.UserID, c.Seq, want[c.UserID])
		}
		want[c.UserID]++
	}
	// Through the feed: a second node watching all three from the start.
	other := openStore(t, url)
	rec := storetest.NewRecorder()
	other.Subscribe(rec.Sink)
	for _, u := range users {
		if err := other.Watch(ctx, u, 0); err != nil {
			t.Fatal(err)
		}
	}
	for i, n := range []int{fetchLimit + 1, 10, 10} {
		for j, c := range rec.Wait(t, users[i], n) {
			if c.Seq != uint64(j+1) {
				t.Fatalf("user %d, change %d: seq %d", i, j, c.Seq)
			}
		}
	}
}

// Concurrent updates of one task, from two nodes, merge every field: the
// task each write reads, in the round trip that takes the user's lock,
// reflects every write committed before the lock was granted.
func TestConcurrentUpdatesMerge(t *testing.T) {
	ctx := context.Background()
	url := pgtest.URL(t)
	stores := [2]*Store{openStore(t, url), openStore(t, url)}
	sess, err := stores[0].Login(ctx, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := stores[0].Write(ctx, &feed.Write{Kind: feed.WriteCreate, UserID: sess.UserID, Task: []byte(`{"id":1}`)}); err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := stores[w%2].Write(ctx, &feed.Write{Kind: feed.WriteUpdate, UserID: sess.UserID, TaskID: 1,
					Task: fmt.Appendf(nil, `{"id":1,"f%d_%d":true}`, w, i)}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	snap, err := stores[1].ReadAll(ctx, sess.UserID)
	if err != nil {
		t.Fatal(err)
	}
	var task map[string]any
	if len(snap.Tasks) != 1 || json.Unmarshal(snap.Tasks[0], &task) != nil {
		t.Fatalf("tasks %s", snap.Tasks)
	}
	if len(task) != 1+writers*each {
		t.Fatalf("the task has %d fields, want %d: updates were lost", len(task), 1+writers*each)
	}
	if snap.Seq != 1+writers*each {
		t.Fatalf("seq %d, want %d", snap.Seq, 1+writers*each)
	}
}

// Refused writes and logins roll back and give their connection back to the
// pool idle; what follows them works.
func TestRefusalsRollBack(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, pgtest.URL(t)+"&pool_max_conns=2", feed.Options{Limits: feed.Limits{MaxDevicesPerUser: 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sess, err := s.Login(ctx, "", "")
	if err != nil {
		t.Fatal(err)
	}
	other, err := s.Login(ctx, "", "")
	if err != nil {
		t.Fatal(err)
	}
	for range 5 { // more than the pool holds
		for _, w := range []*feed.Write{
			{Kind: feed.WriteUpdate, UserID: "nobody", TaskID: 1, Task: []byte(`{"id":1}`)},
			{Kind: feed.WriteUpdate, UserID: sess.UserID, TaskID: 1, Task: []byte(`{"id":1}`)},
			{Kind: feed.WriteDelete, UserID: sess.UserID, TaskIndex: "x"},
			{Kind: feed.WriteCreate, UserID: sess.UserID, Task: []byte(`{"id":"x"}`)},
		} {
			if err := s.Write(ctx, w); !isRefusal(err) {
				t.Fatalf("%+v: %v", w, err)
			}
		}
		if _, err := s.Login(ctx, "nobody", ""); !feed.IsCode(err, feed.CodeUserNotFound) {
			t.Fatalf("login of an unknown user: %v", err)
		}
		if _, err := s.Login(ctx, sess.UserID, ""); !feed.IsCode(err, feed.CodeTooManyDevices) {
			t.Fatalf("login past the device limit: %v", err)
		}
		if _, err := s.Login(ctx, "", other.DeviceID); err == nil {
			t.Fatal("a new user took another user's device")
		}
	}
	if n := s.pool.Stat().AcquiredConns(); n != 0 {
		t.Fatalf("%d connections still acquired", n)
	}
	if err := s.Write(ctx, &feed.Write{Kind: feed.WriteCreate, UserID: sess.UserID, Task: []byte(`{"id":1}`), Version: []byte("1")}); err != nil {
		t.Fatal(err)
	}
	snap, err := s.ReadAll(ctx, sess.UserID)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Tasks) != 1 || snap.Seq != 1 || string(snap.Version) != "1" {
		t.Fatalf("after the refusals: %d tasks, seq %d, version %s", len(snap.Tasks), snap.Seq, snap.Version)
	}
	var users, devices int
	if err := s.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM kronos_users), (SELECT count(*) FROM kronos_devices)`).Scan(&users, &devices); err != nil {
		t.Fatal(err)
	}
	if users != 2 || devices != 2 {
		t.Fatalf("%d users and %d devices, want 2 and 2: a refused login left some", users, devices)
	}
}

func isRefusal(err error) bool {
	_, ok := err.(*feed.Error)
	return ok
}
