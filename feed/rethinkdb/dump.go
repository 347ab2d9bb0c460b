package rethinkdb

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	r "gopkg.in/rethinkdb/rethinkdb-go.v6"

	"github.com/kronos-sync/kronos-server/feed"
)

// Moving data in and out (kronos migrate).
//
// Reading: users are read as read-all reads one (the user, its task
// documents, then its records not applied yet), a page at a time, so a
// dump sees every user settled, never half a write.
//
// Loading a user the database lacks: its task documents are written at
// record 0, then its devices, then its user document, last. The user
// document is the commit: until it exists no login or read can reach the
// user, and a load interrupted before it leaves only task and device
// documents of a user that does not exist, which the next load of that
// user deletes or takes over. The user starts at record 0 and change number
// 0, like a user whose records were all pruned.
//
// Loading a user the database has: its missing devices are added (each
// insert is atomic), then the difference of tasks and version is ONE
// record through the write path (the commit, ordered, notified to the
// nodes watching the user), applied before the load returns.
//
// Devices are found by user through a secondary index on devices.user_id,
// created the first time it is needed.

// indexDeviceUser is the devices table's index by user.
const indexDeviceUser = "user_id"

// loadChunk bounds the documents written by one query.
const loadChunk = 1000

var (
	_ feed.Dumper = (*Store)(nil)
	_ feed.Loader = (*Store)(nil)
)

// DumpUsers implements feed.Dumper: users in primary key order.
func (s *Store) DumpUsers(ctx context.Context, after string, limit int) ([]feed.UserData, error) {
	lower := any(after)
	if after == "" {
		lower = r.MinVal
	}
	return again(ctx, func() ([]feed.UserData, error) {
		var docs []userDoc
		err := s.all(ctx, s.table(tableUsers).Between(lower, r.MaxVal, r.BetweenOpts{LeftBound: "open"}).
			OrderBy(r.OrderByOpts{Index: "id"}).Limit(limit), &docs)
		if err != nil {
			return nil, err
		}
		return s.readUsers(ctx, docs)
	})
}

// LookupUsers implements feed.Dumper.
func (s *Store) LookupUsers(ctx context.Context, ids []string) ([]feed.UserData, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	return again(ctx, func() ([]feed.UserData, error) {
		var docs []userDoc
		if err := s.all(ctx, s.table(tableUsers).GetAll(anys(ids)...), &docs); err != nil {
			return nil, err
		}
		return s.readUsers(ctx, docs)
	})
}

// readUsers reads the settled state of users whose documents were just
// read, as readAll reads one user's, but a page at a time and without
// rolling anything forward (a dump only reads): their task documents, then
// their records past each user's w, the newest record winning for each
// task. The order matters as in readAll: a task document newer than its
// user's w was written by a record inserted before it, so it is read.
func (s *Store) readUsers(ctx context.Context, docs []userDoc) ([]feed.UserData, error) {
	if len(docs) == 0 {
		return nil, nil
	}
	ids := make([]any, len(docs))
	applied := make(map[string]any, len(docs)) // user → w
	for i, d := range docs {
		ids[i], applied[d.ID] = d.ID, d.W
	}
	var tasks []taskDoc
	if err := s.all(ctx, s.table(tableTasks).GetAll(ids...).OptArgs(r.GetAllOpts{Index: indexUser}), &tasks); err != nil {
		return nil, err
	}
	var recs []recordDoc
	if err := s.all(ctx, s.table(tableWrites).GetAll(ids...).OptArgs(r.GetAllOpts{Index: indexUser}).
		Filter(func(rec r.Term) r.Term { return rec.Field("w").Gt(r.Expr(applied).Field(rec.Field("user_id"))) }), &recs); err != nil {
		return nil, err
	}
	slices.SortFunc(recs, func(a, b recordDoc) int { return cmp.Compare(a.W, b.W) })
	// Only records on disk, as readAll reads them (keepOnDisk).
	recs, err := s.keepOnDisk(ctx, recs)
	if err != nil {
		return nil, err
	}
	type state struct {
		w    uint64
		task *string
	}
	byUser := make(map[string]map[int64]state, len(docs))
	version := make(map[string]string, len(docs))
	for _, d := range docs {
		byUser[d.ID], version[d.ID] = map[int64]state{}, d.Version
	}
	for _, t := range tasks {
		byUser[t.UserID][t.TaskID] = state{t.W, t.Task}
	}
	for _, rec := range recs {
		states := byUser[rec.UserID]
		for _, op := range rec.ops() {
			id := toInt64(op["id"])
			if cur, ok := states[id]; !ok || cur.w < rec.W {
				var task *string
				if t, ok := op["t"].(string); ok {
					task = &t
				}
				states[id] = state{rec.W, task}
			}
		}
		version[rec.UserID] = rec.Version
	}
	devices, err := s.devicesOf(ctx, ids)
	if err != nil {
		return nil, err
	}
	out := make([]feed.UserData, len(docs))
	for i, d := range docs {
		u := feed.UserData{ID: d.ID, Version: json.RawMessage(version[d.ID]), Devices: devices[d.ID], Tasks: []feed.Task{}}
		for id, st := range byUser[d.ID] {
			if st.task != nil {
				u.Tasks = append(u.Tasks, feed.Task{ID: id, Raw: json.RawMessage(*st.task)})
			}
		}
		slices.SortFunc(u.Tasks, func(a, b feed.Task) int { return cmp.Compare(a.ID, b.ID) })
		slices.Sort(u.Devices)
		out[i] = u
	}
	return out, nil
}

