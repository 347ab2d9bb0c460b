package bolt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"go.etcd.io/bbolt"

	"github.com/kronos-sync/kronos-server/feed"
)

var (
	_ feed.Dumper = (*Store)(nil)
	_ feed.Loader = (*Store)(nil)
)

// DumpUsers implements feed.Dumper: users in byte order of their ids, read
// in one transaction.
//
// The devices bucket is keyed by device, so each call scans it once to find
// the devices of its users: a call costs one pass over the devices (about
// 50 ns each), which keeps the file's layout as it is at the price of
// O(devices) per page of users.
func (s *Store) DumpUsers(_ context.Context, after string, limit int) ([]feed.UserData, error) {
	var out []feed.UserData
	err := s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketUsers).Cursor()
		k, v := c.Seek([]byte(after))
		if k != nil && string(k) == after {
			k, v = c.Next()
		}
		for ; k != nil && len(out) < limit; k, v = c.Next() {
			u, err := readUser(tx, k, v)
			if err != nil {
				return err
			}
			out = append(out, u)
		}
		return addDevices(tx, out)
	})
	return out, err
}

// LookupUsers implements feed.Dumper.
func (s *Store) LookupUsers(_ context.Context, ids []string) ([]feed.UserData, error) {
	var out []feed.UserData
	err := s.db.View(func(tx *bbolt.Tx) error {
		users := tx.Bucket(bucketUsers)
		for _, id := range ids {
			if v := users.Get([]byte(id)); v != nil {
				u, err := readUser(tx, []byte(id), v)
				if err != nil {
					return err
				}
				out = append(out, u)
			}
		}
		return addDevices(tx, out)
	})
	return out, err
}

// readUser reads a user's version and tasks, copied out of the transaction.
func readUser(tx *bbolt.Tx, id, v []byte) (feed.UserData, error) {
	rec, err := decodeUser(v)
	if err != nil {
		return feed.UserData{}, err
	}
	u := feed.UserData{ID: string(id), Version: bytes.Clone(rec.Version), Tasks: make([]feed.Task, 0, rec.Tasks)}
	if b := tx.Bucket(bucketTasks).Bucket(id); b != nil {
		err = b.ForEach(func(k, v []byte) error {
			u.Tasks = append(u.Tasks, feed.Task{ID: taskIDFromKey(k), Raw: bytes.Clone(v)})
			return nil
		})
	}
	return u, err
}

// addDevices fills in the devices of users in one pass over the bucket.
func addDevices(tx *bbolt.Tx, users []feed.UserData) error {
	if len(users) == 0 {
		return nil
	}
	index := make(map[string]int, len(users))
	for i := range users {
		index[users[i].ID] = i
	}
	err := tx.Bucket(bucketDevices).ForEach(func(device, owner []byte) error {
		if i, ok := index[string(owner)]; ok {
			users[i].Devices = append(users[i].Devices, string(device))
		}
		return nil
	})
	for i := range users {
		slices.Sort(users[i].Devices) // ForEach gives them sorted already; cheap insurance
	}
	return err
}

// Count implements feed.Dumper from the buckets' keys.
func (s *Store) Count(context.Context) (feed.Counts, error) {
	var c feed.Counts
	err := s.db.View(func(tx *bbolt.Tx) error {
		c.Users = int64(tx.Bucket(bucketUsers).Stats().KeyN)
		c.Devices = int64(tx.Bucket(bucketDevices).Stats().KeyN)
		tasks := tx.Bucket(bucketTasks)
		return tasks.ForEachBucket(func(k []byte) error {
			c.Tasks += int64(tasks.Bucket(k).Stats().KeyN)
			return nil
		})
	})
	return c, err
}

// LoadUsers implements feed.Loader: the users of one call are loaded in
// one transaction, through the committer, so that changes to users the
// file already had are numbered and delivered in commit order like any
// write's.
func (s *Store) LoadUsers(ctx context.Context, users []feed.UserData) error {
	return s.submit(ctx, &op{name: "load", run: func(tx *bbolt.Tx) ([]feed.Change, error) {
		// Check before the first mutation: a refusal must change nothing,
		// since the other ops of the batch still commit.
		claimed := map[string]string{}
		devices := tx.Bucket(bucketDevices)
		for _, u := range users {
			for _, d := range u.Devices {
				owner := devices.Get([]byte(d))
				if prev, dup := claimed[d]; dup && prev != u.ID || owner != nil && string(owner) != u.ID {
					return nil, feed.ErrDeviceTaken(d)
				}
				claimed[d] = u.ID
			}
		}
		var changes []feed.Change
		for i := range users {
			c, err := loadOne(tx, &s.seen, &users[i])
			if err != nil {
				return nil, fmt.Errorf("bolt store: loading a user: %w", err)
			}
			changes = append(changes, c...)
		}
		return changes, nil
	}})
}

