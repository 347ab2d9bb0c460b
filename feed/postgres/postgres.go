// Package postgres is the PostgreSQL store, shared by the nodes of a
// cluster, with a feed that reads a per-user change log.
package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/kronos-sync/kronos-server/feed"
)

// Every write runs in one transaction that locks the user's row, applies
// the change to kronos_tasks, appends one row per task change to
// kronos_changes, advances the user's last_seq and sends NOTIFY with the
// user and the new last_seq. Because last_seq only moves under the row
// lock, a user's change sequence numbers follow commit order with no gaps:
// a node that has delivered up to N can always ask for "user_seq > N" and
// miss nothing, however its notifications were lost. (The global identity
// column is not commit-ordered and is used only for pruning.)
//
// Each node keeps one LISTEN connection. A notification for a user with
// devices on this node makes the node read that user's new log rows; after
// the listen connection is re-established the node reads them for every
// watched user. See feed.go.

// notifyChannel is the LISTEN/NOTIFY channel; payloads are "user_id:last_seq".
const notifyChannel = "kronos_changes"

// Store is the PostgreSQL store and this node's feed on it.
type Store struct {
	pool    *pgxpool.Pool
	listen  *pgx.ConnConfig
	limits  feed.Limits
	opts    feed.Options
	log     zerolog.Logger
	metrics *feed.StoreMetrics
	feed    *feed.FeedMetrics

	sinkMu sync.Mutex
	sink   feed.Sink

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	listening atomic.Bool
	mu        sync.Mutex
	watched   map[string]*watch
	pending   map[string]bool // users with changes to read
	wake      chan struct{}
	closeOnce sync.Once
}

var (
	_ feed.Store = (*Store)(nil)
	_ feed.Feed  = (*Store)(nil)
)

// watch is a user with devices on this node.
type watch struct {
	count     int
	delivered uint64 // the last user_seq handed to the sink
}

// Open connects to PostgreSQL (a libpq URL or DSN; pool settings
// such as pool_max_conns go in the URL), migrates the schema and starts
// the node's feed.
func Open(ctx context.Context, url string, opts feed.Options) (*Store, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("postgres store: %w: %w", feed.ErrConfig, err)
	}
	opts.SetDefaults()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("postgres store %s: %w: %w", feed.RedactURL(url), feed.ErrConfig, err)
	}
	if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = "kronos"
	}
	listen := cfg.ConnConfig.Copy()
	listen.RuntimeParams["application_name"] = "kronos-listen"
	connectCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(connectCtx, cfg)
	if err == nil {
		err = pool.Ping(connectCtx)
	}
	if err == nil {
		err = migrate(connectCtx, pool)
	}
	if err != nil {
		if pool != nil {
			pool.Close()
		}
		return nil, fmt.Errorf("postgres store %s: %w", feed.RedactURL(url), err)
	}
	s := &Store{
		pool:    pool,
		listen:  listen,
		limits:  opts.Limits,
		opts:    opts,
		log:     opts.Logger.With().Str("store", "postgres").Logger(),
		metrics: feed.NewStoreMetrics(opts.Registerer, "postgres"),
		feed:    feed.NewFeedMetrics(opts.Registerer),
		watched: map[string]*watch{},
		pending: map[string]bool{},
		wake:    make(chan struct{}, 1),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(3)
	go s.listenLoop()
	go s.fetchLoop()
	go s.pruneLoop()
	return s, nil
}

// Subscribe implements feed.Feed.
func (s *Store) Subscribe(sink feed.Sink) {
	s.sinkMu.Lock()
	s.sink = sink
	s.sinkMu.Unlock()
}

func (s *Store) deliver(changes []feed.Change) {
	if len(changes) == 0 {
		return
	}
	s.sinkMu.Lock()
	sink := s.sink
	s.sinkMu.Unlock()
	if sink != nil {
		sink(changes)
	}
}

// Ready implements feed.Store: the pool answers and the listen connection
// is up.
func (s *Store) Ready(ctx context.Context) error {
	if !s.listening.Load() {
		return errors.New("listen connection is down")
	}
	return s.pool.Ping(ctx)
}

// Close implements feed.Store.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.wg.Wait()
		s.pool.Close()
	})
	return nil
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
	s.metrics.Observe("login", start, err)
	return sess, err
}

