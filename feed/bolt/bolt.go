// Package bolt is the embedded store: one bbolt file, for a single node,
// with no other service to run.
//
// Layout: bucket "users" maps a user id to its record (version, change
// sequence and counts, in JSON: see userRecord); "devices" maps a device id to its user id; "tasks"
// holds one nested bucket per user whose keys are the task ids, ordered (see
// taskKey); "device_seen" holds one nested bucket per user mapping each of
// its devices to its last-seen time (see seenValue), which finds a user's
// devices without a scan of "devices". Files written before it existed get
// it when opened, every device unseen (the oldest).
//
// Writes go through one committer goroutine that groups the writes waiting
// at that moment into one transaction and one fsync (group commit), then
// hands their changes to the Sink in commit order. A change reaches the Sink
// only after its fsync, so a notified write survives a crash. One node sees
// every write, so the feed delivers every user's changes and Watch has
// nothing to do.
package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"

	"github.com/kronos-sync/kronos-server/feed"
)

var (
	bucketUsers   = []byte("users")
	bucketDevices = []byte("devices")
	bucketTasks   = []byte("tasks")
	bucketSeen    = []byte("device_seen")
	bucketMeta    = []byte("meta") // the readiness probe's scratch key
)

// maxCommitBatch bounds the writes grouped into one transaction. A group
// forms only from writes that queued while the commit before it ran, so it
// is large only when the store is behind; then a larger group is what
// catches up: each write dirties a page of its own (its user's tasks), and
// on the machine measured an fsync of 1,000 scattered pages took 20 µs a
// page against 36 µs for 140 (docs/benchmarks.md, "Pipelined writes").
const maxCommitBatch = 1024

// ErrClosed is returned by calls made after Close.
var ErrClosed = errors.New("bolt store: closed")

// Store is the embedded store and its feed.
type Store struct {
	db      *bbolt.DB
	limits  feed.Limits
	idle    time.Duration    // feed.Options.DeviceIdleAfter
	now     func() time.Time // feed.Options.Now
	metrics *feed.StoreMetrics

	sinkMu sync.Mutex
	sink   feed.Sink

	mu     sync.RWMutex // held shared while submitting, exclusively to close
	closed bool

	// failure is the last commit's error when it failed for a reason of
	// the store's (a full disk, a read-only file); nil once one succeeds.
	failure atomic.Pointer[error]
	seen    seenCache // the committer's
	ops     chan *op
	quit    chan struct{}
	done    chan struct{}
}

var (
	_ feed.Store       = (*Store)(nil)
	_ feed.Feed        = (*Store)(nil)
	_ feed.AsyncWriter = (*Store)(nil)
)

type op struct {
	name    string
	run     func(tx *bbolt.Tx) ([]feed.Change, error)
	err     error
	changes []feed.Change
	start   time.Time
	done    chan struct{} // closed once it has committed (submit)
	then    func(error)   // or called then instead (WriteAsync)
}

// Open opens (creating if needed) the bbolt file at path and its directory.
func Open(path string, opts feed.Options) (*Store, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("bolt store: %w: %w", feed.ErrConfig, err)
	}
	opts.SetDefaults()
	if path == "" {
		return nil, fmt.Errorf("bolt store: %w: empty path (want bolt:PATH)", feed.ErrConfig)
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("bolt store: %w", err)
		}
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("bolt store %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketUsers, bucketDevices, bucketTasks} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return indexDevices(tx)
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("bolt store %s: %w", path, err)
	}
	s := &Store{
		db:      db,
		limits:  opts.Limits,
		idle:    opts.DeviceIdleAfter,
		now:     opts.Now,
		metrics: feed.NewStoreMetrics(opts.Registerer, "bolt"),
		ops:     make(chan *op, maxCommitBatch),
		quit:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	go s.commitLoop()
	return s, nil
}

// Subscribe implements feed.Feed.
func (s *Store) Subscribe(sink feed.Sink) {
	s.sinkMu.Lock()
	s.sink = sink
	s.sinkMu.Unlock()
}

// Watch implements feed.Feed. The embedded store serves one node, which
// sees every change: there is nothing to start.
func (s *Store) Watch(ctx context.Context, _ string, _ uint64) error { return ctx.Err() }

// Unwatch implements feed.Feed.
func (s *Store) Unwatch(string) {}

