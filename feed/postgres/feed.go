package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/kronos-sync/kronos-server/feed"
)

// fetchLimit bounds the change rows read in one query; fetchLimitSQL is
// the same, written into the queries.
const (
	fetchLimit    = 5000
	fetchLimitSQL = "5000"
)

// Watch implements feed.Feed. It does not block: the feed reads the
// user's log from afterSeq, so nothing committed after the login's read can
// be missed, whatever the listen connection is doing.
func (s *Store) Watch(ctx context.Context, userID string, afterSeq uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.ctx.Err() != nil {
		return errClosed
	}
	s.mu.Lock()
	w := s.watched[userID]
	if w != nil {
		// Changes after its delivered point reach the new watcher's session
		// too; those before were delivered after the session registered.
		w.count++
		s.mu.Unlock()
		return nil
	}
	s.watched[userID] = &watch{count: 1, delivered: afterSeq}
	s.pending[userID] = true // changes may have come before the watch
	s.mu.Unlock()
	s.signal()
	return nil
}

var errClosed = errors.New("postgres store: closed")

// Unwatch implements feed.Feed.
func (s *Store) Unwatch(userID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w := s.watched[userID]; w != nil {
		if w.count--; w.count <= 0 {
			delete(s.watched, userID)
			delete(s.pending, userID)
		}
	}
}

func (s *Store) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// markAllPending makes the next fetch read every watched user's log: after
// the listen connection was down, any of them may have missed a NOTIFY.
func (s *Store) markAllPending() {
	s.mu.Lock()
	for user := range s.watched {
		s.pending[user] = true
	}
	s.mu.Unlock()
	s.signal()
}

// listenLoop keeps one LISTEN connection open, reconnecting with backoff.
func (s *Store) listenLoop() {
	defer s.wg.Done()
	backoff := 100 * time.Millisecond
	for s.ctx.Err() == nil {
		err := s.listenOnce()
		s.listening.Store(false)
		if s.ctx.Err() != nil {
			return
		}
		s.log.Warn().Err(err).Dur("retry_in", backoff).Msg("listen connection lost")
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (s *Store) listenOnce() error {
	conn, err := pgx.ConnectConfig(s.ctx, s.listen)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(s.ctx))
	if _, err := conn.Exec(s.ctx, "LISTEN "+notifyChannel); err != nil {
		return err
	}
	s.listening.Store(true)
	s.feed.Reconnects.Inc()
	s.log.Info().Msg("listening for changes")
	// Whatever was committed while no connection listened is in the log.
	s.markAllPending()
	for {
		n, err := conn.WaitForNotification(s.ctx)
		if err != nil {
			return err
		}
		sep := strings.LastIndexByte(n.Payload, ':')
		if sep < 0 {
			continue
		}
		user := n.Payload[:sep]
		seq, err := strconv.ParseUint(n.Payload[sep+1:], 10, 64)
		if err != nil {
			continue
		}
		s.mu.Lock()
		if w := s.watched[user]; w != nil && seq > w.delivered {
			s.pending[user] = true
			s.signal()
		}
		s.mu.Unlock()
	}
}

// fetchLoop reads the log of users with pending changes and hands the rows
// to the sink in user_seq order. It is the only goroutine that advances
// delivered, so each change is delivered once.
func (s *Store) fetchLoop() {
	defer s.wg.Done()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.wake:
		}
		for s.fetchPending() {
		}
	}
}

// fetchPending reads one round; it reports whether another is needed.
func (s *Store) fetchPending() bool {
	s.mu.Lock()
	var users []string
	var after []int64
	for user := range s.pending {
		w := s.watched[user]
		if w == nil {
			delete(s.pending, user)
			continue
		}
		delete(s.pending, user)
		users = append(users, user)
		after = append(after, int64(w.delivered))
	}
	s.mu.Unlock()
	if len(users) == 0 {
		return false
	}
	ctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
	defer cancel()
	changes, err := s.readLog(ctx, users, after)
	if err != nil {
		if s.ctx.Err() == nil {
			s.log.Warn().Err(err).Msg("reading the change log failed; will retry")
			s.mu.Lock()
			for _, u := range users {
				s.pending[u] = true
			}
			s.mu.Unlock()
			time.AfterFunc(time.Second, s.signal)
		}
		return false
	}
	out := s.checkGaps(changes, users, after)
	s.deliver(out)
	if len(changes) == fetchLimit {
		s.mu.Lock()
		for _, u := range users {
			s.pending[u] = true
		}
		s.mu.Unlock()
		return true
	}
	return false
}