// loginExisting reads the user and the device, stamping the device if its
// stamp is due, in one statement. A device due a stamp is the user's only
// if the stamp found it: unlike a read of the statement's snapshot, the
// update waits for a login retiring the device and then finds it gone. A
// device stamped recently is read: no login can be retiring it.
func (s *Store) loginExisting(ctx context.Context, userID, deviceID string) (feed.Session, error) {
	var version string
	var seq int64
	var owned bool
	now := s.opts.Now()
	err := s.pool.QueryRow(ctx, `WITH seen AS (
			UPDATE kronos_devices SET last_seen = $3
			WHERE device_id = $2 AND user_id = $1 AND (last_seen IS NULL OR last_seen < $4) RETURNING 1)
		SELECT u.version, u.last_seq, EXISTS (SELECT 1 FROM seen) OR EXISTS (SELECT 1 FROM kronos_devices d
			WHERE d.device_id = $2 AND d.user_id = $1 AND d.last_seen >= $4)
		FROM kronos_users u WHERE u.user_id = $1`, userID, deviceID, now, feed.StampBefore(now, s.opts.DeviceIdleAfter)).Scan(&version, &seq, &owned)
	if errors.Is(err, pgx.ErrNoRows) {
		return feed.Session{}, feed.ErrUserNotFound()
	}
	if err != nil {
		return feed.Session{}, err
	}
	if !owned {
		return feed.Session{}, feed.ErrDeviceNotFound(deviceID)
	}
	return feed.Session{Seq: uint64(seq), UserID: userID, DeviceID: deviceID, Version: json.RawMessage(version)}, nil
}

// loginCreate creates a user, or registers a device, in one transaction:
// BEGIN, the user's row (inserted, or locked) and the requested device's
// owner go in one round trip; the device and the user's count are one
// statement, sent with the COMMIT when nothing before it may need undoing.
// A new device of an existing user takes two round trips, a new user three.
func (s *Store) loginCreate(ctx context.Context, userID, deviceID string, connected []string) (feed.Session, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return feed.Session{}, err
	}
	defer conn.Release() // closed if still in the transaction
	sess := feed.Session{UserID: userID}
	var version string
	var devices int
	var seq int64
	found := true
	var owner feed.DeviceOwner
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	if userID == "" {
		sess.UserID, sess.NewUser, version = feed.NewID(), true, "-1"
		b.Queue(`INSERT INTO kronos_users (user_id, version) VALUES ($1, $2)`, sess.UserID, version)
	} else {
		found = false
		b.Queue(`SELECT version, device_count, last_seq FROM kronos_users
			WHERE user_id = $1 FOR UPDATE`, userID).QueryRow(func(row pgx.Row) error {
			err := row.Scan(&version, &devices, &seq)
			if errors.Is(err, pgx.ErrNoRows) {
				return nil
			}
			found = err == nil
			return err
		})
	}
	if deviceID != "" {
		b.Queue(`SELECT user_id FROM kronos_devices WHERE device_id = $1`, deviceID).QueryRow(func(row pgx.Row) error {
			err := row.Scan(&owner.UserID)
			if errors.Is(err, pgx.ErrNoRows) {
				return nil
			}
			owner.Found = err == nil
			return err
		})
	}
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return feed.Session{}, rollback(ctx, conn, err)
	}
	if !found {
		return feed.Session{}, rollback(ctx, conn, feed.ErrUserNotFound())
	}
	if err := feed.ResolveDevice(&sess, deviceID, owner); err != nil {
		return feed.Session{}, rollback(ctx, conn, err)
	}
	committed := false
	if sess.NewDevice {
		now := s.opts.Now()
		retired := false
		if devices >= s.limits.MaxDevicesPerUser {
			var err error
			if retired, err = s.retireDevice(ctx, conn, sess.UserID, connected, now.Add(-s.opts.DeviceIdleAfter)); err != nil {
				return feed.Session{}, rollback(ctx, conn, err)
			}
			if !retired {
				return feed.Session{}, rollback(ctx, conn, feed.ErrTooManyDevices(s.limits.MaxDevicesPerUser))
			}
		}
		// The count goes up with the insert, unless a device was retired
		// for it: one out, one in.
		inserted := false
		b := &pgx.Batch{}
		b.Queue(`WITH added AS (
				INSERT INTO kronos_devices (device_id, user_id, last_seen) VALUES ($1, $2, $3)
				ON CONFLICT (device_id) DO NOTHING RETURNING 1),
			counted AS (
				UPDATE kronos_users SET device_count = device_count + 1
				WHERE user_id = $2 AND $4 AND EXISTS (SELECT 1 FROM added))
			SELECT EXISTS (SELECT 1 FROM added)`, sess.DeviceID, sess.UserID, now, !retired).QueryRow(func(row pgx.Row) error {
			return row.Scan(&inserted)
		})
		// The COMMIT goes with the insert when the insert is all there is
		// to undo: committing after it found the device taken then
		// changes nothing. A new user or a retirement waits for it.
		if !sess.NewUser && !retired {
			queueCommit(b)
			committed = true
		}
		if err := conn.SendBatch(ctx, b).Close(); err != nil {
			return feed.Session{}, rollback(ctx, conn, err)
		}
		if !inserted { // taken by a login that committed meanwhile
			return feed.Session{}, rollback(ctx, conn, feed.ErrDeviceTaken(sess.DeviceID))
		}
	}
	if !committed {
		b := &pgx.Batch{}
		queueCommit(b)
		if err := conn.SendBatch(ctx, b).Close(); err != nil {
			return feed.Session{}, rollback(ctx, conn, err)
		}
	}
	sess.Seq, sess.Version = uint64(seq), json.RawMessage(version)
	return sess, nil
}

