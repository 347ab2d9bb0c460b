package rethinkdb

import (
	"cmp"
	"context"
	"fmt"
	"hash/maphash"
	"slices"
	"sync"
	"time"

	r "gopkg.in/rethinkdb/rethinkdb-go.v6"

	"github.com/kronos-sync/kronos-server/feed"
)

// The node's feed. The watched users are split into shardCount shards by
// user; each shard has one changefeed over
// writes.getAll(its users…, {index: "user_id"}).changes(), so a login
// rebuilds one small feed, not one over every user. Changes in the set of
// users are batched for batchDelay. A rebuild opens the new feed before it
// closes the old one, then reads the new users' records past their starting
// point from the table (catch-up), so nothing falls between a login's read
// and its feed.
//
// Every record, from a changefeed or a catch-up read, goes to one sequencer
// goroutine. It keeps, per watched user, the last change number delivered,
// and hands the Sink only the next ones in order: a record seen twice (two
// feeds overlap in a rebuild, or a catch-up meets the feed) is dropped, and
// a record that skips ahead waits while the missing ones are read from the
// table. A gap that the table cannot fill (pruned) becomes a ChangeResync.
// Before anything is delivered the sequencer runs writes.sync() and re-reads
// the batch's records: a changefeed may show a write before it is on disk,
// and a RethinkDB that crashed and restarted in between would have lost it
// (or another write would now hold its key: the nonce tells them apart).
//
// A feed that breaks, or reports that it skipped changes, marks its shard
// failed: /readyz fails, and the shard reopens with backoff and catches all
// its users up from what they were delivered. Devices lose nothing and need
// not re-sync.
//
// Locks: feeds.mu guards users, the shards and every watch's delivered
// number; it is never held across a query or a channel send.
const (
	shardCount   = 16
	batchDelay   = 20 * time.Millisecond
	maxBackoff   = 10 * time.Second
	maxSeqBatch  = 4096 // records handled per sync
	eventsBuffer = 256  // batches waiting for the sequencer
)

type feeds struct {
	s      *Store
	seed   maphash.Seed
	events chan []recordDoc // to the sequencer
	kick   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	users  map[string]*watch
	shards [shardCount]*shard
}

// watch is a user with devices on this node.
type watch struct {
	count     int
	delivered uint64 // the last change number handed to the Sink
}

type shard struct {
	users   map[string]bool
	catchUp map[string]bool // read from the table once the next feed is open
	dirty   bool            // users changed since the feed was opened
	failed  bool            // the feed broke and is not open again yet
	retryAt time.Time
	backoff time.Duration
	waiters []chan error // Watch calls waiting for the next rebuild
	current *run
}

// run is one open changefeed.
type run struct {
	cursor   *r.Cursor
	stopping chan struct{}
}

// event is one changefeed document.
type event struct {
	NewVal *recordDoc `rethinkdb:"new_val"`
	Type   string     `rethinkdb:"type"`
	State  string     `rethinkdb:"state"`
	Error  string     `rethinkdb:"error"`
}

func newFeeds(s *Store) *feeds {
	f := &feeds{s: s, seed: maphash.MakeSeed(), events: make(chan []recordDoc, eventsBuffer),
		kick: make(chan struct{}, 1), users: map[string]*watch{}}
	for i := range f.shards {
		f.shards[i] = &shard{users: map[string]bool{}, catchUp: map[string]bool{}}
	}
	f.ctx, f.cancel = context.WithCancel(s.ctx)
	f.wg.Add(2)
	go f.manage()
	go f.sequence()
	return f
}

func (f *feeds) shard(user string) *shard {
	return f.shards[maphash.String(f.seed, user)%shardCount]
}

func (f *feeds) poke() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// Watch implements feed.Feed. It returns once a changefeed covering the
// user is open and its catch-up read has started from afterSeq.
func (s *Store) Watch(ctx context.Context, user string, afterSeq uint64) error {
	f := s.feed
	f.mu.Lock()
	if w := f.users[user]; w != nil {
		w.count++
		f.mu.Unlock()
		return nil
	}
	f.users[user] = &watch{count: 1, delivered: afterSeq}
	sh := f.shard(user)
	sh.users[user], sh.catchUp[user], sh.dirty = true, true, true
	done := make(chan error, 1)
	sh.waiters = append(sh.waiters, done)
	f.mu.Unlock()
	f.poke()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		err = ctx.Err()
	case <-f.ctx.Done():
		err = ErrClosed
	}
	if err != nil {
		s.Unwatch(user)
	}
	return err
}

// Unwatch implements feed.Feed. The user leaves its shard's feed at the
// next rebuild (batched); its records are dropped meanwhile.
func (s *Store) Unwatch(user string) {
	f := s.feed
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.users[user]
	if w == nil {
		return
	}
	if w.count--; w.count <= 0 {
		delete(f.users, user)
		sh := f.shard(user)
		delete(sh.users, user)
		delete(sh.catchUp, user)
		sh.dirty = true
	}
}

