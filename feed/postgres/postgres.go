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
		err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			sess, err = s.loginCreate(ctx, tx, userID, deviceID, connected)
			return err
		})
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

func (s *Store) loginCreate(ctx context.Context, tx pgx.Tx, userID, deviceID string, connected []string) (feed.Session, error) {
	sess := feed.Session{UserID: userID}
	var version string
	var devices int
	var seq int64
	if userID == "" {
		sess.UserID, sess.NewUser, version = feed.NewID(), true, "-1"
		if _, err := tx.Exec(ctx, `INSERT INTO kronos_users (user_id, version) VALUES ($1, $2)`, sess.UserID, version); err != nil {
			return feed.Session{}, err
		}
	} else {
		err := tx.QueryRow(ctx, `SELECT version, device_count, last_seq FROM kronos_users
			WHERE user_id = $1 FOR UPDATE`, userID).Scan(&version, &devices, &seq)
		if errors.Is(err, pgx.ErrNoRows) {
			return feed.Session{}, feed.ErrUserNotFound()
		}
		if err != nil {
			return feed.Session{}, err
		}
	}
	var owner feed.DeviceOwner
	if deviceID != "" {
		err := tx.QueryRow(ctx, `SELECT user_id FROM kronos_devices WHERE device_id = $1`, deviceID).Scan(&owner.UserID)
		switch {
		case err == nil:
			owner.Found = true
		case !errors.Is(err, pgx.ErrNoRows):
			return feed.Session{}, err
		}
	}
	if err := feed.ResolveDevice(&sess, deviceID, owner); err != nil {
		return feed.Session{}, err
	}
	if sess.NewDevice {
		now := s.opts.Now()
		retired := false
		if devices >= s.limits.MaxDevicesPerUser {
			var err error
			if retired, err = s.retireDevice(ctx, tx, sess.UserID, connected, now.Add(-s.opts.DeviceIdleAfter)); err != nil {
				return feed.Session{}, err
			}
			if !retired {
				return feed.Session{}, feed.ErrTooManyDevices(s.limits.MaxDevicesPerUser)
			}
		}
		tag, err := tx.Exec(ctx, `INSERT INTO kronos_devices (device_id, user_id, last_seen) VALUES ($1, $2, $3)
			ON CONFLICT (device_id) DO NOTHING`, sess.DeviceID, sess.UserID, now)
		if err != nil {
			return feed.Session{}, err
		}
		if tag.RowsAffected() == 0 { // taken by a login that committed meanwhile; the retirement rolls back
			return feed.Session{}, feed.ErrDeviceTaken(sess.DeviceID)
		}
		if !retired { // one out, one in: the count stays
			if _, err := tx.Exec(ctx, `UPDATE kronos_users SET device_count = device_count + 1 WHERE user_id = $1`, sess.UserID); err != nil {
				return feed.Session{}, err
			}
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
func (s *Store) retireDevice(ctx context.Context, tx pgx.Tx, userID string, connected []string, cutoff time.Time) (bool, error) {
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

// Write implements feed.Store.
func (s *Store) Write(ctx context.Context, w *feed.Write) error {
	start := time.Now()
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var version string
		var count int
		var lastSeq int64
		err := tx.QueryRow(ctx, `SELECT version, task_count, last_seq FROM kronos_users
			WHERE user_id = $1 FOR UPDATE`, w.UserID).Scan(&version, &count, &lastSeq)
		if errors.Is(err, pgx.ErrNoRows) {
			return feed.ErrUserNotFound()
		}
		if err != nil {
			return err
		}
		u := &pgUserTx{ctx: ctx, tx: tx, userID: w.UserID, version: json.RawMessage(version),
			TaskCounter: feed.NewTaskCounter(count), puts: map[int64]json.RawMessage{}, deletes: map[int64]bool{}}
		changes, err := feed.Apply(u, w, s.limits)
		if err != nil {
			return err
		}
		if err := u.flush(); err != nil {
			return err
		}
		if err := logChanges(ctx, tx, w.UserID, uint64(lastSeq), changes); err != nil {
			return err
		}
		newSeq := lastSeq + int64(len(changes))
		// The writing device is stamped in the same statement (no extra
		// round trip), and only when its stamp is due (see feed.SeenStale).
		now := s.opts.Now()
		if _, err := tx.Exec(ctx, `WITH seen AS (
				UPDATE kronos_devices SET last_seen = $6
				WHERE device_id = $5 AND user_id = $1 AND (last_seen IS NULL OR last_seen < $7))
			UPDATE kronos_users SET version = $2, task_count = $3, last_seq = $4
			WHERE user_id = $1`, w.UserID, string(u.version), u.Count, newSeq,
			w.DeviceID, now, feed.StampBefore(now, s.opts.DeviceIdleAfter)); err != nil {
			return err
		}
		if len(changes) > 0 {
			// Delivered by PostgreSQL only if the transaction commits.
			_, err = tx.Exec(ctx, `SELECT pg_notify($1, $2)`, notifyChannel, fmt.Sprintf("%s:%d", w.UserID, newSeq))
		}
		return err
	})
	s.metrics.Observe(w.Kind.String(), start, err)
	return err
}

// logChanges appends a write's changes to the change log, numbered after
// lastSeq in order.
func logChanges(ctx context.Context, tx pgx.Tx, userID string, lastSeq uint64, changes []feed.Change) error {
	if len(changes) == 0 {
		return nil
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
	_, err := tx.Exec(ctx, `INSERT INTO kronos_changes (user_id, user_seq, kind, task_id, task, device_id, version)
		SELECT $1, s, k, i, t, $6, $7 FROM unnest($2::bigint[], $3::smallint[], $4::bigint[], $5::text[]) AS x(s, k, i, t)`,
		userID, seqs, kinds, ids, tasks, c.DeviceID, string(c.Version))
	return err
}

// pgUserTx is one user's data inside a write transaction. Reads go to the
// database; mutations are collected and written by flush in two
// statements, which apply allows because it reads everything it needs
// before its first mutation.
type pgUserTx struct {
	ctx     context.Context
	tx      pgx.Tx
	userID  string
	version json.RawMessage
	feed.TaskCounter
	puts    map[int64]json.RawMessage
	deletes map[int64]bool
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
	err := u.tx.QueryRow(u.ctx, `SELECT task FROM kronos_tasks WHERE user_id = $1 AND task_id = $2`, u.userID, id).Scan(&task)
	if errors.Is(err, pgx.ErrNoRows) {
		u.Seen(id, false)
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	u.Seen(id, true)
	return json.RawMessage(task), true, nil
}

func (u *pgUserTx) All() ([]feed.Task, error) {
	rows, err := u.tx.Query(u.ctx, `SELECT task_id, task FROM kronos_tasks WHERE user_id = $1 ORDER BY task_id`, u.userID)
	if err != nil {
		return nil, err
	}
	all, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (feed.Task, error) {
		var t feed.Task
		var task string
		err := row.Scan(&t.ID, &task)
		t.Raw = json.RawMessage(task)
		return t, err
	})
	for _, t := range all {
		u.Seen(t.ID, true)
	}
	return all, err
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

func (u *pgUserTx) flush() error {
	if len(u.deletes) > 0 {
		ids := make([]int64, 0, len(u.deletes))
		for id := range u.deletes {
			ids = append(ids, id)
		}
		if _, err := u.tx.Exec(u.ctx, `DELETE FROM kronos_tasks WHERE user_id = $1 AND task_id = ANY($2)`, u.userID, ids); err != nil {
			return err
		}
	}
	if len(u.puts) > 0 {
		ids := make([]int64, 0, len(u.puts))
		tasks := make([]string, 0, len(u.puts))
		for id, raw := range u.puts {
			ids = append(ids, id)
			tasks = append(tasks, string(raw))
		}
		if _, err := u.tx.Exec(u.ctx, `INSERT INTO kronos_tasks (user_id, task_id, task)
			SELECT $1, i, t FROM unnest($2::bigint[], $3::text[]) AS x(i, t)
			ON CONFLICT (user_id, task_id) DO UPDATE SET task = EXCLUDED.task`, u.userID, ids, tasks); err != nil {
			return err
		}
	}
	return nil
}
