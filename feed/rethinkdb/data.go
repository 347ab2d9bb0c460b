package rethinkdb

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	r "gopkg.in/rethinkdb/rethinkdb-go.v6"

	"github.com/kronos-sync/kronos-server/feed"
)

// userDoc is a user. W, Seq, Version and Tasks move together, in one
// atomic update, when a record is applied: they describe the user as of
// record W.
type userDoc struct {
	ID      string `rethinkdb:"id"`
	Version string `rethinkdb:"version"` // the JSON text the client sent, verbatim
	W       uint64 `rethinkdb:"w"`       // the last record applied
	Seq     uint64 `rethinkdb:"seq"`     // the last change number applied
	Tasks   int    `rethinkdb:"tasks"`
	Devices int    `rethinkdb:"devices"`
}

type deviceDoc struct {
	ID     string `rethinkdb:"id"`
	UserID string `rethinkdb:"user_id"`
	// Seen is the last-seen time, Unix milliseconds (exact in RethinkDB's
	// doubles); missing (a device from before it, or loaded) is the oldest.
	Seen int64 `rethinkdb:"seen,omitempty"`
}

// taskDoc is one task as of record W. A deleted task stays as a tombstone
// (Task nil, DeletedAt set) until pruning, so that a late application of an
// older record cannot bring it back: a record is applied to a task only if
// it is newer than the task's W.
type taskDoc struct {
	UserID    string     `rethinkdb:"user_id"`
	TaskID    int64      `rethinkdb:"task_id"`
	Task      *string    `rethinkdb:"task"` // the task's JSON as sent (text keeps key order and numbers)
	W         uint64     `rethinkdb:"w"`
	DeletedAt *time.Time `rethinkdb:"deleted_at,omitempty"`
}

// recordDoc is one write: the unit of atomicity, order and notification.
// Its primary key [user_id, w] makes w unique per user.
type recordDoc struct {
	ID      []any       `rethinkdb:"id"`
	UserID  string      `rethinkdb:"user_id"`
	W       uint64      `rethinkdb:"w"`
	First   uint64      `rethinkdb:"first"` // change numbers First..Last
	Last    uint64      `rethinkdb:"last"`  // First-1 when the write changed no task
	Version string      `rethinkdb:"version"`
	Device  string      `rethinkdb:"device_id"`
	Tasks   int         `rethinkdb:"tasks"` // the user's task count after it
	Changes []recChange `rethinkdb:"changes"`
	// Drop lists tasks removed without a notification of their own: the
	// old id of a renumbered task.
	Drop []int64 `rethinkdb:"drop"`
	// Nonce tells this record from another that took the same key after
	// a crash lost it (see the feed's durability check).
	Nonce int64     `rethinkdb:"n"`
	At    time.Time `rethinkdb:"at"`
}

type recChange struct {
	Kind   feed.ChangeKind `rethinkdb:"k"`
	TaskID int64           `rethinkdb:"id"`
	Task   *string         `rethinkdb:"t"`
}

func recordKey(user string, w uint64) []any { return []any{user, w} }
func taskKey(user string, id int64) []any   { return []any{user, id} }

// changes turns a record into the notifications it carries.
func (rec *recordDoc) changes() []feed.Change {
	out := make([]feed.Change, len(rec.Changes))
	for i, c := range rec.Changes {
		out[i] = feed.Change{Seq: rec.First + uint64(i), UserID: rec.UserID, Kind: c.Kind, TaskID: c.TaskID,
			DeviceID: rec.Device, Version: json.RawMessage(rec.Version)}
		if c.Task != nil {
			out[i].Task = json.RawMessage(*c.Task)
		}
	}
	return out
}

// ops are the record's task mutations in order: drops, then changes (a nil
// task deletes).
func (rec *recordDoc) ops() []map[string]any {
	ops := make([]map[string]any, 0, len(rec.Drop)+len(rec.Changes))
	for _, id := range rec.Drop {
		ops = append(ops, map[string]any{"id": id, "t": nil})
	}
	for _, c := range rec.Changes {
		op := map[string]any{"id": c.TaskID, "t": nil}
		if c.Kind != feed.ChangeDelete {
			op["t"] = *c.Task
		}
		ops = append(ops, op)
	}
	return ops
}