// healthy reports why the feed is not delivering, if it is not.
func (f *feeds) healthy() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, sh := range f.shards {
		if sh.failed {
			n++
		}
	}
	if n > 0 {
		return fmt.Errorf("%d of %d changefeeds are down", n, shardCount)
	}
	return nil
}

func (f *feeds) manage() {
	defer f.wg.Done()
	tick := time.NewTicker(250 * time.Millisecond) // retries, dropped users
	defer tick.Stop()
	for {
		select {
		case <-f.ctx.Done():
			return
		case <-f.kick:
			// Let a burst of logins share one rebuild.
			select {
			case <-time.After(batchDelay):
			case <-f.ctx.Done():
				return
			}
		case <-tick.C:
		}
		for _, sh := range f.shards {
			f.rebuild(sh)
		}
	}
}

// failShard marks a shard's feed down: it reopens after a backoff and then
// catches every one of its users up.
func (f *feeds) failShard(sh *shard) {
	sh.failed, sh.dirty = true, true
	sh.backoff = min(max(2*sh.backoff, 100*time.Millisecond), maxBackoff)
	sh.retryAt = time.Now().Add(sh.backoff)
	for u := range sh.users {
		sh.catchUp[u] = true
	}
}

// rebuild reopens a shard's feed if its users changed or it failed: the new
// feed first, then the catch-up read, then the old feed closed.
func (f *feeds) rebuild(sh *shard) {
	f.mu.Lock()
	if !sh.dirty || sh.failed && time.Now().Before(sh.retryAt) {
		f.mu.Unlock()
		return
	}
	users := make([]string, 0, len(sh.users))
	for u := range sh.users {
		users = append(users, u)
	}
	slices.Sort(users) // a stable query for a stable set
	var from []any
	for u := range sh.catchUp {
		if w := f.users[u]; w != nil {
			from = append(from, []any{u, w.delivered})
		}
	}
	waiters, wasFailed := sh.waiters, sh.failed
	sh.waiters, sh.dirty = nil, false
	clear(sh.catchUp)
	old := sh.current
	f.mu.Unlock()

	var next *run
	err := func() error {
		if len(users) == 0 {
			return nil
		}
		cursor, err := f.s.table(tableWrites).GetAll(r.Args(users)).OptArgs(r.GetAllOpts{Index: indexUser}).
			Changes(r.ChangesOpts{IncludeTypes: true, IncludeStates: true}).
			Run(f.s.exec, r.RunOpts{Context: f.ctx})
		if err != nil {
			return fmt.Errorf("opening a changefeed: %w", err)
		}
		next = &run{cursor: cursor, stopping: make(chan struct{})}
		f.wg.Add(1)
		go f.read(sh, next)
		if len(from) > 0 {
			var recs []recordDoc
			q := r.Expr(from).ConcatMap(func(p r.Term) any {
				return f.s.table(tableWrites).Between([]any{p.Nth(0), p.Nth(1).Add(1)}, []any{p.Nth(0), r.MaxVal},
					r.BetweenOpts{Index: indexUserLast})
			})
			if err := f.s.all(f.ctx, q, &recs); err != nil {
				return fmt.Errorf("catching up: %w", err)
			}
			f.send(recs)
		}
		return nil
	}()
	f.mu.Lock()
	if err != nil {
		if f.ctx.Err() == nil {
			f.s.log.Warn().Err(err).Int("users", len(users)).Msg("changefeed not open; will retry")
		}
		for _, u := range users {
			sh.catchUp[u] = true // redo those not caught up, at the least
		}
		f.failShard(sh)
		if next != nil {
			close(next.stopping)
			go next.cursor.Close()
		}
		next = old // keep the old feed for its other users meanwhile
	} else {
		sh.current, sh.failed, sh.backoff = next, false, 0
		if wasFailed {
			f.s.fm.Reconnects.Inc()
		}
	}
	f.mu.Unlock()
	for _, w := range waiters {
		w <- err
	}
	if err == nil && old != nil {
		close(old.stopping) // its end is not a failure
		f.wg.Add(1)
		go func() { // closing waits for the server; the overlap is harmless
			defer f.wg.Done()
			old.cursor.Close()
		}()
	}
}

// send hands records to the sequencer.
func (f *feeds) send(recs []recordDoc) {
	if len(recs) == 0 {
		return
	}
	select {
	case f.events <- recs:
	case <-f.ctx.Done():
	}
}

