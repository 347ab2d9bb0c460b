package feed

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.etcd.io/bbolt"
)

// The embedded store: one bbolt file, for a single node.
//
// Layout: bucket "users" maps a user id to its record (version and counts);
// "devices" maps a device id to its user id; "tasks" holds one nested
// bucket per user whose keys are the task ids, ordered (see taskKey).
//
// Writes go through one committer goroutine that groups the writes waiting
// at that moment into one transaction and one fsync (group commit), then
// publishes their changes in commit order. A change is published only after
// its fsync, so a notified write survives a crash.
var (
	bucketUsers   = []byte("users")
	bucketDevices = []byte("devices")
	bucketTasks   = []byte("tasks")
)

// maxCommitBatch bounds the writes grouped into one transaction.
const maxCommitBatch = 256

type boltStore struct {
	db      *bbolt.DB
	limits  Limits
	pub     *publisher
	metrics *storeMetrics

	mu     sync.RWMutex // held shared while submitting, exclusively to close
	closed bool
	ops    chan *boltOp
	quit   chan struct{}
	done   chan struct{}
}

type boltOp struct {
	name    string
	run     func(tx *bbolt.Tx) ([]Change, error)
	err     error
	changes []Change
	done    chan struct{}
}

type userRecord struct {
	Version json.RawMessage `json:"version"`
	Tasks   int             `json:"tasks"`
	Devices int             `json:"devices"`
}

// OpenBolt opens (creating if needed) the bbolt file at path.
func OpenBolt(path string, opts Options) (Store, error) {
	opts.Limits.SetDefaults()
	if path == "" {
		return nil, errors.New("bolt store: empty path (want bolt:PATH)")
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
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("bolt store %s: %w", path, err)
	}
	s := &boltStore{
		db:      db,
		limits:  opts.Limits,
		pub:     newPublisher(),
		metrics: newStoreMetrics(opts.Registerer, "bolt"),
		ops:     make(chan *boltOp, maxCommitBatch),
		quit:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	go s.commitLoop()
	return s, nil
}

var errClosed = errors.New("store is closed")

func (s *boltStore) Subscribe(sink Sink) { s.pub.subscribe(sink) }

// The embedded store serves one node, which sees every change.
func (s *boltStore) Watch(string)   {}
func (s *boltStore) Unwatch(string) {}

func (s *boltStore) Ready(context.Context) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return errClosed
	}
	return nil
}

func (s *boltStore) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.quit)
	<-s.done
	s.pub.close()
	return s.db.Close()
}

// submit runs op in the committer and waits for its commit. If ctx ends
// first the write may still commit (and be notified).
func (s *boltStore) submit(ctx context.Context, op *boltOp) error {
	op.done = make(chan struct{})
	start := time.Now()
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return errClosed
	}
	select {
	case s.ops <- op:
	case <-ctx.Done():
		s.mu.RUnlock()
		return ctx.Err()
	}
	s.mu.RUnlock()
	select {
	case <-op.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.metrics.observe(op.name, start, op.err)
	return op.err
}

func (s *boltStore) commitLoop() {
	defer close(s.done)
	batch := make([]*boltOp, 0, maxCommitBatch)
	for {
		select {
		case op := <-s.ops:
			batch = append(batch[:0], op)
		case <-s.quit:
			// Close holds no submitters any more: finish what is queued.
			for {
				select {
				case op := <-s.ops:
					s.commit([]*boltOp{op})
				default:
					return
				}
			}
		}
	fill:
		for len(batch) < maxCommitBatch {
			select {
			case op := <-s.ops:
				batch = append(batch, op)
			default:
				break fill
			}
		}
		s.commit(batch)
	}
}

// commit runs a batch in one transaction. A refused op (*Error) changed
// nothing (apply checks before it mutates), so the others still commit; any
// other failure aborts the transaction and the ops are retried one by one so
// that one bad op cannot fail its neighbours.
func (s *boltStore) commit(batch []*boltOp) {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		for _, op := range batch {
			op.changes, op.err = op.run(tx)
			if op.err != nil && !isRefusal(op.err) {
				return op.err
			}
		}
		return nil
	})
	if err != nil {
		if len(batch) > 1 {
			for _, op := range batch {
				s.commit([]*boltOp{op})
			}
			return
		}
		batch[0].err, batch[0].changes = err, nil
	}
	s.metrics.batchSize.Observe(float64(len(batch)))
	var changes []Change
	for _, op := range batch {
		if op.err == nil {
			changes = append(changes, op.changes...)
		}
	}
	s.pub.publish(changes)
	for _, op := range batch {
		close(op.done)
	}
}

func (s *boltStore) Login(ctx context.Context, userID, deviceID string) (Session, error) {
	if userID != "" && deviceID != "" {
		return s.loginExisting(userID, deviceID)
	}
	var sess Session
	err := s.submit(ctx, &boltOp{name: "login", run: func(tx *bbolt.Tx) ([]Change, error) {
		var err error
		sess, err = s.loginCreate(tx, userID, deviceID)
		return nil, err
	}})
	return sess, err
}

// loginExisting is the common case, a known user and device: read-only.
func (s *boltStore) loginExisting(userID, deviceID string) (Session, error) {
	start := time.Now()
	var sess Session
	err := s.db.View(func(tx *bbolt.Tx) error {
		rec, err := loadUser(tx, userID)
		if err != nil {
			return err
		}
		if owner := tx.Bucket(bucketDevices).Get([]byte(deviceID)); string(owner) != userID {
			return errDeviceNotFound(deviceID)
		}
		sess = Session{Seq: uint64(tx.ID()), UserID: userID, DeviceID: deviceID, Version: bytes.Clone(rec.Version)}
		return nil
	})
	s.metrics.observe("login", start, err)
	return sess, err
}