func isDuplicateKey(err error) bool {
	return err != nil && strings.Contains(err.Error(), "Duplicate primary key")
}

// Login implements feed.Store.
func (s *Store) Login(ctx context.Context, userID, deviceID string, connected ...string) (feed.Session, error) {
	start := time.Now()
	var sess feed.Session
	var err error
	if userID != "" && deviceID != "" {
		sess, err = s.loginExisting(ctx, userID, deviceID)
	} else {
		sess, err = s.loginCreate(ctx, userID, deviceID, connected)
	}
	s.m.Observe("login", start, err)
	return sess, err
}

// loginExisting is the common case, a known user and device: one read.
func (s *Store) loginExisting(ctx context.Context, userID, deviceID string) (feed.Session, error) {
	var got struct {
		User   *userDoc   `rethinkdb:"u"`
		Device *deviceDoc `rethinkdb:"d"`
	}
	q := r.Expr(map[string]any{"u": s.table(tableUsers).Get(userID), "d": s.table(tableDevices).Get(deviceID)})
	if _, err := s.one(ctx, q, &got); err != nil {
		return feed.Session{}, err
	}
	if got.User == nil {
		return feed.Session{}, feed.ErrUserNotFound()
	}
	if got.Device == nil || got.Device.UserID != userID {
		return feed.Session{}, feed.ErrDeviceNotFound(deviceID)
	}
	if now := s.opts.Now(); feed.SeenStale(time.UnixMilli(got.Device.Seen), now, s.opts.DeviceIdleAfter) {
		// A second query, only when the stamp is due. It finds the device
		// gone if a login retired it since the read.
		res, err := s.table(tableDevices).Get(deviceID).Update(func(d r.Term) any {
			return r.Branch(d.Field("seen").Default(0).Lt(now.UnixMilli()), map[string]any{"seen": now.UnixMilli()}, map[string]any{})
		}).RunWrite(s.exec, r.RunOpts{Context: ctx})
		if err != nil {
			return feed.Session{}, err
		}
		if res.Skipped > 0 {
			return feed.Session{}, feed.ErrDeviceNotFound(deviceID)
		}
	}
	return feed.Session{Seq: got.User.Seq, UserID: userID, DeviceID: deviceID, Version: json.RawMessage(got.User.Version)}, nil
}

func (s *Store) loginCreate(ctx context.Context, userID, deviceID string, connected []string) (feed.Session, error) {
	sess := feed.Session{UserID: userID}
	var user userDoc
	if userID == "" {
		sess.UserID, sess.NewUser = feed.NewID(), true
		user = userDoc{ID: sess.UserID, Version: "-1"}
	} else if found, err := s.one(ctx, s.table(tableUsers).Get(userID), &user); err != nil {
		return feed.Session{}, err
	} else if !found {
		return feed.Session{}, feed.ErrUserNotFound()
	}
	var owner feed.DeviceOwner
	if deviceID != "" {
		var dev deviceDoc
		found, err := s.one(ctx, s.table(tableDevices).Get(deviceID), &dev)
		if err != nil {
			return feed.Session{}, err
		}
		owner = feed.DeviceOwner{Found: found, UserID: dev.UserID}
	}
	if err := feed.ResolveDevice(&sess, deviceID, owner); err != nil {
		return feed.Session{}, err
	}
	if sess.NewUser {
		if err := s.table(tableUsers).Insert(user).Exec(s.exec, r.ExecOpts{Context: ctx}); err != nil {
			return feed.Session{}, err
		}
	}
	if sess.NewDevice {
		if err := s.registerDevice(ctx, sess.UserID, sess.DeviceID, connected); err != nil {
			return feed.Session{}, err
		}
	}
	sess.Seq, sess.Version = user.Seq, json.RawMessage(user.Version)
	return sess, nil
}

const errTooManyDevices = "kronos: too many devices"