// devicesOf reads the devices of users, by the index on user_id.
func (s *Store) devicesOf(ctx context.Context, ids []any) (map[string][]string, error) {
	out := map[string][]string{}
	var devs []deviceDoc
	err := s.withDeviceIndex(ctx, func() error {
		devs = nil
		return s.all(ctx, s.table(tableDevices).GetAll(ids...).OptArgs(r.GetAllOpts{Index: indexDeviceUser}), &devs)
	})
	for _, d := range devs {
		out[d.UserID] = append(out[d.UserID], d.ID)
	}
	return out, err
}

// withDeviceIndex runs query, creating the index by user on devices first
// if the query finds it missing.
func (s *Store) withDeviceIndex(ctx context.Context, query func() error) error {
	err := query()
	if err == nil || !strings.Contains(err.Error(), "Index `"+indexDeviceUser+"` was not found") {
		return err
	}
	err = s.table(tableDevices).IndexCreate(indexDeviceUser).Exec(s.exec, r.ExecOpts{Context: ctx})
	if err != nil && !strings.Contains(err.Error(), "already exists") {
		return fmt.Errorf("create index devices.%s: %w", indexDeviceUser, err)
	}
	if err := s.table(tableDevices).IndexWait(indexDeviceUser).Exec(s.exec, r.ExecOpts{Context: ctx}); err != nil {
		return fmt.Errorf("wait for index devices.%s: %w", indexDeviceUser, err)
	}
	return query()
}

// Count implements feed.Dumper: documents, tombstones left out. (Tasks of
// a record that a crashed writer left unapplied are counted once a reader
// or writer of the user applies it.)
func (s *Store) Count(ctx context.Context) (feed.Counts, error) {
	var c struct {
		Users   int64 `rethinkdb:"users"`
		Devices int64 `rethinkdb:"devices"`
		Tasks   int64 `rethinkdb:"tasks"`
	}
	_, err := s.one(ctx, r.Expr(map[string]any{
		"users":   s.table(tableUsers).Count(),
		"devices": s.table(tableDevices).Count(),
		"tasks":   s.table(tableTasks).Filter(func(t r.Term) r.Term { return t.Field("task").Ne(nil) }).Count(),
	}), &c)
	return feed.Counts{Users: c.Users, Devices: c.Devices, Tasks: c.Tasks}, err
}

// LoadUsers implements feed.Loader (see the top of this file).
func (s *Store) LoadUsers(ctx context.Context, users []feed.UserData) error {
	start := time.Now()
	err := s.load(ctx, users)
	s.m.Observe("load", start, err)
	return err
}

func (s *Store) load(ctx context.Context, users []feed.UserData) error {
	if len(users) == 0 {
		return nil
	}
	ids := make([]any, len(users))
	var deviceIDs []any
	owner := map[string]string{}
	for i, u := range users {
		ids[i] = u.ID
		for _, d := range u.Devices {
			if prev, dup := owner[d]; dup && prev != u.ID {
				return feed.ErrDeviceTaken(d)
			}
			owner[d] = u.ID
			deviceIDs = append(deviceIDs, d)
		}
	}
	if len(deviceIDs) > 0 {
		var devs []deviceDoc
		if err := s.all(ctx, s.table(tableDevices).GetAll(deviceIDs...), &devs); err != nil {
			return err
		}
		for _, d := range devs {
			if owner[d.ID] != d.UserID {
				return feed.ErrDeviceTaken(d.ID)
			}
		}
	}
	var docs []userDoc
	if err := s.all(ctx, s.table(tableUsers).GetAll(ids...), &docs); err != nil {
		return err
	}
	existing := make(map[string]bool, len(docs))
	for _, d := range docs {
		existing[d.ID] = true
	}
	var fresh []*feed.UserData
	for i := range users {
		if existing[users[i].ID] {
			if err := s.loadExisting(ctx, &users[i]); err != nil {
				return err
			}
		} else {
			fresh = append(fresh, &users[i])
		}
	}
	return s.insertUsers(ctx, fresh)
}