// Ready implements feed.Store. After a failed commit it is not ready until
// a commit succeeds again. It tries one itself, so that a store nobody
// writes to recovers too: a probe of probeBytes, room for a large write (a
// few bytes would fit in the file's free pages on a full disk), removed
// again by a second commit.
func (s *Store) Ready(ctx context.Context) error {
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if s.failure.Load() == nil {
		return nil
	}
	probe := func(value []byte) error {
		return s.submit(ctx, &op{name: "probe", run: func(tx *bbolt.Tx) ([]feed.Change, error) {
			b, err := tx.CreateBucketIfNotExists(bucketMeta)
			if err != nil {
				return nil, err
			}
			if value == nil {
				return nil, b.Delete([]byte("probe"))
			}
			return nil, b.Put([]byte("probe"), value)
		}})
	}
	err := probe(make([]byte, probeBytes))
	if err == nil {
		err = probe(nil)
	}
	if err != nil {
		return fmt.Errorf("storage unavailable: %w", err)
	}
	return nil
}

// probeBytes is the size of the readiness probe's write.
const probeBytes = 1 << 20

// Close implements feed.Store: queued writes commit and are delivered.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.quit)
	<-s.done
	return s.db.Close()
}

// submit runs o in the committer and waits for its commit. If ctx ends
// first the write may still commit (and be notified).
func (s *Store) submit(ctx context.Context, o *op) error {
	o.done = make(chan struct{})
	if err := s.enqueue(ctx, o); err != nil {
		return err
	}
	select {
	case <-o.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.metrics.Observe(o.name, o.start, o.err)
	return o.err
}

// WriteAsync implements feed.AsyncWriter: the caller's goroutine is free as
// soon as the write is queued, and done runs on the committer once the
// write's changes have gone to the Sink.
func (s *Store) WriteAsync(ctx context.Context, w *feed.Write, done func(error)) error {
	o := s.writeOp(w)
	o.then = done
	return s.enqueue(ctx, o)
}

// enqueue hands o to the committer, waiting for room until ctx ends.
func (s *Store) enqueue(ctx context.Context, o *op) error {
	o.start = time.Now()
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	select {
	case s.ops <- o:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Store) commitLoop() {
	defer close(s.done)
	batch := make([]*op, 0, maxCommitBatch)
	for {
		select {
		case o := <-s.ops:
			batch = append(batch[:0], o)
		case <-s.quit:
			// Close holds no submitters any more: finish what is queued.
			for {
				select {
				case o := <-s.ops:
					s.commit([]*op{o})
				default:
					return
				}
			}
		}
	fill:
		for len(batch) < maxCommitBatch {
			select {
			case o := <-s.ops:
				batch = append(batch, o)
			default:
				break fill
			}
		}
		s.commit(batch)
	}
}

// commit runs a batch in one transaction. A refused op changed nothing
// (Apply checks before it mutates), so the others still commit; any other
// failure aborts the transaction and the ops are retried one by one so that
// one bad op cannot fail its neighbours.
func (s *Store) commit(batch []*op) {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		for _, o := range batch {
			o.changes, o.err = o.run(tx)
			if o.err != nil && !feed.IsRefusal(o.err) {
				return o.err
			}
		}
		return nil
	})
	if err != nil {
		s.seen.reset() // bbolt rolled back what the ops wrote
		if len(batch) > 1 {
			for _, o := range batch {
				s.commit([]*op{o})
			}
			return
		}
		batch[0].err, batch[0].changes = err, nil
		if !feed.IsRefusal(err) {
			// A failed transaction wrote nothing: bbolt rolls it back.
			s.failure.Store(&err)
		}
	} else {
		s.failure.Store(nil)
	}
	s.metrics.BatchSize.Observe(float64(len(batch)))
	var changes []feed.Change
	for _, o := range batch {
		if o.err == nil {
			changes = append(changes, o.changes...)
		}
	}
	// Outcomes first, then the changes: a writer knows how each of its
	// writes ended before any of their notifications reaches it, so that
	// it can answer them in order (feed.AsyncWriter).
	for _, o := range batch {
		if o.then == nil {
			close(o.done)
			continue
		}
		s.metrics.Observe(o.name, o.start, o.err)
		o.then(o.err)
	}
	if len(changes) > 0 {
		s.sinkMu.Lock()
		sink := s.sink
		s.sinkMu.Unlock()
		if sink != nil {
			sink(changes)
		}
	}
}