// registerDevice claims the device id (its insert is atomic: a device taken
// meanwhile fails it), then counts it against the user's limit in one
// conditional update. If the user is full it retires an idle device in its
// place (the count stays), or gives the id back. A node that dies between
// the claim and the count leaves the count one short; between the claim and
// the retirement, the user one device over the limit (the new one, never
// answered, is idle and the first retired later).
func (s *Store) registerDevice(ctx context.Context, userID, deviceID string, connected []string) error {
	now := s.opts.Now()
	_, err := s.table(tableDevices).Insert(deviceDoc{ID: deviceID, UserID: userID, Seen: now.UnixMilli()}).RunWrite(s.exec, r.RunOpts{Context: ctx})
	if isDuplicateKey(err) {
		return feed.ErrDeviceTaken(deviceID)
	}
	if err != nil {
		return err
	}
	limit := s.limits.MaxDevicesPerUser
	_, err = s.table(tableUsers).Get(userID).Update(func(u r.Term) any {
		return r.Branch(u.Field("devices").Lt(limit), map[string]any{"devices": u.Field("devices").Add(1)}, r.Error(errTooManyDevices))
	}).RunWrite(s.exec, r.RunOpts{Context: ctx})
	if err != nil && strings.Contains(err.Error(), errTooManyDevices) {
		err = feed.ErrTooManyDevices(limit)
		retired, rerr := s.retireDevice(ctx, userID, append([]string{deviceID}, connected...), now.Add(-s.opts.DeviceIdleAfter))
		if rerr != nil {
			err = rerr
		} else if retired {
			return nil
		}
	}
	if err != nil {
		_ = s.table(tableDevices).Get(deviceID).Delete().Exec(s.exec, r.ExecOpts{Context: context.WithoutCancel(ctx)})
		return err
	}
	return nil
}

// retireCandidates bounds the idle devices a retirement tries, oldest
// first, when logins stamp them meanwhile.
const retireCandidates = 3

// retireDevice deletes the user's least recently seen device that is not
// in keep and was seen before cutoff. Each delete is one conditional
// replace that checks the device again as it is then: a device stamped
// since the read is kept, and the next candidate tried.
func (s *Store) retireDevice(ctx context.Context, userID string, keep []string, cutoff time.Time) (bool, error) {
	limit := cutoff.UnixMilli()
	idle := func(d r.Term) r.Term { return d.Field("seen").Default(0).Lt(limit) }
	var candidates []deviceDoc
	err := s.withDeviceIndex(ctx, func() error {
		candidates = nil
		q := s.table(tableDevices).GetAll(userID).OptArgs(r.GetAllOpts{Index: indexDeviceUser}).
			Filter(func(d r.Term) any { return idle(d).And(r.Expr(keep).Contains(d.Field("id")).Not()) }).
			OrderBy(func(d r.Term) any { return d.Field("seen").Default(0) }, "id").Limit(retireCandidates)
		return s.all(ctx, q, &candidates)
	})
	if err != nil {
		return false, err
	}
	for _, c := range candidates {
		res, err := s.table(tableDevices).Get(c.ID).Replace(func(d r.Term) any {
			return r.Branch(d.Ne(nil).And(d.Field("user_id").Eq(userID)).And(idle(d)), nil, d)
		}).RunWrite(s.exec, r.RunOpts{Context: ctx})
		if err != nil {
			return false, err
		}
		if res.Deleted == 1 {
			return true, nil
		}
	}
	return false, nil
}

// TouchDevices implements feed.Store: one query. Writes do not stamp their
// device here, unlike the other backends: it would cost each write a
// second query, and a device that writes is connected, so its node
// touches it anyway.
func (s *Store) TouchDevices(ctx context.Context, deviceIDs []string) error {
	if len(deviceIDs) == 0 {
		return nil
	}
	start := time.Now()
	now := s.opts.Now()
	due := feed.StampBefore(now, s.opts.DeviceIdleAfter).UnixMilli()
	ids := make([]any, len(deviceIDs))
	for i, d := range deviceIDs {
		ids[i] = d
	}
	err := s.table(tableDevices).GetAll(ids...).Update(func(d r.Term) any {
		return r.Branch(d.Field("seen").Default(0).Lt(due), map[string]any{"seen": now.UnixMilli()}, map[string]any{})
	}).Exec(s.exec, r.ExecOpts{Context: ctx})
	s.m.Observe("touch", start, err)
	return err
}

