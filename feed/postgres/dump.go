package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/kronos-sync/kronos-server/feed"
)

var (
	_ feed.Dumper = (*Store)(nil)
	_ feed.Loader = (*Store)(nil)
)

// readOnly is one snapshot: a user's row, devices and tasks agree.
var readOnly = pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}

// DumpUsers implements feed.Dumper: users in the order of the primary key
// (the database's collation), each page read in one snapshot.
func (s *Store) DumpUsers(ctx context.Context, after string, limit int) ([]feed.UserData, error) {
	var out []feed.UserData
	err := pgx.BeginTxFunc(ctx, s.pool, readOnly, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT user_id, version FROM kronos_users WHERE user_id > $1 ORDER BY user_id LIMIT $2`, after, limit)
		if err != nil {
			return err
		}
		if out, err = collectUsers(rows); err != nil {
			return err
		}
		return fillUsers(ctx, tx, out)
	})
	return out, err
}

// LookupUsers implements feed.Dumper.
func (s *Store) LookupUsers(ctx context.Context, ids []string) ([]feed.UserData, error) {
	var out []feed.UserData
	err := pgx.BeginTxFunc(ctx, s.pool, readOnly, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT user_id, version FROM kronos_users WHERE user_id = ANY($1)`, ids)
		if err != nil {
			return err
		}
		if out, err = collectUsers(rows); err != nil {
			return err
		}
		return fillUsers(ctx, tx, out)
	})
	return out, err
}

func collectUsers(rows pgx.Rows) ([]feed.UserData, error) {
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (feed.UserData, error) {
		var u feed.UserData
		var version string
		err := row.Scan(&u.ID, &version)
		u.Version = json.RawMessage(version)
		return u, err
	})
}

// fillUsers reads the devices and tasks of users, two queries in all.
func fillUsers(ctx context.Context, tx pgx.Tx, users []feed.UserData) error {
	if len(users) == 0 {
		return nil
	}
	ids := make([]string, len(users))
	index := make(map[string]*feed.UserData, len(users))
	for i := range users {
		ids[i] = users[i].ID
		index[ids[i]] = &users[i]
		users[i].Tasks = []feed.Task{}
	}
	rows, err := tx.Query(ctx, `SELECT user_id, device_id FROM kronos_devices WHERE user_id = ANY($1)`, ids)
	if err != nil {
		return err
	}
	var user, device string
	_, err = pgx.ForEachRow(rows, []any{&user, &device}, func() error {
		index[user].Devices = append(index[user].Devices, device)
		return nil
	})
	if err != nil {
		return err
	}
	rows, err = tx.Query(ctx, `SELECT user_id, task_id, task FROM kronos_tasks WHERE user_id = ANY($1) ORDER BY user_id, task_id`, ids)
	if err != nil {
		return err
	}
	var id int64
	var task string
	_, err = pgx.ForEachRow(rows, []any{&user, &id, &task}, func() error {
		u := index[user]
		u.Tasks = append(u.Tasks, feed.Task{ID: id, Raw: json.RawMessage(task)})
		return nil
	})
	for i := range users {
		slices.Sort(users[i].Devices) // byte order, whatever the collation
	}
	return err
}