// retireDevice deletes the user's least recently seen device that is not
// connected here and was seen before cutoff, inside the registering
// login's transaction (which holds the user's row lock). The outer
// condition is checked again on the row as it is when locked, so a device
// stamped meanwhile is kept; the login is then refused, which is the safe
// side of that race.
func (s *Store) retireDevice(ctx context.Context, tx querier, userID string, connected []string, cutoff time.Time) (bool, error) {
	if connected == nil {
		connected = []string{} // <> ALL(NULL) is never true
	}
	var retired string
	err := tx.QueryRow(ctx, `DELETE FROM kronos_devices WHERE device_id = (
			SELECT device_id FROM kronos_devices
			WHERE user_id = $1 AND (last_seen IS NULL OR last_seen < $2) AND device_id <> ALL($3)
			ORDER BY last_seen NULLS FIRST, device_id LIMIT 1)
		AND (last_seen IS NULL OR last_seen < $2)
		RETURNING device_id`, userID, cutoff, connected).Scan(&retired)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// TouchDevices implements feed.Store: one statement.
func (s *Store) TouchDevices(ctx context.Context, deviceIDs []string) error {
	if len(deviceIDs) == 0 {
		return nil
	}
	start := time.Now()
	now := s.opts.Now()
	_, err := s.pool.Exec(ctx, `UPDATE kronos_devices SET last_seen = $2
		WHERE device_id = ANY($1) AND (last_seen IS NULL OR last_seen < $3)`,
		deviceIDs, now, feed.StampBefore(now, s.opts.DeviceIdleAfter))
	s.metrics.Observe("touch", start, err)
	return err
}

// ReadAll implements feed.Store.
func (s *Store) ReadAll(ctx context.Context, userID string) (feed.Snapshot, error) {
	start := time.Now()
	var snap feed.Snapshot
	// One repeatable-read transaction: the version and the tasks agree.
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var version string
		var seq int64
		err := tx.QueryRow(ctx, `SELECT version, last_seq FROM kronos_users WHERE user_id = $1`, userID).Scan(&version, &seq)
		if errors.Is(err, pgx.ErrNoRows) {
			return feed.ErrUserNotFound()
		}
		if err != nil {
			return err
		}
		snap.Version, snap.Seq = json.RawMessage(version), uint64(seq)
		rows, err := tx.Query(ctx, `SELECT task FROM kronos_tasks WHERE user_id = $1 ORDER BY task_id`, userID)
		if err != nil {
			return err
		}
		snap.Tasks, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (json.RawMessage, error) {
			var task string
			err := row.Scan(&task)
			return json.RawMessage(task), err
		})
		return err
	})
	s.metrics.Observe("read-all", start, err)
	return snap, err
}

// Write implements feed.Store, in two round trips: BEGIN, the lock on the
// user's row and the read the write needs first (see readAhead) are sent
// together, and so are the write's statements, its NOTIFY and COMMIT.
// Each statement of a pipeline runs after the one before it has finished,
// with a snapshot of its own, as when they are sent one at a time: the
// read-ahead sees every write committed before the lock was granted.
func (s *Store) Write(ctx context.Context, w *feed.Write) error {
	start := time.Now()
	err := s.write(ctx, w)
	s.metrics.Observe(w.Kind.String(), start, err)
	return err
}