// Login implements feed.Store.
func (s *Store) Login(ctx context.Context, userID, deviceID string, connected ...string) (feed.Session, error) {
	if userID != "" && deviceID != "" {
		sess, stale, err := s.loginExisting(userID, deviceID)
		if err != nil || !stale {
			return sess, err
		}
		// Seen long enough ago to be stamped: a write, through the
		// committer, that checks again.
	}
	var sess feed.Session
	err := s.submit(ctx, &op{name: "login", run: func(tx *bbolt.Tx) ([]feed.Change, error) {
		var err error
		sess, err = s.loginCreate(tx, userID, deviceID, connected)
		return nil, err
	}})
	if err != nil {
		// sess is not ours to read: after a timeout the committer may
		// still be writing it.
		return feed.Session{}, err
	}
	return sess, nil
}

// loginExisting is the common case, a known user and device: read-only,
// unless the device's last-seen time is due a stamp (stale).
func (s *Store) loginExisting(userID, deviceID string) (sess feed.Session, stale bool, err error) {
	start := time.Now()
	err = s.db.View(func(tx *bbolt.Tx) error {
		rec, err := loadUser(tx, userID)
		if err != nil {
			return err
		}
		if owner := tx.Bucket(bucketDevices).Get([]byte(deviceID)); string(owner) != userID {
			return feed.ErrDeviceNotFound(deviceID)
		}
		stale = feed.SeenStale(lastSeen(tx, userID, deviceID), s.now(), s.idle)
		sess = feed.Session{Seq: rec.Seq, UserID: userID, DeviceID: deviceID, Version: bytes.Clone(rec.Version)}
		return nil
	})
	if err != nil || !stale {
		s.metrics.Observe("login", start, err)
	}
	return sess, stale, err
}

func (s *Store) loginCreate(tx *bbolt.Tx, userID, deviceID string, connected []string) (feed.Session, error) {
	sess := feed.Session{UserID: userID, DeviceID: deviceID}
	var rec *userRecord
	if userID == "" {
		sess.UserID, sess.NewUser = feed.NewID(), true
		rec = &userRecord{Version: json.RawMessage("-1")}
	} else {
		var err error
		if rec, err = loadUser(tx, userID); err != nil {
			return feed.Session{}, err
		}
	}
	devices := tx.Bucket(bucketDevices)
	owner := devices.Get([]byte(deviceID))
	if err := feed.ResolveDevice(&sess, deviceID, feed.DeviceOwner{Found: owner != nil, UserID: string(owner)}); err != nil {
		return feed.Session{}, err
	}
	now := s.now()
	if sess.NewDevice {
		if rec.Devices >= s.limits.MaxDevicesPerUser {
			// Checked before the first mutation: a refusal changes nothing.
			victim, err := retireCandidate(tx, sess.UserID, connected, now.Add(-s.idle))
			if err != nil {
				return feed.Session{}, err
			}
			if victim == nil {
				return feed.Session{}, feed.ErrTooManyDevices(s.limits.MaxDevicesPerUser)
			}
			if err := s.seen.removeDevice(tx, sess.UserID, victim); err != nil {
				return feed.Session{}, err
			}
			rec.Devices--
		}
		if err := s.seen.putDevice(tx, sess.UserID, sess.DeviceID, now); err != nil {
			return feed.Session{}, err
		}
		rec.Devices++
	} else if err := s.seen.stamp(tx, sess.UserID, sess.DeviceID, now); err != nil {
		return feed.Session{}, err
	}
	if err := saveUser(tx, sess.UserID, rec); err != nil {
		return feed.Session{}, err
	}
	sess.Version, sess.Seq = rec.Version, rec.Seq
	return sess, nil
}

func loadUser(tx *bbolt.Tx, userID string) (*userRecord, error) {
	return loadUserKey(tx, []byte(userID))
}

func loadUserKey(tx *bbolt.Tx, userID []byte) (*userRecord, error) {
	v := tx.Bucket(bucketUsers).Get(userID)
	if v == nil {
		return nil, feed.ErrUserNotFound()
	}
	return decodeUser(v)
}

func saveUser(tx *bbolt.Tx, userID string, rec *userRecord) error {
	return saveUserKey(tx, []byte(userID), rec)
}

func saveUserKey(tx *bbolt.Tx, userID []byte, rec *userRecord) error {
	v, err := encodeUser(rec)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketUsers).Put(userID, v)
}