// read passes one feed's records to the sequencer until it ends.
func (f *feeds) read(sh *shard, run *run) {
	defer f.wg.Done()
	var ev event
	broken := ""
	for run.cursor.Next(&ev) {
		switch {
		case ev.Error != "":
			// The feed's queue overflowed and it skipped records: reopen
			// and catch up.
			broken = ev.Error
		case ev.Type == "add" && ev.NewVal != nil:
			f.send([]recordDoc{*ev.NewVal})
		}
		if broken != "" {
			break
		}
		ev = event{}
	}
	select {
	case <-run.stopping:
		return // closed by a rebuild
	default:
	}
	if f.ctx.Err() != nil {
		return
	}
	if broken == "" && run.cursor.Err() != nil {
		broken = run.cursor.Err().Error()
	}
	f.s.log.Warn().Str("error", broken).Msg("changefeed broke; reopening and catching up")
	f.mu.Lock()
	if sh.current == run {
		sh.current = nil
		f.failShard(sh)
	}
	f.mu.Unlock()
	run.cursor.Close()
}

// sequence delivers records in each user's order, once, and only once they
// are on disk.
func (f *feeds) sequence() {
	defer f.wg.Done()
	pending := map[string][]recordDoc{}
	for {
		var batch []recordDoc
		select {
		case <-f.ctx.Done():
			return
		case batch = <-f.events:
		}
	fill:
		for len(batch) < maxSeqBatch {
			select {
			case more := <-f.events:
				batch = append(batch, more...)
			default:
				break fill
			}
		}
		durable, err := f.confirm(batch)
		if err != nil {
			f.recover(err, pending)
			continue
		}
		for _, rec := range durable {
			if rec.Last >= rec.First { // a write that changed no task notifies nothing
				pending[rec.UserID] = append(pending[rec.UserID], rec)
			}
		}
		out, err := f.order(pending)
		if err != nil {
			f.recover(err, pending)
		}
		f.s.deliver(out)
	}
}

// confirm keeps the batch's records that are on disk (onDisk).
func (f *feeds) confirm(batch []recordDoc) ([]recordDoc, error) {
	there, _, err := f.s.onDisk(f.ctx, batch, false)
	if err != nil {
		return nil, err
	}
	durable := batch[:0]
	for i, rec := range batch {
		if there[i] {
			durable = append(durable, rec)
		}
	}
	return durable, nil
}

// recover drops what was not delivered and fails every feed that has
// users: they reopen, and their catch-up reads deliver what is on disk.
// The feed is not healthy until they have.
func (f *feeds) recover(err error, pending map[string][]recordDoc) {
	if f.ctx.Err() != nil {
		return
	}
	f.s.log.Warn().Err(err).Msg("feed lost its server; catching up once it is back")
	clear(pending)
	f.mu.Lock()
	for _, sh := range f.shards {
		if len(sh.users) > 0 {
			f.failShard(sh)
		}
	}
	f.mu.Unlock()
}

// order moves each user's records that come next into the output, reads
// missing ones from the table, and turns an unfillable gap into a resync.
func (f *feeds) order(pending map[string][]recordDoc) ([]feed.Change, error) {
	var out []feed.Change
	for user, recs := range pending {
		f.mu.Lock()
		w := f.users[user]
		var delivered uint64
		if w != nil {
			delivered = w.delivered
		}
		f.mu.Unlock()
		if w == nil {
			delete(pending, user) // unwatched meanwhile
			continue
		}
		recs = slices.DeleteFunc(recs, func(rec recordDoc) bool { return rec.Last <= delivered })
		slices.SortFunc(recs, byFirst)
		if len(recs) > 0 && recs[0].First > delivered+1 {
			// A record is missing: read it, it was committed before those
			// that follow it (and is on disk: the sync covered it).
			var fill []recordDoc
			q := f.s.table(tableWrites).Between([]any{user, delivered + 1}, []any{user, recs[0].First},
				r.BetweenOpts{Index: indexUserLast})
			if err := f.s.all(f.ctx, q, &fill); err != nil {
				return out, err
			}
			fill = slices.DeleteFunc(fill, func(rec recordDoc) bool { return rec.Last < rec.First })
			recs = append(fill, recs...)
			slices.SortFunc(recs, byFirst)
		}
		for len(recs) > 0 && recs[0].First <= delivered+1 {
			if recs[0].Last > delivered {
				for _, c := range recs[0].changes() {
					if c.Seq > delivered {
						out = append(out, c)
					}
				}
				delivered = recs[0].Last
			}
			recs = recs[1:]
		}
		if len(recs) > 0 {
			// Still a gap: the log was pruned past it.
			f.s.fm.Resyncs.Inc()
			f.s.log.Warn().Uint64("expected", delivered+1).Uint64("got", recs[0].First).Msg("change log gap: devices must re-sync")
			out = append(out, feed.Change{UserID: user, Kind: feed.ChangeResync})
			for _, rec := range recs {
				out = append(out, rec.changes()...)
				delivered = rec.Last
			}
		}
		delete(pending, user)
		f.mu.Lock()
		if f.users[user] == w {
			w.delivered = delivered
		}
		f.mu.Unlock()
	}
	return out, nil
}

func byFirst(a, b recordDoc) int { return cmp.Compare(a.First, b.First) }

func (f *feeds) stop() {
	f.cancel()
	f.mu.Lock()
	var runs []*run
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