// Count implements feed.Dumper.
func (s *Store) Count(ctx context.Context) (feed.Counts, error) {
	var c feed.Counts
	err := s.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM kronos_users), (SELECT count(*) FROM kronos_devices),
		(SELECT count(*) FROM kronos_tasks)`).Scan(&c.Users, &c.Devices, &c.Tasks)
	return c, err
}

// LoadUsers implements feed.Loader: the users of one call are loaded in one
// transaction. New users are inserted in bulk at change number 0; users the
// database had get the difference as one logged, notified write each.
func (s *Store) LoadUsers(ctx context.Context, users []feed.UserData) error {
	start := time.Now()
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		ids := make([]string, len(users))
		var devices, owners []string
		for i, u := range users {
			ids[i] = u.ID
			for _, d := range u.Devices {
				devices, owners = append(devices, d), append(owners, u.ID)
			}
		}
		var taken string
		err := tx.QueryRow(ctx, `SELECT d.device_id FROM kronos_devices d
			JOIN unnest($1::text[], $2::text[]) AS x(device_id, user_id) ON d.device_id = x.device_id
			WHERE d.user_id <> x.user_id LIMIT 1`, devices, owners).Scan(&taken)
		if err == nil {
			return feed.ErrDeviceTaken(taken)
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT user_id, version, task_count, last_seq FROM kronos_users
			WHERE user_id = ANY($1) ORDER BY user_id FOR UPDATE`, ids)
		if err != nil {
			return err
		}
		existing := map[string]*pgUserRow{}
		var row pgUserRow
		if _, err := pgx.ForEachRow(rows, []any{&row.id, &row.version, &row.tasks, &row.seq}, func() error {
			r := row
			existing[r.id] = &r
			return nil
		}); err != nil {
			return err
		}
		var fresh []*feed.UserData
		for i := range users {
			if r := existing[users[i].ID]; r != nil {
				if err := s.loadExisting(ctx, tx, &users[i], r); err != nil {
					return err
				}
			} else {
				fresh = append(fresh, &users[i])
			}
		}
		if err := insertUsers(ctx, tx, fresh); err != nil {
			return err
		}
		// Every device is the user's now or free: claim the free ones and
		// count what each user gained.
		_, err = tx.Exec(ctx, `WITH added AS (
				INSERT INTO kronos_devices (device_id, user_id) SELECT * FROM unnest($1::text[], $2::text[])
				ON CONFLICT (device_id) DO NOTHING RETURNING user_id)
			UPDATE kronos_users u SET device_count = u.device_count + a.n
			FROM (SELECT user_id, count(*) AS n FROM added GROUP BY user_id) a WHERE u.user_id = a.user_id`, devices, owners)
		return err
	})
	s.metrics.Observe("load", start, err)
	return err
}

type pgUserRow struct {
	id, version string
	tasks       int
	seq         int64
}

// insertUsers inserts users new to the database, with their tasks, in two
// statements.
func insertUsers(ctx context.Context, tx pgx.Tx, users []*feed.UserData) error {
	if len(users) == 0 {
		return nil
	}
	var ids, versions, taskUsers, tasks []string
	var counts []int32
	var taskIDs []int64
	for _, u := range users {
		ids, versions, counts = append(ids, u.ID), append(versions, string(u.Version)), append(counts, int32(len(u.Tasks)))
		for _, t := range u.Tasks {
			taskUsers, taskIDs, tasks = append(taskUsers, u.ID), append(taskIDs, t.ID), append(tasks, string(t.Raw))
		}
	}
	if _, err := tx.Exec(ctx, `INSERT INTO kronos_users (user_id, version, task_count)
		SELECT * FROM unnest($1::text[], $2::text[], $3::integer[])`, ids, versions, counts); err != nil {
		return fmt.Errorf("inserting users: %w", err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO kronos_tasks (user_id, task_id, task)
		SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])`, taskUsers, taskIDs, tasks); err != nil {
		return fmt.Errorf("inserting tasks: %w", err)
	}
	return nil
}

// loadExisting runs the difference between a user's stored data and u as
// one write, as Write does: logged, numbered after last_seq and notified.
func (s *Store) loadExisting(ctx context.Context, tx pgx.Tx, u *feed.UserData, row *pgUserRow) error {
	ut := &pgUserTx{ctx: ctx, q: tx, userID: u.ID, version: json.RawMessage(row.version),
		TaskCounter: feed.NewTaskCounter(row.tasks), puts: map[int64]json.RawMessage{}, deletes: map[int64]bool{}}
	changes, err := feed.Replace(ut, u.ID, "", u.Tasks, u.Version)
	if err != nil {
		return err
	}
	if len(changes) == 0 && string(ut.version) == row.version {
		return nil
	}
	b := &pgx.Batch{}
	ut.flush(b)
	logChanges(b, u.ID, uint64(row.seq), changes)
	newSeq := row.seq + int64(len(changes))
	b.Queue(`UPDATE kronos_users SET version = $2, task_count = $3, last_seq = $4 WHERE user_id = $1`,
		u.ID, string(ut.version), ut.Count, newSeq)
	if len(changes) > 0 {
		b.Queue(`SELECT pg_notify($1, $2)`, notifyChannel, fmt.Sprintf("%s:%d", u.ID, newSeq))
	}
	return tx.SendBatch(ctx, b).Close()
}