// insertUsers loads users the database lacks: leftovers of an interrupted
// load out, task documents, devices, and the user documents last.
func (s *Store) insertUsers(ctx context.Context, users []*feed.UserData) error {
	if len(users) == 0 {
		return nil
	}
	ids := make([]any, len(users))
	var tasks, devices, userDocs []any
	for i, u := range users {
		ids[i] = u.ID
		for _, t := range u.Tasks {
			tasks = append(tasks, map[string]any{"id": taskKey(u.ID, t.ID), "user_id": u.ID, "task_id": t.ID,
				"task": string(t.Raw), "w": 0})
		}
		for _, d := range u.Devices {
			devices = append(devices, deviceDoc{ID: d, UserID: u.ID})
		}
		userDocs = append(userDocs, userDoc{ID: u.ID, Version: string(u.Version), Tasks: len(u.Tasks), Devices: len(u.Devices)})
	}
	// Nothing can read a user without its document: what is there is an
	// interrupted load's, or older.
	for _, t := range []string{tableTasks, tableWrites} {
		if err := s.table(t).GetAll(ids...).OptArgs(r.GetAllOpts{Index: indexUser}).Delete().
			Exec(s.exec, r.ExecOpts{Context: ctx}); err != nil {
			return fmt.Errorf("clearing leftovers: %w", err)
		}
	}
	if err := s.insertChunks(ctx, tableTasks, tasks, "replace"); err != nil {
		return err
	}
	if err := s.insertDevices(ctx, devices); err != nil {
		return err
	}
	return s.insertChunks(ctx, tableUsers, userDocs, "error")
}

// insertChunks inserts docs, loadChunk at a time, durably.
func (s *Store) insertChunks(ctx context.Context, table string, docs []any, conflict any) error {
	for chunk := range slices.Chunk(docs, loadChunk) {
		_, err := s.table(table).Insert(chunk, r.InsertOpts{Conflict: conflict, Durability: "hard"}).
			RunWrite(s.exec, r.RunOpts{Context: ctx})
		if err != nil {
			return fmt.Errorf("inserting into %s: %w", table, err)
		}
	}
	return nil
}

// errDeviceOwned is raised by the server when a device belongs to another
// user (checked before, but a login may have claimed it since).
const errDeviceOwned = "kronos: device belongs to another user"

// insertDevices claims devices: one already the user's is kept, one of
// another user fails the insert.
func (s *Store) insertDevices(ctx context.Context, devices []any) error {
	keep := func(_, old, new r.Term) any {
		return r.Branch(old.Field("user_id").Eq(new.Field("user_id")), old, r.Error(errDeviceOwned))
	}
	err := s.insertChunks(ctx, tableDevices, devices, keep)
	if err != nil && strings.Contains(err.Error(), errDeviceOwned) {
		return feed.ErrDeviceTaken("(claimed meanwhile)")
	}
	return err
}

// loadExisting adds a user's missing devices, then writes the difference
// of its tasks and version as one record, like Write.
func (s *Store) loadExisting(ctx context.Context, u *feed.UserData) error {
	if len(u.Devices) > 0 {
		devices := make([]any, len(u.Devices))
		for i, d := range u.Devices {
			devices[i] = deviceDoc{ID: d, UserID: u.ID}
		}
		keep := func(_, old, new r.Term) any {
			return r.Branch(old.Field("user_id").Eq(new.Field("user_id")), old, r.Error(errDeviceOwned))
		}
		res, err := s.table(tableDevices).Insert(devices, r.InsertOpts{Conflict: keep, Durability: "hard"}).
			RunWrite(s.exec, r.RunOpts{Context: ctx})
		if err != nil {
			if strings.Contains(err.Error(), errDeviceOwned) {
				return feed.ErrDeviceTaken("(claimed meanwhile)")
			}
			return err
		}
		if res.Inserted > 0 {
			// Not atomic with the inserts: a load interrupted here leaves
			// the count short, as a node dying in registerDevice does.
			if err := s.table(tableUsers).Get(u.ID).Update(map[string]any{"devices": r.Row.Field("devices").Add(res.Inserted)}).
				Exec(s.exec, r.ExecOpts{Context: ctx}); err != nil {
				return err
			}
		}
	}
	defer s.writers.lock(u.ID)()
	w := &feed.Write{UserID: u.ID} // the origin device of the changes: none
	rec, err := s.commit(ctx, u.ID, func(user userDoc, tx *userTx) (*recordDoc, error) {
		changes, err := feed.Replace(tx, u.ID, "", u.Tasks, u.Version)
		if err != nil || len(changes) == 0 && string(tx.version) == user.Version {
			return nil, err // nothing to do: already there
		}
		return tx.record(user, w, changes), nil
	})
	if err != nil || rec == nil {
		return err
	}
	// Unlike a write, a load applies its record before it returns, so that
	// what it loaded is counted at once.
	return s.applyRecord(ctx, rec)
}

func anys(ids []string) []any {
	out := make([]any, len(ids))
	for i, id := range ids {
		out[i] = id
	}
	return out
}
