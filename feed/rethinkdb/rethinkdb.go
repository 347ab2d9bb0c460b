// Package rethinkdb is the RethinkDB store, shared by the nodes of a
// cluster, with a feed per node filtered to the users connected to it.
//
// RethinkDB is atomic per document only, so every write is ONE document: a
// record in the "writes" table holding all of the write's task changes, its
// version, origin device and the user's sequence numbers. Inserting the
// record, under a primary key [user_id, w] where w is the user's next write
// number, is the commit: two writers that race for the same number cannot
// both insert it (the loser reads what won and tries again), so a user's
// writes form one gap-free order. The tasks and the user's document are
// derived from the records ("rolled forward"): any reader or writer that
// finds a record not yet applied completes it, so a write-all whose node died
// half way is applied whole by the next one, never half.
//
// A node learns of writes through changefeeds over the records of the users
// connected to it, and notifies a record only after table.sync() has
// returned once it was seen, so a notified write is on disk. See feed.go for
// the feed and docs/rethinkdb.md for the whole design and its tests.
//
// Locks: Store.sinkMu guards the Sink only; userLocks.mu guards its map and
// is never held while a user's turn is waited for; a user's turn (userLock)
// is held across that user's write queries, and no other lock is taken
// under it. The feed's locks are described in feed.go.
package rethinkdb

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	r "gopkg.in/rethinkdb/rethinkdb-go.v6"

	"github.com/kronos-sync/kronos-server/feed"
)

// Table and index names.
const (
	tableUsers   = "users"
	tableDevices = "devices"
	tableTasks   = "tasks"
	tableWrites  = "writes"

	indexUser     = "user_id"    // tasks, writes: by user
	indexUserLast = "user_last"  // writes: [user_id, last change seq]
	indexAt       = "at"         // writes: commit time, for pruning
	indexDeleted  = "deleted_at" // tasks: tombstones only, for pruning
)

// ErrClosed is returned by calls made after Close.
var ErrClosed = errors.New("rethinkdb store: closed")

// Store is the RethinkDB store and this node's feed on it.
type Store struct {
	exec   r.QueryExecutor
	db     string
	opts   feed.Options
	limits feed.Limits
	log    zerolog.Logger
	m      *feed.StoreMetrics
	fm     *feed.FeedMetrics
	feed   *feeds

	writers userLocks // one writer at a time per user on this node

	sinkMu sync.Mutex
	sink   feed.Sink

	ctx       context.Context // ends at Close
	cancel    context.CancelFunc
	wg        sync.WaitGroup // the pruner
	closeOnce sync.Once
	closeExec func() error

	// afterPendingRead, a test's hook, runs between reading a user's
	// records not applied yet and confirming them on disk.
	afterPendingRead atomic.Pointer[func()]
}

var (
	_ feed.Store = (*Store)(nil)
	_ feed.Feed  = (*Store)(nil)
)

// Open connects to RethinkDB, sets up the schema and starts the node's
// feeds. It fails when the server cannot be reached; the caller retries.
func Open(ctx context.Context, rawURL string, opts feed.Options) (*Store, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("rethinkdb store: %w: %w", feed.ErrConfig, err)
	}
	cfg, err := parseRethinkURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("rethinkdb store %s: %w: %w", feed.RedactURL(rawURL), feed.ErrConfig, err)
	}
	if cfg.opts.MaxOpen == 0 {
		// Each open changefeed holds a connection; leave room for queries.
		cfg.opts.MaxOpen = 4*shardCount + 16
	}
	if cfg.opts.Timeout == 0 {
		cfg.opts.Timeout = 5 * time.Second
	}
	session, err := r.Connect(cfg.opts)
	if err != nil {
		return nil, fmt.Errorf("rethinkdb store %s: %w", feed.RedactURL(rawURL), err)
	}
	s, err := newStore(ctx, session, cfg.opts.Database, opts)
	if err != nil {
		session.Close()
		return nil, fmt.Errorf("rethinkdb store %s: %w", feed.RedactURL(rawURL), err)
	}
	s.closeExec = func() error { return session.Close() }
	return s, nil
}

