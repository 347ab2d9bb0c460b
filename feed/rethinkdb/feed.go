package rethinkdb

import (
	"context"
	"encoding/json"
	"errors"
	"hash/maphash"
	"slices"
	"strconv"
	"sync"
	"time"

	r "gopkg.in/rethinkdb/rethinkdb-go.v6"

	"github.com/kronos-sync/kronos-server/feed"
)

// The node's RethinkDB feed: the watched users are split into rdbShardCount
// shards by user, each with one changefeed over
// tasks.getAll(its users…, {index: "user_id"}).changes(), so that a login
// rebuilds one small feed, not one over every user. Changes in the set of
// users are batched for rdbBatchDelay; a rebuild opens the new feed before
// closing the old one, and the overlap is deduplicated by the documents'
// rev. A feed that breaks cannot be resumed (RethinkDB has no resume
// token): its users' devices are told to re-sync, and the feed reopens with
// backoff. So does a feed that reports it skipped changes.
const (
	rdbShardCount = 8
	rdbBatchDelay = 20 * time.Millisecond
)

type rdbFeeds struct {
	s      *rdbStore
	seed   maphash.Seed
	mu     sync.Mutex
	shards [rdbShardCount]*rdbShard
	kick   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type rdbShard struct {
	users   map[string]int // watch counts
	dirty   bool           // users changed since the feed was opened
	failed  bool           // the feed broke and is not open again yet
	retryAt time.Time
	backoff time.Duration
	waiters []chan struct{} // Watch calls waiting for the next rebuild
	current *rdbRun
	lastRev map[string]int64 // by task document, to drop the overlap's doubles
	pubMu   sync.Mutex       // orders the two runs of an overlap
}

// rdbRun is one open changefeed.
type rdbRun struct {
	cursor   *r.Cursor
	users    []string
	stopping chan struct{}
}

// rdbEvent is one changefeed document.
type rdbEvent struct {
	NewVal *rdbTask `rethinkdb:"new_val"`
	OldVal *rdbTask `rethinkdb:"old_val"`
	Type   string   `rethinkdb:"type"`
	State  string   `rethinkdb:"state"`
	Error  string   `rethinkdb:"error"`
}

func newRDBFeeds(s *rdbStore) *rdbFeeds {
	f := &rdbFeeds{s: s, seed: maphash.MakeSeed(), kick: make(chan struct{}, 1)}
	for i := range f.shards {
		f.shards[i] = &rdbShard{users: map[string]int{}, lastRev: map[string]int64{}}
	}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	f.wg.Add(1)
	go f.manage()
	return f
}

func (f *rdbFeeds) shard(user string) *rdbShard {
	return f.shards[maphash.String(f.seed, user)%rdbShardCount]
}

func (f *rdbFeeds) poke() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// Watch returns once a feed covering the user is open (or failed to open:
// the login goes on and the devices re-sync when the feed is back).
func (s *rdbStore) Watch(ctx context.Context, user string, _ uint64) error {
	f := s.feeds
	f.mu.Lock()
	sh := f.shard(user)
	sh.users[user]++
	if sh.users[user] > 1 {
		f.mu.Unlock()
		return nil
	}
	sh.dirty = true
	ready := make(chan struct{})
	sh.waiters = append(sh.waiters, ready)
	f.mu.Unlock()
	f.poke()
	select {
	case <-ready:
		return nil
	case <-f.ctx.Done():
		return errors.New("rethinkdb store: closed")
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *rdbStore) Unwatch(user string) {
	f := s.feeds
	f.mu.Lock()
	defer f.mu.Unlock()
	sh := f.shard(user)
	if sh.users[user]--; sh.users[user] <= 0 {
		delete(sh.users, user)
		sh.dirty = true // batched: the next rebuild drops the user
	}
}

func (f *rdbFeeds) broken() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, sh := range f.shards {
		if sh.failed {
			n++
		}
	}
	return n
}

func (f *rdbFeeds) manage() {
	defer f.wg.Done()
	tick := time.NewTicker(time.Second) // retries of failed feeds, dropped users
	defer tick.Stop()
	for {
		select {
		case <-f.ctx.Done():
			return
		case <-f.kick:
			time.Sleep(rdbBatchDelay) // let a burst of logins share one rebuild
		case <-tick.C:
		}
		for _, sh := range f.shards {
			f.rebuild(sh)
		}
	}
}

// rebuild reopens a shard's feed if its users changed or it failed: the
// new feed first, then the old one closed.
func (f *rdbFeeds) rebuild(sh *rdbShard) {
	f.mu.Lock()
	if !sh.dirty && !sh.failed || sh.failed && time.Now().Before(sh.retryAt) {
		f.mu.Unlock()
		return
	}
	users := make([]string, 0, len(sh.users))
	for u := range sh.users {
		users = append(users, u)
	}
	slices.Sort(users) // a stable query for a stable set
	waiters := sh.waiters
	sh.waiters, sh.dirty = nil, false
	old := sh.current
	f.mu.Unlock()

	var run *rdbRun
	if len(users) > 0 {
		cursor, err := f.s.table(rdbTasks).GetAll(r.Args(users)).OptArgs(r.GetAllOpts{Index: rdbByUser}).
			Changes(r.ChangesOpts{IncludeTypes: true, IncludeStates: true}).
			Run(f.s.exec, r.RunOpts{Context: f.ctx})
		if err != nil {
			f.s.log.Warn().Err(err).Int("users", len(users)).Msg("opening a changefeed failed")
			f.mu.Lock()
			sh.failed, sh.dirty = true, true
			sh.backoff = min(max(2*sh.backoff, 100*time.Millisecond), 10*time.Second)
			sh.retryAt = time.Now().Add(sh.backoff)
			f.mu.Unlock()
			for _, w := range waiters {
				close(w)
			}
			return
		}
		run = &rdbRun{cursor: cursor, users: users, stopping: make(chan struct{})}
		f.wg.Add(1)
		go f.read(sh, run)
	}
	f.mu.Lock()
	wasFailed := sh.failed
	sh.current, sh.failed, sh.backoff = run, false, 0
	if old == nil {
		clear(sh.lastRev) // no overlap: nothing to deduplicate against
	}
	f.mu.Unlock()
	if old != nil {
		// Before anything else: the old feed's end is not a failure.
		close(old.stopping)
	}
	// The new feed is open: logins waiting for it go on now.
	for _, w := range waiters {
		close(w)
	}
	if wasFailed {
		// Changes made while no feed was open are lost for good.
		f.resync(sh, users)
	}
	if old != nil {
		f.wg.Add(1)
		go func() { // closing waits for the server; the overlap is harmless
			defer f.wg.Done()
			old.cursor.Close()
		}()
	}
}

// read delivers one feed's changes until it ends.
func (f *rdbFeeds) read(sh *rdbShard, run *rdbRun) {
	defer f.wg.Done()
	var ev rdbEvent
	for run.cursor.Next(&ev) {
		switch {
		case ev.Error != "":
			// The feed's queue overflowed and it skipped changes; it goes on.
			f.s.log.Warn().Str("error", ev.Error).Msg("changefeed skipped changes")
			f.resync(sh, run.users)
		case ev.State != "":
		default:
			if c, ok := changeFromEvent(&ev); ok {
				sh.pubMu.Lock()
				if f.fresh(sh, ev.NewVal) {
					f.s.deliver([]feed.Change{c})
				}
				sh.pubMu.Unlock()
			}
		}
		ev = rdbEvent{}
	}
	select {
	case <-run.stopping:
		return // closed by a rebuild
	default:
	}
	if f.ctx.Err() != nil {
		return
	}
	f.s.log.Warn().AnErr("error", run.cursor.Err()).Msg("changefeed broke: its users re-sync")
	f.mu.Lock()
	if sh.current == run {
		sh.current, sh.failed, sh.dirty = nil, true, true
		sh.backoff = min(max(2*sh.backoff, 100*time.Millisecond), 10*time.Second)
		sh.retryAt = time.Now().Add(sh.backoff)
	}
	f.mu.Unlock()
	f.resync(sh, run.users)
}

// fresh reports whether a document version was not delivered yet (the old
// and the new feed of a rebuild both see the overlap). sh.pubMu is held.
func (f *rdbFeeds) fresh(sh *rdbShard, doc *rdbTask) bool {
	key := doc.UserID + "\x00" + strconv.FormatInt(doc.TaskID, 10)
	f.mu.Lock()
	defer f.mu.Unlock()
	if doc.Rev <= sh.lastRev[key] {
		return false
	}
	sh.lastRev[key] = doc.Rev
	return true
}

func (f *rdbFeeds) resync(sh *rdbShard, users []string) {
	if len(users) == 0 {
		return
	}
	changes := make([]feed.Change, len(users))
	for i, u := range users {
		changes[i] = feed.Change{UserID: u, Kind: feed.ChangeResync}
	}
	sh.pubMu.Lock()
	f.s.deliver(changes)
	sh.pubMu.Unlock()
}

// changeFromEvent maps a changefeed document to a notification.
func changeFromEvent(ev *rdbEvent) (feed.Change, bool) {
	n, o := ev.NewVal, ev.OldVal
	if n == nil || ev.Type == "remove" || ev.Type == "initial" {
		return feed.Change{}, false // a tombstone pruned, or not a change
	}
	c := feed.Change{UserID: n.UserID, TaskID: n.TaskID, DeviceID: n.Device, Version: json.RawMessage(n.Version)}
	wasLive := o != nil && !o.Deleted
	switch {
	case n.Deleted && wasLive:
		c.Kind = feed.ChangeDelete
	case n.Deleted:
		return feed.Change{}, false // a tombstone rewritten
	case wasLive:
		c.Kind, c.Task = feed.ChangeUpdate, json.RawMessage(n.Task)
	default:
		c.Kind, c.Task = feed.ChangeCreate, json.RawMessage(n.Task)
	}
	return c, true
}

func (f *rdbFeeds) stop() {
	f.cancel()
	f.mu.Lock()
	var runs []*rdbRun
	for _, sh := range f.shards {
		if sh.current != nil {
			runs = append(runs, sh.current)
			sh.current = nil
		}
	}
	f.mu.Unlock()
	for _, run := range runs {
		close(run.stopping)
		go run.cursor.Close() // ends its reader; the session closes right after
	}
	// A cursor of an unreachable server may not close before its timeout:
	// do not hold the node's stop for it.
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		f.s.log.Warn().Msg("changefeeds did not close within 5s")
	}
}
