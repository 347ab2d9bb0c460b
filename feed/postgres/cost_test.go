package postgres

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/internal/pgtest"
)

// TestPostgresCost measures what PostgreSQL spends, in CPU, per login and
// per write of the scale-out's shape: three stores (nodes) on one schema,
// users of ten devices spread over the three, every write an update of the
// user's one task that all three nodes read back from the change log. It
// reads the CPU of the server's processes from /proc, so it needs the
// PostgreSQL on this host, and runs only when asked:
//
//	KRONOS_PG_COST=1 go test -run TestPostgresCost -v ./feed/postgres
//
// KRONOS_PG_COST_USERS (default 300), KRONOS_PG_COST_WRITES (default 3000),
// KRONOS_PG_COST_RATE (writes/s, default 300), KRONOS_PG_COST_INFLIGHT
// (writes at once, default 16) and KRONOS_PG_COST_LOG (other users' rows in
// the change log before the ramp, default 50,000) size it.
func TestPostgresCost(t *testing.T) {
	if os.Getenv("KRONOS_PG_COST") == "" {
		t.Skip("set KRONOS_PG_COST=1 to measure PostgreSQL's CPU per login and per write")
	}
	users := envInt(t, "KRONOS_PG_COST_USERS", 300)
	writes := envInt(t, "KRONOS_PG_COST_WRITES", 3000)
	rate := envInt(t, "KRONOS_PG_COST_RATE", 300)
	inflight := envInt(t, "KRONOS_PG_COST_INFLIGHT", 16)
	logRows := envInt(t, "KRONOS_PG_COST_LOG", 50000)
	const devices, nodes = 10, 3
	ctx := context.Background()
	url := pgtest.URL(t) + "&pool_max_conns=8"

	var got [nodes]atomic.Int64
	stores := make([]*Store, nodes)
	for i := range stores {
		s, err := Open(ctx, url, feed.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		s.Subscribe(func(cs []feed.Change) { got[i].Add(int64(len(cs))) })
		stores[i] = s
	}
	waitFor := func(want func(node int) int64) {
		deadline := time.Now().Add(60 * time.Second)
		for i := range stores {
			for got[i].Load() < want(i) {
				if time.Now().After(deadline) {
					t.Fatalf("node %d: %d of %d changes", i, got[i].Load(), want(i))
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
	}

	// The change log as a run of some length leaves it: other users'
	// changes, spread over the key space as their ids are.
	if _, err := stores[0].pool.Exec(ctx, `INSERT INTO kronos_changes (user_id, user_seq, kind, task_id, task, device_id, version)
		SELECT md5((i % 5000)::text), i / 5000 + 1, 2, 1, '{"id":1,"sent":1764000000000000000}', 'other', '1'
		FROM generate_series(0, $1 - 1) AS i`, logRows); err != nil {
		t.Fatal(err)
	}

	// The ramp: each user's first device creates the user and its task,
	// the nine others register on the nodes in turn; each login watches.
	type user struct {
		id      string
		devices []string
	}
	us := make([]user, users)
	cpu0 := pgCPU(t)
	start := time.Now()
	var wg sync.WaitGroup
	var logins atomic.Int64
	errs := make(chan error, users)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for u := w; u < users; u += 8 {
				if err := func() error {
					for d := range devices {
						s := stores[(u+d)%nodes]
						sess, err := s.Login(ctx, us[u].id, "")
						if err != nil {
							return err
						}
						logins.Add(1)
						us[u].id = sess.UserID
						us[u].devices = append(us[u].devices, sess.DeviceID)
						if err := s.Watch(ctx, sess.UserID, sess.Seq); err != nil {
							return err
						}
						if d == 0 {
							if err := s.Write(ctx, &feed.Write{Kind: feed.WriteCreate, UserID: sess.UserID, DeviceID: sess.DeviceID,
								Task: []byte(`{"id":1,"desc":"bench"}`), Version: []byte("0")}); err != nil {
								return err
							}
						}
					}
					return nil
				}(); err != nil {
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
	// A user's create reaches the node it was made on; the others watch
	// from after it.
	waitFor(func(node int) int64 { return int64((users - node + nodes - 1) / nodes) })
	rampWall := time.Since(start)
	cpu1 := pgCPU(t)
	reads1 := changeLogReads(t, stores[0])

	// The load: updates at a steady rate, each from a random device of a
	// random user through that device's node, until every node has read
	// every change.
	for i := range got {
		got[i].Store(0)
	}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	sem := make(chan struct{}, inflight)
	var failed atomic.Value
	start = time.Now()
	for n := range writes {
		<-tick.C
		u := rand.IntN(users)
		d := rand.IntN(devices)
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			err := stores[(u+d)%nodes].Write(ctx, &feed.Write{Kind: feed.WriteUpdate, UserID: us[u].id, DeviceID: us[u].devices[d],
				TaskID: 1, Task: fmt.Appendf(nil, `{"id":1,"sent":%d}`, time.Now().UnixNano()), Version: []byte(strconv.Itoa(n + 1))})
			if err != nil {
				failed.Store(err)
			}
		}()
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}
	waitFor(func(int) int64 { return int64(writes) })
	loadWall := time.Since(start)
	cpu2 := pgCPU(t)
	reads2 := changeLogReads(t, stores[0])

	ramp, load := cpu1.sub(cpu0), cpu2.sub(cpu1)
	t.Logf("ramp: %d logins (%d users × %d devices, %d creates) in %.1f s: PostgreSQL %s, %.0f µs per login",
		logins.Load(), users, devices, users, rampWall.Seconds(), ramp, ramp.total.Seconds()*1e6/float64(logins.Load()))
	t.Logf("load: %d writes at %d/s in %.1f s, each read back by %d nodes: PostgreSQL %s, %.0f µs per write (%.2f cores)",
		writes, rate, loadWall.Seconds(), nodes, load, load.total.Seconds()*1e6/float64(writes), load.total.Seconds()/loadWall.Seconds())
	t.Logf("load: the change log's (user_id, user_seq) index: %d scans, %d entries read (%.0f a write)",
		reads2[0]-reads1[0], reads2[1]-reads1[1], float64(reads2[1]-reads1[1])/float64(writes))
	t.Logf("load by process: %s", byKind(t, stores[0], load))
	for i, s := range stores {
		t.Logf("node %d: %s", i, s.planCounts(t))
	}
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

// cpuUse is the CPU time of the PostgreSQL server's processes (those named
// "postgres", as scaleout.sh counts them), in all and by process.
type cpuUse struct {
	total time.Duration
	by    map[int]time.Duration // pid → its CPU
}

func (c cpuUse) sub(o cpuUse) cpuUse {
	d := cpuUse{total: c.total - o.total, by: map[int]time.Duration{}}
	for pid, v := range c.by {
		d.by[pid] = v - o.by[pid]
	}
	return d
}

func (c cpuUse) String() string {
	return fmt.Sprintf("%.3f s of CPU", c.total.Seconds())
}

// pgCPU reads every postgres process's run time (schedstat, in ns; a
// process that exited meanwhile is not counted, as in scaleout.sh).
func pgCPU(t *testing.T) cpuUse {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	c := cpuUse{by: map[int]time.Duration{}}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile("/proc/" + e.Name() + "/comm")
		if err != nil || strings.TrimSpace(string(comm)) != "postgres" {
			continue
		}
		ss, err := os.ReadFile("/proc/" + e.Name() + "/schedstat")
		if err != nil {
			continue
		}
		f := strings.Fields(string(ss))
		if len(f) == 0 {
			continue
		}
		ns, _ := strconv.ParseInt(f[0], 10, 64)
		c.by[pid] = time.Duration(ns)
		c.total += time.Duration(ns)
	}
	if len(c.by) == 0 {
		t.Skip("no postgres process on this host: PostgreSQL's CPU cannot be read")
	}
	return c
}

// planCounts reports, over the pool's idle connections, how many times
// each prepared statement ran with a generic and a custom plan.
func (s *Store) planCounts(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	conns, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conns.Release()
	rows, err := conns.Query(ctx, `SELECT regexp_replace(left(statement, 60), '\s+', ' ', 'g'), generic_plans, custom_plans
		FROM pg_prepared_statements WHERE generic_plans + custom_plans > 0 ORDER BY statement`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var stmt string
		var generic, custom int64
		if err := rows.Scan(&stmt, &generic, &custom); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "\n\t%q generic %d custom %d", stmt, generic, custom)
	}
	return b.String()
}

// changeLogReads returns the scans of the change log's (user_id, user_seq)
// index and the entries they read, as the statistics have them (flushed by
// the backends within a second).
func changeLogReads(t *testing.T, s *Store) [2]int64 {
	t.Helper()
	time.Sleep(1500 * time.Millisecond)
	var r [2]int64
	if err := s.pool.QueryRow(context.Background(), `SELECT idx_scan, idx_tup_read FROM pg_stat_user_indexes
		WHERE schemaname = current_schema() AND indexrelname = 'kronos_changes_user_id_user_seq_key'`).Scan(&r[0], &r[1]); err != nil {
		t.Fatal(err)
	}
	return r
}

// byKind splits c by the kind of PostgreSQL process: backend_type, or the
// application name of a client backend.
func byKind(t *testing.T, s *Store, c cpuUse) string {
	t.Helper()
	rows, err := s.pool.Query(context.Background(), `SELECT pid, CASE WHEN backend_type = 'client backend'
		THEN coalesce(nullif(application_name, ''), 'client') ELSE backend_type END FROM pg_stat_activity`)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[int]string{}
	for rows.Next() {
		var pid int
		var kind string
		if err := rows.Scan(&pid, &kind); err != nil {
			t.Fatal(err)
		}
		kinds[pid] = kind
	}
	rows.Close()
	sum := map[string]time.Duration{}
	for pid, d := range c.by {
		k := kinds[pid]
		if k == "" {
			k = "other"
		}
		sum[k] += d
	}
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(sum)) {
		fmt.Fprintf(&b, " %s %.3f s;", k, sum[k].Seconds())
	}
	return b.String()
}