// ReadAll implements feed.Store.
func (s *Store) ReadAll(_ context.Context, userID string) (feed.Snapshot, error) {
	start := time.Now()
	var snap feed.Snapshot
	err := s.db.View(func(tx *bbolt.Tx) error {
		rec, err := loadUser(tx, userID)
		if err != nil {
			return err
		}
		snap.Version, snap.Seq = bytes.Clone(rec.Version), rec.Seq
		snap.Tasks = make([]json.RawMessage, 0, rec.Tasks)
		if b := tx.Bucket(bucketTasks).Bucket([]byte(userID)); b != nil {
			return b.ForEach(func(_, v []byte) error {
				snap.Tasks = append(snap.Tasks, bytes.Clone(v))
				return nil
			})
		}
		return nil
	})
	s.metrics.Observe("read-all", start, err)
	return snap, err
}

// Write implements feed.Store.
func (s *Store) Write(ctx context.Context, w *feed.Write) error {
	return s.submit(ctx, s.writeOp(w))
}

// writeOp is the committer's op for w.
func (s *Store) writeOp(w *feed.Write) *op {
	return &op{name: w.Kind.String(), run: func(tx *bbolt.Tx) ([]feed.Change, error) {
		w.Seq = 0 // a run that fails after a retry leaves no number behind
		uid := []byte(w.UserID)
		rec, err := loadUserKey(tx, uid)
		if err != nil {
			return nil, err
		}
		tasks, err := bucketOf(tx.Bucket(bucketTasks), uid)
		if err != nil {
			return nil, err
		}
		changes, err := feed.Apply(&userTx{rec: rec, tasks: tasks}, w, s.limits)
		if err != nil {
			return nil, err
		}
		for i := range changes {
			rec.Seq++
			changes[i].Seq = rec.Seq
		}
		if len(changes) > 0 {
			w.Seq = rec.Seq
		}
		if w.DeviceID != "" {
			if now := s.now(); feed.SeenStale(s.seen.lastSeen(tx, w.UserID, w.DeviceID), now, s.idle) {
				if err := s.seen.stamp(tx, w.UserID, w.DeviceID, now); err != nil {
					return nil, err
				}
			}
		}
		return changes, saveUserKey(tx, uid, rec)
	}}
}

// TouchDevices implements feed.Store, in one transaction.
func (s *Store) TouchDevices(ctx context.Context, deviceIDs []string) error {
	if len(deviceIDs) == 0 {
		return nil
	}
	return s.submit(ctx, &op{name: "touch", run: func(tx *bbolt.Tx) ([]feed.Change, error) {
		now := s.now()
		devices := tx.Bucket(bucketDevices)
		for _, d := range deviceIDs {
			if owner := devices.Get([]byte(d)); owner != nil {
				if err := s.seen.stamp(tx, string(owner), d, now); err != nil {
					return nil, err
				}
			}
		}
		return nil, nil
	}})
}

// seenValue encodes a last-seen time: 8 bytes, Unix nanoseconds, big
// endian. Any other length (the empty value of a device indexed from a
// file that predates last-seen times) decodes as never seen.
func seenValue(t time.Time) []byte {
	return binary.BigEndian.AppendUint64(nil, uint64(t.UnixNano()))
}

func decodeSeen(v []byte) time.Time {
	if len(v) != 8 {
		return time.Time{}
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(v)))
}

// lastSeen reads a device's last-seen time (zero: never).
func lastSeen(tx *bbolt.Tx, userID, deviceID string) time.Time {
	if b := tx.Bucket(bucketSeen).Bucket([]byte(userID)); b != nil {
		return decodeSeen(b.Get([]byte(deviceID)))
	}
	return time.Time{}
}

// indexDevices builds the device_seen bucket of a file that lacks it.
func indexDevices(tx *bbolt.Tx) error {
	if tx.Bucket(bucketSeen) != nil {
		return nil
	}
	seen, err := tx.CreateBucket(bucketSeen)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketDevices).ForEach(func(device, owner []byte) error {
		b, err := seen.CreateBucketIfNotExists(owner)
		if err == nil {
			err = b.Put(device, []byte{})
		}
		return err
	})
}

// putDevice registers a device of the user, seen at seen. Ops call it
// through seenCache.putDevice, which keeps the committer's cache right.
func putDevice(tx *bbolt.Tx, userID, deviceID string, seen time.Time) error {
	if err := tx.Bucket(bucketDevices).Put([]byte(deviceID), []byte(userID)); err != nil {
		return err
	}
	return stampSeen(tx, userID, deviceID, seen)
}

// stampSeen sets a device's last-seen time; the device must be the user's.
// Ops call it through seenCache.stamp.
func stampSeen(tx *bbolt.Tx, userID, deviceID string, seen time.Time) error {
	b, err := bucketOf(tx.Bucket(bucketSeen), []byte(userID))
	if err != nil {
		return err
	}
	return b.Put([]byte(deviceID), stampValue(seen))
}