// loadOne writes one user. A user new to the file starts at Seq 0; one it
// had gets the difference as numbered changes.
func loadOne(tx *bbolt.Tx, seen *seenCache, u *feed.UserData) ([]feed.Change, error) {
	rec, err := loadUser(tx, u.ID)
	isNew := feed.IsCode(err, feed.CodeUserNotFound)
	if err != nil && !isNew {
		return nil, err
	}
	all := tx.Bucket(bucketTasks)
	var changes []feed.Change
	if isNew {
		rec = &userRecord{Version: u.Version, Tasks: len(u.Tasks)}
		if all.Bucket([]byte(u.ID)) != nil { // a user record is written with its tasks: none should be here
			if err := all.DeleteBucket([]byte(u.ID)); err != nil {
				return nil, err
			}
		}
		tasks, err := all.CreateBucket([]byte(u.ID))
		if err != nil {
			return nil, err
		}
		for _, t := range u.Tasks {
			if err := tasks.Put(taskKey(t.ID), t.Raw); err != nil {
				return nil, err
			}
		}
	} else {
		tasks, err := all.CreateBucketIfNotExists([]byte(u.ID))
		if err != nil {
			return nil, err
		}
		if changes, err = feed.Replace(&userTx{rec: rec, tasks: tasks}, u.ID, "", u.Tasks, u.Version); err != nil {
			return nil, err
		}
		for i := range changes {
			rec.Seq++
			changes[i].Seq = rec.Seq
		}
	}
	devices := tx.Bucket(bucketDevices)
	for _, d := range u.Devices {
		if devices.Get([]byte(d)) == nil {
			// Not seen here yet: the first retired at the limit, until it
			// logs in.
			if err := seen.putDevice(tx, u.ID, d, time.Time{}); err != nil {
				return nil, err
			}
			rec.Devices++
		}
	}
	return changes, saveUser(tx, u.ID, rec)
}

// Backup writes a consistent copy of the whole file to w, while the store
// serves: size is called first with the copy's exact length. The copy is
// one read transaction, a snapshot that includes every write committed
// before it began and nothing of those after (each write, a write-all
// included, is one transaction), so it restores to a state that a prefix
// of the writes produced. Writers are not held up; the file cannot reuse
// the pages freed meanwhile, so it may grow during a long copy.
//
// Closing the store ends a copy in progress with an error, so that a stop
// is not held up by a slow reader.
func (s *Store) Backup(ctx context.Context, w io.Writer, size func(int64)) (int64, error) {
	if err := s.Ready(ctx); err != nil {
		return 0, err
	}
	var n int64
	err := s.db.View(func(tx *bbolt.Tx) error {
		size(tx.Size())
		var err error
		n, err = tx.WriteTo(&stoppable{w: w, ctx: ctx, quit: s.quit})
		return err
	})
	return n, err
}

var errBackupStopped = errors.New("bolt store: closing: backup stopped")

// stoppable fails writes once ctx ends or the store closes.
type stoppable struct {
	w    io.Writer
	ctx  context.Context
	quit chan struct{}
}

func (s *stoppable) Write(p []byte) (int, error) {
	select {
	case <-s.quit:
		return 0, errBackupStopped
	case <-s.ctx.Done():
		return 0, s.ctx.Err()
	default:
	}
	return s.w.Write(p)
}

// CheckFile checks that path is a whole Kronos bbolt file: it opens
// read-only, passes bbolt's consistency check, and has the store's
// buckets. It fails if a process holds the file (bbolt's lock), after
// timeout.
func CheckFile(path string, timeout time.Duration) (feed.Counts, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: timeout})
	if err != nil {
		return feed.Counts{}, err
	}
	defer db.Close()
	s := &Store{db: db, quit: make(chan struct{})}
	err = db.View(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketUsers, bucketDevices, bucketTasks} {
			if tx.Bucket(b) == nil {
				return fmt.Errorf("no %q bucket: not a Kronos store", b)
			}
		}
		var first error
		for err := range tx.Check() { // drained: the checker blocks on an unread channel
			if first == nil {
				first = fmt.Errorf("consistency check: %w", err)
			}
		}
		return first
	})
	if err != nil {
		return feed.Counts{}, err
	}
	return s.Count(context.Background())
}