// newStore runs on any executor: a session, or the driver's mock.
func newStore(ctx context.Context, exec r.QueryExecutor, db string, opts feed.Options) (*Store, error) {
	opts.SetDefaults()
	s := &Store{
		exec:      exec,
		db:        db,
		opts:      opts,
		limits:    opts.Limits,
		log:       opts.Logger.With().Str("store", "rethinkdb").Logger(),
		closeExec: func() error { return nil },
	}
	if err := s.setup(ctx); err != nil {
		return nil, err
	}
	// Registered once the store is up: a node retries a store that does
	// not answer, and metrics register once.
	s.m = feed.NewStoreMetrics(opts.Registerer, "rethinkdb")
	s.fm = feed.NewFeedMetrics(opts.Registerer)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.feed = newFeeds(s)
	s.wg.Add(1)
	go s.pruneLoop()
	return s, nil
}

func (s *Store) table(name string) r.Term { return r.DB(s.db).Table(name) }

// setup creates what is missing, tolerating nodes that do the same at the
// same time, and waits until the indexes are ready.
func (s *Store) setup(ctx context.Context) error {
	run := func(t r.Term) error {
		err := t.Exec(s.exec, r.ExecOpts{Context: ctx})
		if err != nil && strings.Contains(err.Error(), "already exists") {
			return nil
		}
		return err
	}
	if err := run(r.DBCreate(s.db)); err != nil {
		return fmt.Errorf("create database: %w", err)
	}
	for _, t := range []string{tableUsers, tableDevices, tableTasks, tableWrites} {
		// Hard durability (the default, said explicitly): a write is
		// acknowledged once it is on disk.
		if err := run(r.DB(s.db).TableCreate(t, r.TableCreateOpts{Durability: "hard"})); err != nil {
			return fmt.Errorf("create table %s: %w", t, err)
		}
	}
	indexes := []struct {
		table, name string
		fn          any
	}{
		{tableTasks, indexUser, nil},
		{tableTasks, indexDeleted, nil},
		{tableWrites, indexUser, nil},
		{tableWrites, indexAt, nil},
		{tableWrites, indexUserLast, func(row r.Term) any { return []any{row.Field("user_id"), row.Field("last")} }},
	}
	for _, ix := range indexes {
		t := s.table(ix.table).IndexCreate(ix.name)
		if ix.fn != nil {
			t = s.table(ix.table).IndexCreateFunc(ix.name, ix.fn)
		}
		if err := run(t); err != nil {
			return fmt.Errorf("create index %s.%s: %w", ix.table, ix.name, err)
		}
	}
	for _, t := range []string{tableTasks, tableWrites} {
		if err := s.table(t).IndexWait().Exec(s.exec, r.ExecOpts{Context: ctx}); err != nil {
			return fmt.Errorf("wait for the indexes of %s: %w", t, err)
		}
	}
	return nil
}

// Subscribe implements feed.Feed.
func (s *Store) Subscribe(sink feed.Sink) {
	s.sinkMu.Lock()
	s.sink = sink
	s.sinkMu.Unlock()
}

func (s *Store) deliver(changes []feed.Change) {
	if len(changes) == 0 || s.ctx.Err() != nil {
		return
	}
	s.sinkMu.Lock()
	sink := s.sink
	s.sinkMu.Unlock()
	if sink != nil {
		sink(changes)
	}
}

// Ready implements feed.Store: connected, and every changefeed open.
func (s *Store) Ready(ctx context.Context) error {
	if s.ctx.Err() != nil {
		return ErrClosed
	}
	if !s.exec.IsConnected() {
		return errors.New("not connected")
	}
	return s.feed.healthy()
}

// Close implements feed.Store.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.cancel()
		s.feed.stop()
		s.wg.Wait()
		err = s.closeExec()
	})
	return err
}

// one reads a single value; found is false when it is null.
func (s *Store) one(ctx context.Context, t r.Term, v any) (found bool, err error) {
	cur, err := t.Run(s.exec, r.RunOpts{Context: ctx})
	if err != nil {
		return false, err
	}
	defer cur.Close()
	if cur.IsNil() {
		return false, nil
	}
	err = cur.One(v)
	if errors.Is(err, r.ErrEmptyResult) {
		return false, nil
	}
	return err == nil, err
}

// all reads every row of a sequence into v (a pointer to a slice).
func (s *Store) all(ctx context.Context, t r.Term, v any) error {
	cur, err := t.Run(s.exec, r.RunOpts{Context: ctx})
	if err != nil {
		return err
	}
	defer cur.Close()
	return cur.All(v)
}