// pendingRecords reads the user's records after w, in order, and keeps
// those on disk (keepOnDisk).
func (s *Store) pendingRecords(ctx context.Context, userID string, w uint64) ([]recordDoc, error) {
	var recs []recordDoc
	err := s.all(ctx, s.table(tableWrites).Between(recordKey(userID, w+1), []any{userID, r.MaxVal}).
		OrderBy(r.OrderByOpts{Index: "id"}), &recs)
	if err != nil || len(recs) == 0 {
		return recs, err
	}
	if hook := s.afterPendingRead.Load(); hook != nil {
		(*hook)()
	}
	return s.keepOnDisk(ctx, recs)
}

// errUserMoved: a record read as not applied yet was gone when it was
// confirmed, and its user had moved past it, so another node applied it and
// the pruner then deleted it. What was read of the user is stale: the
// caller reads it again.
var errUserMoved = errors.New("rethinkdb store: a user moved past a record while it was read")

// keepOnDisk keeps, of each user's records not applied yet (in w order
// within a user), those on disk. RethinkDB shows a write to readers before
// it has flushed it, and a server that crashes before the flush loses it: a
// read-all that showed it would have shown a task that never was, and a
// write built on it would follow a record that is gone. So the writes table
// is synced and the records are read back (onDisk); each user's records up
// to the first one not there any more are kept, as each record is built on
// the ones before it. A record still in flight is waited for by the sync.
func (s *Store) keepOnDisk(ctx context.Context, recs []recordDoc) ([]recordDoc, error) {
	if len(recs) == 0 {
		return recs, nil
	}
	there, applied, err := s.onDisk(ctx, recs, true)
	if err != nil {
		return nil, err
	}
	kept := make([]recordDoc, 0, len(recs))
	cut := map[string]bool{}
	for i, rec := range recs {
		switch {
		case cut[rec.UserID]:
		case there[i]:
			kept = append(kept, rec)
		case rec.W <= applied[rec.UserID]:
			return nil, errUserMoved
		default:
			cut[rec.UserID] = true
		}
	}
	return kept, nil
}

// onDisk syncs the writes table, then reads recs back, and tells for each
// whether it is on disk: once the sync has returned, a record read before
// it is, if it is still there with the same nonce. A server that crashed
// and restarted since recs were read has lost those it had not flushed,
// and another write may since have taken a lost one's key. With users, it
// also reads the w of each of the records' users after the sync.
func (s *Store) onDisk(ctx context.Context, recs []recordDoc, users bool) (there []bool, applied map[string]uint64, err error) {
	keys := make([]any, len(recs))
	var ids []any
	seen := map[string]bool{}
	for i, rec := range recs {
		keys[i] = rec.ID
		if users && !seen[rec.UserID] {
			seen[rec.UserID] = true
			ids = append(ids, rec.UserID)
		}
	}
	type key struct {
		user string
		w    uint64
	}
	var after struct {
		Records []struct {
			UserID string `rethinkdb:"user_id"`
			W      uint64 `rethinkdb:"w"`
			Nonce  int64  `rethinkdb:"n"`
		} `rethinkdb:"records"`
		Users []struct {
			ID string `rethinkdb:"id"`
			W  uint64 `rethinkdb:"w"`
		} `rethinkdb:"users"`
	}
	table := s.table(tableWrites)
	q := r.Do(table.Sync(), func(r.Term) any {
		out := map[string]any{"records": table.GetAll(r.Args(keys)).Pluck("user_id", "w", "n").CoerceTo("array")}
		if len(ids) > 0 {
			out["users"] = s.table(tableUsers).GetAll(r.Args(ids)).Pluck("id", "w").CoerceTo("array")
		}
		return out
	})
	if _, err := s.one(ctx, q, &after); err != nil {
		return nil, nil, fmt.Errorf("confirming writes on disk: %w", err)
	}
	nonces := make(map[key]int64, len(after.Records))
	for _, st := range after.Records {
		nonces[key{st.UserID, st.W}] = st.Nonce
	}
	there = make([]bool, len(recs))
	for i, rec := range recs {
		n, ok := nonces[key{rec.UserID, rec.W}]
		there[i] = ok && n == rec.Nonce
	}
	applied = make(map[string]uint64, len(after.Users))
	for _, u := range after.Users {
		applied[u.ID] = u.W
	}
	return there, applied, nil
}

