package bolt

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/kronos-sync/kronos-server/feed"
)

// The per-write path of the committer at the shape of the 10,000 writes/s
// load: 1,900 users of 10 devices and 20 small tasks each, every write an
// update of one task of one user from one of its devices, with a version.
const (
	benchUsers   = 1900
	benchDevices = 10
	benchTasks   = 20
	benchGroup   = 20 // writes per commit, each of a distinct user
)

type benchFixture struct {
	s       *Store
	users   []string
	devices [][]string
	n       int // writes made, for the next version and task
}

func newBenchFixture(b *testing.B) *benchFixture {
	b.Helper()
	s, err := Open(filepath.Join(b.TempDir(), "kronos.db"), feed.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	s.Subscribe(func([]feed.Change) {})
	f := &benchFixture{s: s}
	users := make([]feed.UserData, benchUsers)
	for i := range users {
		u := &users[i]
		u.ID = fmt.Sprintf("user-%06d-%s", i, "0123456789abcdef")
		u.Version = []byte(`1`)
		for d := range benchDevices {
			u.Devices = append(u.Devices, fmt.Sprintf("device-%06d-%02d-%s", i, d, "0123456789ab"))
		}
		for t := range benchTasks {
			id := int64(1000 + t)
			u.Tasks = append(u.Tasks, feed.Task{ID: id, Raw: []byte(`{"id":` + strconv.FormatInt(id, 10) +
				`,"desc":"water the plants on the balcony","start":1700000000,"status":"pending","tags":["home"]}`)})
		}
		f.users = append(f.users, u.ID)
		f.devices = append(f.devices, u.Devices)
	}
	if err := s.LoadUsers(b.Context(), users); err != nil {
		b.Fatal(err)
	}
	// Every device seen just now, as on a server whose devices are
	// connected: writes do not stamp them again within the minute.
	var devices []string
	for _, ds := range f.devices {
		devices = append(devices, ds...)
	}
	if err := s.TouchDevices(b.Context(), devices); err != nil {
		b.Fatal(err)
	}
	return f
}

// next is the next write: users in turn, so that a group's are distinct.
func (f *benchFixture) next() *feed.Write {
	f.n++
	u := f.n % benchUsers
	return &feed.Write{
		Kind:     feed.WriteUpdate,
		UserID:   f.users[u],
		DeviceID: f.devices[u][f.n%benchDevices],
		TaskID:   int64(1000 + f.n%benchTasks),
		Task:     []byte(`{"status":"done","modified":` + strconv.Itoa(1700000000+f.n) + `}`),
		Version:  []byte(strconv.Itoa(f.n + 1)),
	}
}

func (f *benchFixture) group() []*op { return f.groupOf(benchGroup) }

func (f *benchFixture) groupOf(writes int) []*op {
	batch := make([]*op, writes)
	for i := range batch {
		batch[i] = f.s.writeOp(f.next())
		batch[i].done = make(chan struct{})
	}
	return batch
}

func checkBatch(b *testing.B, batch []*op) {
	for _, o := range batch {
		if o.err != nil {
			b.Fatal(o.err)
		}
	}
}

// BenchmarkWriteGroup commits groups of benchGroup updates, each group one
// transaction and one fsync, as the committer does: one op is one group.
func BenchmarkWriteGroup(b *testing.B) {
	f := newBenchFixture(b)
	b.ReportAllocs()
	defer reportCPU(b)()
	pages := pagesWritten(f.s.db)
	for b.Loop() {
		batch := f.group()
		f.s.commit(batch)
		checkBatch(b, batch)
	}
	b.ReportMetric(float64(pagesWritten(f.s.db)-pages)/float64(b.N), "pages/op")
}

// BenchmarkCommitGroupSize commits groups of several sizes, each of
// distinct users, and reports the cost per write: a group is as large as
// the writes that queued while the commit before it ran, up to
// maxCommitBatch. Each write dirties about a page of its own (its user's
// tasks), so the pages per write stay; the fsync's time per page falls as
// more pages share it.
func BenchmarkCommitGroupSize(b *testing.B) {
	for _, writes := range []int{20, 140, maxCommitBatch} {
		b.Run(fmt.Sprintf("writes=%d", writes), func(b *testing.B) {
			f := newBenchFixture(b)
			pages := pagesWritten(f.s.db)
			cpu := cpuTime()
			start := time.Now()
			for b.Loop() {
				batch := f.groupOf(writes)
				f.s.commit(batch)
				checkBatch(b, batch)
			}
			n := float64(b.N * writes)
			b.ReportMetric(float64(time.Since(start).Nanoseconds())/n, "ns/write")
			b.ReportMetric(float64(cpuTime()-cpu)/n, "cpu-ns/write")
			b.ReportMetric(float64(pagesWritten(f.s.db)-pages)/n, "pages/write")
		})
	}
}

// BenchmarkWriteTx runs a group's writes in one write transaction that is
// rolled back: the CPU of the writes themselves, without the commit's
// spill, write and fsync. One op is one group.
func BenchmarkWriteTx(b *testing.B) {
	f := newBenchFixture(b)
	b.ReportAllocs()
	defer reportCPU(b)()
	for b.Loop() {
		batch := f.group()
		err := f.s.db.Update(func(tx *bbolt.Tx) error {
			for _, o := range batch {
				o.changes, o.err = o.run(tx)
			}
			return errRollback
		})
		if err != errRollback {
			b.Fatal(err)
		}
		checkBatch(b, batch)
	}
}

var errRollback = errors.New("rollback")

// reportCPU reports the process's CPU time (user and system, every
// thread: the GC's too) per op, which, unlike ns/op, neither counts the
// wait for fsync nor depends much on what else the machine runs. Call it
// after the set-up, and its result at the end.
func reportCPU(b *testing.B) func() {
	start := cpuTime()
	return func() {
		b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func pagesWritten(db *bbolt.DB) int64 {
	st := db.Stats()
	return st.TxStats.GetWrite()
}
