package rethinkdb

import (
	"context"
	"time"

	r "gopkg.in/rethinkdb/rethinkdb-go.v6"
)

// pruneBatch bounds the records one pruning round looks at.
const pruneBatch = 5000

// pruneLoop deletes records older than the retention once they are applied,
// and tombstones as old. Every node prunes; deletes of the same documents
// are harmless. (The row cap of the change log applies to PostgreSQL
// only: counting a RethinkDB table is a full scan.)
func (s *Store) pruneLoop() {
	defer s.wg.Done()
	tick := time.NewTicker(s.opts.PruneInterval)
	defer tick.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-tick.C:
		}
		n, err := s.prune(s.ctx, time.Now().Add(-s.opts.ChangeLogRetention))
		if err != nil && s.ctx.Err() == nil {
			s.log.Warn().Err(err).Msg("pruning the change log failed")
		}
		s.fm.Pruned.Add(float64(n))
	}
}

// prune removes records committed before cutoff, after applying any that a
// crash left unapplied (a record is the only copy of its write until then),
// and tombstones deleted before cutoff.
func (s *Store) prune(ctx context.Context, cutoff time.Time) (int, error) {
	var old []struct {
		UserID string `rethinkdb:"user_id"`
		W      uint64 `rethinkdb:"w"`
	}
	q := s.table(tableWrites).Between(r.MinVal, cutoff, r.BetweenOpts{Index: indexAt}).Limit(pruneBatch).Pluck("user_id", "w")
	if err := s.all(ctx, q, &old); err != nil {
		return 0, err
	}
	newest := map[string]uint64{}
	for _, rec := range old {
		newest[rec.UserID] = max(newest[rec.UserID], rec.W)
	}
	applied := map[string]uint64{}
	for user, w := range newest {
		u, err := s.rollForward(ctx, user)
		if err != nil {
			continue // not applied: keep its records
		}
		applied[user] = min(w, u.W)
	}
	var keys []any
	for _, rec := range old {
		if rec.W <= applied[rec.UserID] {
			keys = append(keys, recordKey(rec.UserID, rec.W))
		}
	}
	deleted := 0
	if len(keys) > 0 {
		res, err := s.table(tableWrites).GetAll(r.Args(keys)).Delete().RunWrite(s.exec, r.RunOpts{Context: ctx})
		if err != nil {
			return 0, err
		}
		deleted = res.Deleted
	}
	_, err := s.table(tableTasks).Between(r.MinVal, cutoff, r.BetweenOpts{Index: indexDeleted}).Delete().
		RunWrite(s.exec, r.RunOpts{Context: ctx})
	return deleted, err
}