func (s *Store) write(ctx context.Context, w *feed.Write) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	// A connection left in the transaction (a ROLLBACK that failed) is
	// closed on release, and the server rolls the transaction back.
	defer conn.Release()
	var version string
	var count int
	var lastSeq int64
	found := false
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(`SELECT version, task_count, last_seq FROM kronos_users
		WHERE user_id = $1 FOR UPDATE`, w.UserID).QueryRow(func(row pgx.Row) error {
		err := row.Scan(&version, &count, &lastSeq)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		found = err == nil
		return err
	})
	u := &pgUserTx{ctx: ctx, q: conn, userID: w.UserID, puts: map[int64]json.RawMessage{}, deletes: map[int64]bool{}}
	u.readAhead(b, w)
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return rollback(ctx, conn, err)
	}
	if !found {
		return rollback(ctx, conn, feed.ErrUserNotFound())
	}
	u.version, u.TaskCounter = json.RawMessage(version), feed.NewTaskCounter(count)
	changes, err := feed.Apply(u, w, s.limits)
	if err != nil {
		return rollback(ctx, conn, err)
	}
	b = &pgx.Batch{}
	u.flush(b)
	logChanges(b, w.UserID, uint64(lastSeq), changes)
	newSeq := lastSeq + int64(len(changes))
	// The writing device is stamped in the same statement, and only when
	// its stamp is due (see feed.SeenStale).
	now := s.opts.Now()
	b.Queue(`WITH seen AS (
			UPDATE kronos_devices SET last_seen = $6
			WHERE device_id = $5 AND user_id = $1 AND (last_seen IS NULL OR last_seen < $7))
		UPDATE kronos_users SET version = $2, task_count = $3, last_seq = $4
		WHERE user_id = $1`, w.UserID, string(u.version), u.Count, newSeq,
		w.DeviceID, now, feed.StampBefore(now, s.opts.DeviceIdleAfter))
	if len(changes) > 0 {
		// Delivered by PostgreSQL only if the transaction commits.
		b.Queue(`SELECT pg_notify($1, $2)`, notifyChannel, fmt.Sprintf("%s:%d", w.UserID, newSeq))
	}
	queueCommit(b)
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return rollback(ctx, conn, err)
	}
	if len(changes) > 0 {
		w.Seq = uint64(newSeq)
	}
	return nil
}

// queueCommit ends a pipeline that runs in a transaction with its COMMIT.
// After a statement fails the server skips the rest of the pipeline, the
// COMMIT too, and the failure is what the batch reports.
func queueCommit(b *pgx.Batch) {
	b.Queue("COMMIT").Exec(func(tag pgconn.CommandTag) error {
		if tag.String() != "COMMIT" {
			return pgx.ErrTxCommitRollback
		}
		return nil
	})
}

// rollback ends the transaction that conn is still in, if it is, and
// returns err. A failed ROLLBACK leaves conn in the transaction: it is
// closed when released.
func rollback(ctx context.Context, conn *pgxpool.Conn, err error) error {
	if conn.Conn().PgConn().TxStatus() != 'I' {
		conn.Exec(ctx, "ROLLBACK")
	}
	return err
}

// logChanges queues the statement that appends a write's changes to the
// change log, numbered after lastSeq in order.
func logChanges(b *pgx.Batch, userID string, lastSeq uint64, changes []feed.Change) {
	if len(changes) == 0 {
		return
	}
	seqs := make([]int64, len(changes))
	kinds := make([]int16, len(changes))
	ids := make([]int64, len(changes))
	tasks := make([]*string, len(changes))
	for i := range changes {
		c := &changes[i]
		c.Seq = lastSeq + uint64(i) + 1
		seqs[i], kinds[i], ids[i] = int64(c.Seq), int16(c.Kind), c.TaskID
		if c.Task != nil {
			t := string(c.Task)
			tasks[i] = &t
		}
	}
	c := changes[0]
	b.Queue(`INSERT INTO kronos_changes (user_id, user_seq, kind, task_id, task, device_id, version)
		SELECT $1, s, k, i, t, $6, $7 FROM unnest($2::bigint[], $3::smallint[], $4::bigint[], $5::text[]) AS x(s, k, i, t)`,
		userID, seqs, kinds, ids, tasks, c.DeviceID, string(c.Version))
}

// pgUserTx is one user's data inside a write transaction. Reads go to the
// database, but for the one read ahead; mutations are collected and queued
// by flush in two statements, which apply allows because it reads
// everything it needs before its first mutation.
type pgUserTx struct {
	ctx     context.Context
	q       querier
	userID  string
	version json.RawMessage
	feed.TaskCounter
	puts    map[int64]json.RawMessage
	deletes map[int64]bool

	// The read ahead: one task (aheadID: aheadTask, nil if absent) or all.
	aheadID      int64
	aheadTask    *string
	aheadOne     bool
	aheadAll     []feed.Task
	aheadAllRead bool // aheadAll holds the tasks
}

// querier runs the reads of a pgUserTx: a pooled connection or a pgx.Tx.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