// again runs read until it does not report errUserMoved: each time it does,
// the user has moved forward.
func again[T any](ctx context.Context, read func() (T, error)) (T, error) {
	for {
		v, err := read()
		if !errors.Is(err, errUserMoved) {
			return v, err
		}
		if err := ctx.Err(); err != nil {
			return v, err
		}
	}
}

// ReadAll implements feed.Store. The task documents may be in the middle of
// an application, so the snapshot is rebuilt from what is settled: the user
// document first (every record up to its W is fully applied), the task
// documents next, then the records after W, newest wins by record number.
// Any task document newer than W was written by one of those records, which
// were inserted before their application began, so they are all read.
func (s *Store) ReadAll(ctx context.Context, userID string) (feed.Snapshot, error) {
	start := time.Now()
	snap, err := again(ctx, func() (feed.Snapshot, error) { return s.readAll(ctx, userID) })
	s.m.Observe("read-all", start, err)
	return snap, err
}

func (s *Store) readAll(ctx context.Context, userID string) (feed.Snapshot, error) {
	var user userDoc
	if found, err := s.one(ctx, s.table(tableUsers).Get(userID), &user); err != nil {
		return feed.Snapshot{}, err
	} else if !found {
		return feed.Snapshot{}, feed.ErrUserNotFound()
	}
	var docs []taskDoc
	if err := s.all(ctx, s.table(tableTasks).GetAll(userID).OptArgs(r.GetAllOpts{Index: indexUser}), &docs); err != nil {
		return feed.Snapshot{}, err
	}
	recs, err := s.pendingRecords(ctx, userID, user.W)
	if err != nil {
		return feed.Snapshot{}, err
	}
	type state struct {
		w    uint64
		task *string
	}
	tasks := make(map[int64]state, len(docs))
	for _, d := range docs {
		tasks[d.TaskID] = state{d.W, d.Task}
	}
	snap := feed.Snapshot{Version: json.RawMessage(user.Version), Seq: user.Seq}
	for _, rec := range recs {
		for _, op := range rec.ops() {
			id := toInt64(op["id"])
			if cur, ok := tasks[id]; !ok || cur.w < rec.W {
				t, _ := op["t"].(string)
				if op["t"] == nil {
					tasks[id] = state{rec.W, nil}
				} else {
					tasks[id] = state{rec.W, &t}
				}
			}
		}
		snap.Version, snap.Seq = json.RawMessage(rec.Version), rec.Last
	}
	ids := make([]int64, 0, len(tasks))
	for id, st := range tasks {
		if st.task != nil {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	snap.Tasks = make([]json.RawMessage, len(ids))
	for i, id := range ids {
		snap.Tasks[i] = json.RawMessage(*tasks[id].task)
	}
	// Finish what a writer may have left, so the next read is cheaper.
	for i := range recs {
		if err := s.applyRecord(ctx, &recs[i]); err != nil {
			s.log.Debug().Err(err).Msg("rolling forward after a read")
			break
		}
	}
	return snap, nil
}

func toInt64(v any) int64 {
	switch n := v.(type) {
	case int64:
		return n
	case int:
		return int64(n)
	case float64:
		return int64(n)
	}
	return 0
}

// rollForward applies every record of the user not applied yet, in order,
// and returns the user as of the last one. Any number of nodes may do it at
// once: each step only moves a document forward.
func (s *Store) rollForward(ctx context.Context, userID string) (userDoc, error) {
	return again(ctx, func() (userDoc, error) { return s.rollForwardOnce(ctx, userID) })
}

func (s *Store) rollForwardOnce(ctx context.Context, userID string) (userDoc, error) {
	var user userDoc
	if found, err := s.one(ctx, s.table(tableUsers).Get(userID), &user); err != nil {
		return user, err
	} else if !found {
		return user, feed.ErrUserNotFound()
	}
	recs, err := s.pendingRecords(ctx, userID, user.W)
	if err != nil {
		return user, err
	}
	for i := range recs {
		if err := s.applyRecord(ctx, &recs[i]); err != nil {
			return user, err
		}
		rec := &recs[i]
		user.W, user.Seq, user.Version, user.Tasks = rec.W, rec.Last, rec.Version, rec.Tasks
	}
	return user, nil
}

// applyRecord writes a record's tasks, each only if the task is older than
// the record, then moves the user document to it, only if it is behind.
// The user document moves last: once it says W, every task of W is written.
func (s *Store) applyRecord(ctx context.Context, rec *recordDoc) error {
	w, user := rec.W, rec.UserID
	if ops := rec.ops(); len(ops) > 0 {
		q := r.Expr(ops).ForEach(func(op r.Term) any {
			key := r.Expr([]any{user, op.Field("id")})
			next := r.Branch(op.Field("t").Eq(nil),
				map[string]any{"id": key, "user_id": user, "task_id": op.Field("id"), "task": nil, "w": w, "deleted_at": r.Now()},
				map[string]any{"id": key, "user_id": user, "task_id": op.Field("id"), "task": op.Field("t"), "w": w})
			return s.table(tableTasks).Get(key).Replace(func(old r.Term) any {
				return r.Branch(old.Eq(nil).Or(old.Field("w").Lt(w)), next, old)
			})
		})
		if err := q.Exec(s.exec, r.ExecOpts{Context: ctx}); err != nil {
			return fmt.Errorf("applying record %d: %w", w, err)
		}
	}
	err := s.table(tableUsers).Get(user).Update(func(u r.Term) any {
		return r.Branch(u.Field("w").Lt(w),
			map[string]any{"w": w, "seq": rec.Last, "version": rec.Version, "tasks": rec.Tasks}, map[string]any{})
	}).Exec(s.exec, r.ExecOpts{Context: ctx})
	if err != nil {
		return fmt.Errorf("applying record %d: %w", w, err)
	}
	return nil
}

// Write implements feed.Store: roll the user forward, run the write's
// semantics on the result, and insert its record under the next number.
// If another writer took the number first, do it again on the new state.
func (s *Store) Write(ctx context.Context, w *feed.Write) error {
	start := time.Now()
	err := s.write(ctx, w)
	s.m.Observe(w.Kind.String(), start, err)
	return err
}

func (s *Store) write(ctx context.Context, w *feed.Write) error {
	// Writers of one user on this node take turns: only writers on other
	// nodes can race for a record number, and those races are rare.
	defer s.writers.lock(w.UserID)()
	rec, err := s.commit(ctx, w.UserID, func(user userDoc, tx *userTx) (*recordDoc, error) {
		changes, err := feed.Apply(tx, w, s.limits)
		if err != nil {
			return nil, err
		}
		return tx.record(user, w, changes), nil
	})
	if err != nil {
		return err
	}
	if rec.Last >= rec.First {
		w.Seq = rec.Last
	}
	// Committed. Applying it is best effort: whoever reads or writes the
	// user next completes it.
	if err := s.applyRecord(ctx, rec); err != nil {
		s.log.Debug().Err(err).Msg("record committed, not applied yet")
	}
	return nil
}

// commit rolls the user forward, lets build make a record from that state,
// and inserts it under the user's next number; if another node took that
// number first, it does it all again on the new state, after a random
// pause so that the two do not collide again. A nil record from build
// commits nothing. The caller holds the user's turn (userLocks).
func (s *Store) commit(ctx context.Context, userID string, build func(userDoc, *userTx) (*recordDoc, error)) (*recordDoc, error) {
	backoff := time.Millisecond
	for {
		user, err := s.rollForward(ctx, userID)
		if err != nil {
			return nil, err
		}
		tx := &userTx{s: s, ctx: ctx, userID: userID, version: json.RawMessage(user.Version),
			TaskCounter: feed.NewTaskCounter(user.Tasks), deleted: map[int64]bool{}}
		rec, err := build(user, tx)
		if err != nil || rec == nil {
			return nil, err
		}
		doc := r.Expr(rec).Merge(map[string]any{"at": r.Now()})
		_, err = s.table(tableWrites).Insert(doc, r.InsertOpts{Conflict: "error", Durability: "hard"}).
			RunWrite(s.exec, r.RunOpts{Context: ctx})
		if !isDuplicateKey(err) {
			return rec, err
		}
		select {
		case <-time.After(time.Duration(mrand.Int64N(int64(backoff))) + time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		backoff = min(2*backoff, 50*time.Millisecond)
	}
}

// userLocks serialise the writes of each user on this node.
type userLocks struct {
	mu sync.Mutex
	m  map[string]*userLock
}

type userLock struct {
	sync.Mutex
	refs int
}

// lock takes the user's turn and returns its release.
func (l *userLocks) lock(user string) func() {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*userLock{}
	}
	ul := l.m[user]
	if ul == nil {
		ul = &userLock{}
		l.m[user] = ul
	}
	ul.refs++
	l.mu.Unlock()
	ul.Lock()
	return func() {
		ul.Unlock()
		l.mu.Lock()
		if ul.refs--; ul.refs == 0 {
			delete(l.m, user)
		}
		l.mu.Unlock()
	}
}

// userTx gives Apply the user's tasks as of the last applied record and
// collects the write's removals.
type userTx struct {
	s       *Store
	ctx     context.Context
	userID  string
	version json.RawMessage
	feed.TaskCounter
	deleted map[int64]bool // removed and not put back
}

func (u *userTx) Version() json.RawMessage { return u.version }

func (u *userTx) Get(id int64) (json.RawMessage, bool, error) {
	var doc taskDoc
	found, err := u.s.one(u.ctx, u.s.table(tableTasks).Get(taskKey(u.userID, id)), &doc)
	if err != nil {
		return nil, false, err
	}
	live := found && doc.Task != nil
	u.Seen(id, live)
	if !live {
		return nil, false, nil
	}
	return json.RawMessage(*doc.Task), true, nil
}

func (u *userTx) All() ([]feed.Task, error) {
	var docs []taskDoc
	if err := u.s.all(u.ctx, u.s.table(tableTasks).GetAll(u.userID).OptArgs(r.GetAllOpts{Index: indexUser}), &docs); err != nil {
		return nil, err
	}
	all := make([]feed.Task, 0, len(docs))
	for _, d := range docs {
		if d.Task != nil {
			all = append(all, feed.Task{ID: d.TaskID, Raw: json.RawMessage(*d.Task)})
			u.Seen(d.TaskID, true)
		}
	}
	slices.SortFunc(all, func(a, b feed.Task) int { return cmp.Compare(a.ID, b.ID) })
	return all, nil
}

func (u *userTx) Put(id int64, _ json.RawMessage) error {
	u.Added(id)
	delete(u.deleted, id)
	return nil
}

func (u *userTx) Delete(id int64) error {
	u.Removed(id)
	u.deleted[id] = true
	return nil
}

func (u *userTx) SetVersion(v json.RawMessage) error {
	u.version = v
	return nil
}

// record makes the write's record, numbered after the user's last one.
func (u *userTx) record(user userDoc, w *feed.Write, changes []feed.Change) *recordDoc {
	rec := &recordDoc{
		ID: recordKey(w.UserID, user.W+1), UserID: w.UserID, W: user.W + 1,
		First: user.Seq + 1, Last: user.Seq + uint64(len(changes)),
		Version: string(u.version), Device: w.DeviceID, Tasks: u.Count,
		Changes: make([]recChange, len(changes)), Drop: []int64{}, Nonce: nonce(),
	}
	notified := map[int64]bool{}
	for i, c := range changes {
		rc := recChange{Kind: c.Kind, TaskID: c.TaskID}
		if c.Task != nil {
			t := string(c.Task)
			rc.Task = &t
		}
		rec.Changes[i] = rc
		notified[c.TaskID] = true
	}
	for id := range u.deleted {
		if !notified[id] {
			rec.Drop = append(rec.Drop, id)
		}
	}
	slices.Sort(rec.Drop)
	return rec
}

func nonce() int64 {
	var b [8]byte
	rand.Read(b[:])
	// Kept within a double's exact integers: RethinkDB numbers are doubles.
	return int64(binary.LittleEndian.Uint64(b[:]) >> 11)
}