// The change log is read by index probes, one per user, whatever the
// planner knows of the table (a fresh schema has no statistics) and however
// long the log: the key (user_id, user_seq) bounds each user's scan. One
// user, the usual fetch, is a plain range scan, whose generic plan the
// server keeps; several are probed from a LATERAL join, so that no plan can
// walk the log's index from its start to merge it with the user list (the
// generic plan of a join with the list did, reading a share of the whole
// log for each fetch). The limit is a constant for the same reason: a
// parameter's value is unknown to a generic plan.
const (
	readLogOne = `SELECT user_id, user_seq, kind, task_id, task, device_id, version
		FROM kronos_changes WHERE user_id = $1 AND user_seq > $2
		ORDER BY user_seq LIMIT ` + fetchLimitSQL
	readLogMany = `SELECT c.user_id, c.user_seq, c.kind, c.task_id, c.task, c.device_id, c.version
		FROM unnest($1::text[], $2::bigint[]) AS w(user_id, after)
		CROSS JOIN LATERAL (SELECT * FROM kronos_changes c
			WHERE c.user_id = w.user_id AND c.user_seq > w.after
			ORDER BY c.user_seq LIMIT ` + fetchLimitSQL + `) c
		ORDER BY c.user_id, c.user_seq
		LIMIT ` + fetchLimitSQL
)

func (s *Store) readLog(ctx context.Context, users []string, after []int64) ([]feed.Change, error) {
	var rows pgx.Rows
	var err error
	if len(users) == 1 {
		rows, err = s.pool.Query(ctx, readLogOne, users[0], after[0])
	} else {
		rows, err = s.pool.Query(ctx, readLogMany, users, after)
	}
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (feed.Change, error) {
		var c feed.Change
		var seq int64
		var kind int16
		var task *string
		var version string
		err := row.Scan(&c.UserID, &seq, &kind, &c.TaskID, &task, &c.DeviceID, &version)
		c.Seq, c.Kind, c.Version = uint64(seq), feed.ChangeKind(kind), json.RawMessage(version)
		if task != nil {
			c.Task = json.RawMessage(*task)
		}
		return c, err
	})
}

// checkGaps advances delivered past the rows read. A user whose next row is
// not delivered+1 lost changes to pruning: it gets a ChangeResync instead,
// so its devices re-sync rather than silently miss them.
func (s *Store) checkGaps(changes []feed.Change, users []string, after []int64) []feed.Change {
	expected := make(map[string]uint64, len(users))
	for i, u := range users {
		expected[u] = uint64(after[i]) + 1
	}
	out := make([]feed.Change, 0, len(changes))
	resynced := map[string]bool{}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range changes {
		w := s.watched[c.UserID]
		if w == nil {
			continue // unwatched meanwhile
		}
		if c.Seq != expected[c.UserID] && !resynced[c.UserID] {
			resynced[c.UserID] = true
			s.feed.Resyncs.Inc()
			s.log.Warn().Uint64("expected", expected[c.UserID]).Uint64("got", c.Seq).Msg("change log gap: devices must re-sync")
			out = append(out, feed.Change{UserID: c.UserID, Kind: feed.ChangeResync})
		}
		expected[c.UserID] = c.Seq + 1
		w.delivered = max(w.delivered, c.Seq)
		if !resynced[c.UserID] {
			out = append(out, c)
		}
	}
	return out
}

// pruneLoop deletes change log rows older than the retention, and the
// oldest past the row cap. One node at a time does it.
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
		n, err := s.prune(s.ctx)
		if err != nil && s.ctx.Err() == nil {
			s.log.Warn().Err(err).Msg("pruning the change log failed")
		}
		s.feed.Pruned.Add(float64(n))
	}
}

func (s *Store) prune(ctx context.Context) (int64, error) {
	var total int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var got bool
		if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1)`, migrationLockKey+1).Scan(&got); err != nil || !got {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM kronos_changes WHERE created_at < now() - make_interval(secs => $1)`,
			s.opts.ChangeLogRetention.Seconds())
		if err != nil {
			return err
		}
		total += tag.RowsAffected()
		tag, err = tx.Exec(ctx, `DELETE FROM kronos_changes WHERE seq <= (
			SELECT seq FROM kronos_changes ORDER BY seq DESC OFFSET $1 LIMIT 1)`, s.opts.ChangeLogMaxRows)
		total += tag.RowsAffected()
		return err
	})
	return total, err
}