func (s *boltStore) loginCreate(tx *bbolt.Tx, userID, deviceID string) (Session, error) {
	sess := Session{Seq: uint64(tx.ID()), UserID: userID, DeviceID: deviceID}
	var rec *userRecord
	if userID == "" {
		sess.UserID, sess.NewUser = newID(), true
		rec = &userRecord{Version: json.RawMessage("-1")}
	} else {
		var err error
		if rec, err = loadUser(tx, userID); err != nil {
			return Session{}, err
		}
	}
	devices := tx.Bucket(bucketDevices)
	owner := devices.Get([]byte(deviceID))
	if err := resolveDevice(&sess, deviceID, deviceOwner{owner != nil, string(owner)}); err != nil {
		return Session{}, err
	}
	if sess.NewDevice {
		if rec.Devices >= s.limits.MaxDevicesPerUser {
			return Session{}, errTooManyDevices(s.limits.MaxDevicesPerUser)
		}
		if err := devices.Put([]byte(sess.DeviceID), []byte(sess.UserID)); err != nil {
			return Session{}, err
		}
		rec.Devices++
	}
	if err := saveUser(tx, sess.UserID, rec); err != nil {
		return Session{}, err
	}
	sess.Version = rec.Version
	return sess, nil
}

func loadUser(tx *bbolt.Tx, userID string) (*userRecord, error) {
	v := tx.Bucket(bucketUsers).Get([]byte(userID))
	if v == nil {
		return nil, errUserNotFound()
	}
	rec := new(userRecord)
	if err := json.Unmarshal(v, rec); err != nil {
		return nil, fmt.Errorf("bolt store: corrupt user record: %w", err)
	}
	return rec, nil
}

func saveUser(tx *bbolt.Tx, userID string, rec *userRecord) error {
	v, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketUsers).Put([]byte(userID), v)
}

func (s *boltStore) ReadAll(_ context.Context, userID string) (Snapshot, error) {
	start := time.Now()
	var snap Snapshot
	err := s.db.View(func(tx *bbolt.Tx) error {
		rec, err := loadUser(tx, userID)
		if err != nil {
			return err
		}
		snap.Version = bytes.Clone(rec.Version)
		snap.Tasks = make([]json.RawMessage, 0, rec.Tasks)
		if b := tx.Bucket(bucketTasks).Bucket([]byte(userID)); b != nil {
			return b.ForEach(func(_, v []byte) error {
				snap.Tasks = append(snap.Tasks, bytes.Clone(v))
				return nil
			})
		}
		return nil
	})
	s.metrics.observe("read-all", start, err)
	return snap, err
}

func (s *boltStore) Write(ctx context.Context, w *Write) error {
	return s.submit(ctx, &boltOp{name: w.Kind.String(), run: func(tx *bbolt.Tx) ([]Change, error) {
		rec, err := loadUser(tx, w.UserID)
		if err != nil {
			return nil, err
		}
		tasks, err := tx.Bucket(bucketTasks).CreateBucketIfNotExists([]byte(w.UserID))
		if err != nil {
			return nil, err
		}
		utx := &boltUserTx{rec: rec, tasks: tasks}
		changes, err := apply(utx, w, s.limits)
		if err != nil {
			return nil, err
		}
		for i := range changes {
			changes[i].Seq = uint64(tx.ID())
		}
		return changes, saveUser(tx, w.UserID, rec)
	}})
}

// taskKey orders signed ids: big-endian with the sign bit flipped.
func taskKey(id int64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], uint64(id)^(1<<63))
	return k[:]
}

func taskIDFromKey(k []byte) int64 { return int64(binary.BigEndian.Uint64(k) ^ (1 << 63)) }

// boltUserTx is one user's data inside a bbolt write transaction. Values it
// returns are valid until the transaction ends.
type boltUserTx struct {
	rec   *userRecord
	tasks *bbolt.Bucket
}

func (u *boltUserTx) Version() json.RawMessage { return u.rec.Version }
func (u *boltUserTx) TaskCount() int           { return u.rec.Tasks }

func (u *boltUserTx) Get(id int64) (json.RawMessage, bool, error) {
	v := u.tasks.Get(taskKey(id))
	return v, v != nil, nil
}

func (u *boltUserTx) All() ([]Task, error) {
	all := make([]Task, 0, u.rec.Tasks)
	err := u.tasks.ForEach(func(k, v []byte) error {
		all = append(all, Task{ID: taskIDFromKey(k), Raw: v})
		return nil
	})
	return all, err
}

func (u *boltUserTx) Put(id int64, raw json.RawMessage) error {
	k := taskKey(id)
	if u.tasks.Get(k) == nil {
		u.rec.Tasks++
	}
	return u.tasks.Put(k, raw)
}

func (u *boltUserTx) Delete(id int64) error {
	k := taskKey(id)
	if u.tasks.Get(k) == nil {
		return nil
	}
	u.rec.Tasks--
	return u.tasks.Delete(k)
}

func (u *boltUserTx) SetVersion(v json.RawMessage) error {
	u.rec.Version = v
	return nil
}