// stampValue is what stampSeen stores: seenValue, or empty for never.
func stampValue(seen time.Time) []byte {
	if seen.IsZero() {
		return []byte{}
	}
	return seenValue(seen)
}

// removeDevice unregisters a device of the user. Ops call it through
// seenCache.removeDevice.
func removeDevice(tx *bbolt.Tx, userID string, deviceID []byte) error {
	if err := tx.Bucket(bucketDevices).Delete(deviceID); err != nil {
		return err
	}
	if b := tx.Bucket(bucketSeen).Bucket([]byte(userID)); b != nil {
		return b.Delete(deviceID)
	}
	return nil
}

// bucketOf is parent's nested bucket name, created if missing: the lookup
// first, since it almost always exists (CreateBucketIfNotExists copies
// the name every time).
func bucketOf(parent *bbolt.Bucket, name []byte) (*bbolt.Bucket, error) {
	if b := parent.Bucket(name); b != nil {
		return b, nil
	}
	return parent.CreateBucketIfNotExists(name)
}

// retireCandidate picks the user's least recently seen device that is not
// connected here and was last seen before cutoff (ties: the smallest id);
// nil if there is none.
func retireCandidate(tx *bbolt.Tx, userID string, connected []string, cutoff time.Time) ([]byte, error) {
	b := tx.Bucket(bucketSeen).Bucket([]byte(userID))
	if b == nil {
		return nil, nil
	}
	var victim []byte
	var oldest time.Time
	err := b.ForEach(func(device, v []byte) error {
		seen := decodeSeen(v)
		if !seen.Before(cutoff) || slices.Contains(connected, string(device)) {
			return nil
		}
		if victim == nil || seen.Before(oldest) {
			victim, oldest = bytes.Clone(device), seen
		}
		return nil
	})
	return victim, err
}

// taskKey orders signed ids: big-endian with the sign bit flipped.
func taskKey(id int64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], uint64(id)^(1<<63))
	return k[:]
}

func taskIDFromKey(k []byte) int64 { return int64(binary.BigEndian.Uint64(k) ^ (1 << 63)) }

// userTx is one user's data inside a bbolt write transaction. Values it
// returns are valid until the transaction ends.
type userTx struct {
	rec   *userRecord
	tasks *bbolt.Bucket
	// Whether task known exists (if knownOK), from the last Get, Put or
	// Delete: Apply reads a task before it puts or deletes it, and the
	// count needs to know whether it existed, which then takes no second
	// lookup. Every change of the user's tasks goes through u.
	known       int64
	knownExists bool
	knownOK     bool
}

func (u *userTx) remember(id int64, exists bool) {
	u.known, u.knownExists, u.knownOK = id, exists, true
}

// exists reports whether the task is stored.
func (u *userTx) exists(id int64, k []byte) bool {
	if u.knownOK && u.known == id {
		return u.knownExists
	}
	return u.tasks.Get(k) != nil
}

func (u *userTx) Version() json.RawMessage { return u.rec.Version }
func (u *userTx) TaskCount() int           { return u.rec.Tasks }

func (u *userTx) Get(id int64) (json.RawMessage, bool, error) {
	v := u.tasks.Get(taskKey(id))
	u.remember(id, v != nil)
	return v, v != nil, nil
}

func (u *userTx) All() ([]feed.Task, error) {
	all := make([]feed.Task, 0, u.rec.Tasks)
	err := u.tasks.ForEach(func(k, v []byte) error {
		all = append(all, feed.Task{ID: taskIDFromKey(k), Raw: v})
		return nil
	})
	return all, err
}

func (u *userTx) Put(id int64, raw json.RawMessage) error {
	k := taskKey(id)
	if !u.exists(id, k) {
		u.rec.Tasks++
	}
	u.knownOK = false // until the put succeeds
	if err := u.tasks.Put(k, raw); err != nil {
		return err
	}
	u.remember(id, true)
	return nil
}

func (u *userTx) Delete(id int64) error {
	k := taskKey(id)
	if !u.exists(id, k) {
		return nil
	}
	u.rec.Tasks--
	u.knownOK = false
	if err := u.tasks.Delete(k); err != nil {
		return err
	}
	u.remember(id, false)
	return nil
}

func (u *userTx) SetVersion(v json.RawMessage) error {
	u.rec.Version = v
	return nil
}