const (
	getTaskSQL  = `SELECT task FROM kronos_tasks WHERE user_id = $1 AND task_id = $2`
	allTasksSQL = `SELECT task_id, task FROM kronos_tasks WHERE user_id = $1 ORDER BY task_id`
)

// readAhead queues, after the lock in b, the read that Apply makes first
// for w: the task that an update or a delete names, or all the tasks for
// a write-all or a delete by index (read even if Apply then refuses the
// write). A create's id is known only once Apply has parsed the task: it
// is read on its own. Apply then finds the read in u without another
// round trip.
func (u *pgUserTx) readAhead(b *pgx.Batch, w *feed.Write) {
	switch {
	case w.Kind == feed.WriteUpdate || w.Kind == feed.WriteDelete && w.TaskIndex == "":
		u.aheadID = w.TaskID
		b.Queue(getTaskSQL, u.userID, w.TaskID).QueryRow(func(row pgx.Row) error {
			var task string
			err := row.Scan(&task)
			switch {
			case err == nil:
				u.aheadTask, u.aheadOne = &task, true
			case errors.Is(err, pgx.ErrNoRows):
				u.aheadOne = true
			default:
				return err
			}
			return nil
		})
	case w.Kind == feed.WriteAll || w.Kind == feed.WriteDelete:
		b.Queue(allTasksSQL, u.userID).Query(func(rows pgx.Rows) error {
			all, err := collectTasks(rows)
			u.aheadAll, u.aheadAllRead = all, err == nil
			return err
		})
	}
}

func (u *pgUserTx) Version() json.RawMessage { return u.version }

func (u *pgUserTx) Get(id int64) (json.RawMessage, bool, error) {
	if raw, ok := u.puts[id]; ok {
		return raw, true, nil
	}
	if u.deletes[id] {
		return nil, false, nil
	}
	var task string
	if u.aheadOne && id == u.aheadID {
		if u.aheadTask == nil {
			u.Seen(id, false)
			return nil, false, nil
		}
		task = *u.aheadTask
	} else {
		err := u.q.QueryRow(u.ctx, getTaskSQL, u.userID, id).Scan(&task)
		if errors.Is(err, pgx.ErrNoRows) {
			u.Seen(id, false)
			return nil, false, nil
		}
		if err != nil {
			return nil, false, err
		}
	}
	u.Seen(id, true)
	return json.RawMessage(task), true, nil
}

func (u *pgUserTx) All() ([]feed.Task, error) {
	all := u.aheadAll
	if u.aheadAllRead {
		u.aheadAll, u.aheadAllRead = nil, false // Apply reads them once
	} else {
		rows, err := u.q.Query(u.ctx, allTasksSQL, u.userID)
		if err != nil {
			return nil, err
		}
		if all, err = collectTasks(rows); err != nil {
			return nil, err
		}
	}
	for _, t := range all {
		u.Seen(t.ID, true)
	}
	return all, nil
}

func collectTasks(rows pgx.Rows) ([]feed.Task, error) {
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (feed.Task, error) {
		var t feed.Task
		var task string
		err := row.Scan(&t.ID, &task)
		t.Raw = json.RawMessage(task)
		return t, err
	})
}

func (u *pgUserTx) Put(id int64, raw json.RawMessage) error {
	u.Added(id)
	u.puts[id] = raw
	delete(u.deletes, id)
	return nil
}

func (u *pgUserTx) Delete(id int64) error {
	u.Removed(id)
	u.deletes[id] = true
	delete(u.puts, id)
	return nil
}

func (u *pgUserTx) SetVersion(v json.RawMessage) error {
	u.version = v
	return nil
}

// flush queues the collected mutations in b.
func (u *pgUserTx) flush(b *pgx.Batch) {
	if len(u.deletes) > 0 {
		ids := make([]int64, 0, len(u.deletes))
		for id := range u.deletes {
			ids = append(ids, id)
		}
		b.Queue(`DELETE FROM kronos_tasks WHERE user_id = $1 AND task_id = ANY($2)`, u.userID, ids)
	}
	if len(u.puts) > 0 {
		ids := make([]int64, 0, len(u.puts))
		tasks := make([]string, 0, len(u.puts))
		for id, raw := range u.puts {
			ids = append(ids, id)
			tasks = append(tasks, string(raw))
		}
		b.Queue(`INSERT INTO kronos_tasks (user_id, task_id, task)
			SELECT $1, i, t FROM unnest($2::bigint[], $3::text[]) AS x(i, t)
			ON CONFLICT (user_id, task_id) DO UPDATE SET task = EXCLUDED.task`, u.userID, ids, tasks)
	}
}
