package feed

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
)

// memTx is a UserTx held in a map. It records every mutation, so that a
// test can tell a refused write changed nothing, and keeps its count with a
// TaskCounter as the backends do, so that the count can be checked against
// the map.
type memTx struct {
	TaskCounter
	tasks   map[int64]json.RawMessage
	version json.RawMessage
	log     []string         // mutations in order: "put 3 {…}", "delete 3", "version 5"
	fail    map[string]error // method ("get", "all", "put", "delete", "version") → its error
	nolog   bool             // benchmarks: formatting the log would cost more than Apply
}

func (tx *memTx) record(format string, args ...any) {
	if !tx.nolog {
		tx.log = append(tx.log, fmt.Sprintf(format, args...))
	}
}

func newMemTx(t testing.TB, version string, tasks ...string) *memTx {
	tx := &memTx{tasks: map[int64]json.RawMessage{}, fail: map[string]error{}}
	if version != "" {
		tx.version = json.RawMessage(version)
	}
	for _, s := range tasks {
		task, err := ParseTask([]byte(s), 1<<20)
		if err != nil {
			t.Fatalf("bad test task %s: %v", s, err)
		}
		tx.tasks[task.ID] = task.Raw
	}
	tx.TaskCounter = NewTaskCounter(len(tx.tasks))
	return tx
}

func (tx *memTx) Version() json.RawMessage { return tx.version }

func (tx *memTx) Get(id int64) (json.RawMessage, bool, error) {
	if err := tx.fail["get"]; err != nil {
		return nil, false, err
	}
	raw, ok := tx.tasks[id]
	tx.Seen(id, ok)
	return raw, ok, nil
}

func (tx *memTx) All() ([]Task, error) {
	if err := tx.fail["all"]; err != nil {
		return nil, err
	}
	var all []Task
	for _, id := range slices.Sorted(maps.Keys(tx.tasks)) {
		tx.Seen(id, true)
		all = append(all, Task{ID: id, Raw: tx.tasks[id]})
	}
	return all, nil
}

func (tx *memTx) Put(id int64, raw json.RawMessage) error {
	tx.record("put %d %s", id, raw)
	if err := tx.fail["put"]; err != nil {
		return err
	}
	tx.tasks[id] = slices.Clone(raw)
	tx.Added(id)
	return nil
}

func (tx *memTx) Delete(id int64) error {
	tx.record("delete %d", id)
	if err := tx.fail["delete"]; err != nil {
		return err
	}
	delete(tx.tasks, id)
	tx.Removed(id)
	return nil
}

func (tx *memTx) SetVersion(v json.RawMessage) error {
	tx.record("version %s", v)
	if err := tx.fail["version"]; err != nil {
		return err
	}
	tx.version = slices.Clone(v)
	return nil
}

// state is the user's data in one string, to compare before and after.
func (tx *memTx) state() string {
	var b strings.Builder
	fmt.Fprintf(&b, "version %s;", tx.version)
	for _, id := range slices.Sorted(maps.Keys(tx.tasks)) {
		fmt.Fprintf(&b, " %s", tx.tasks[id])
	}
	return b.String()
}

func tasksOf(t testing.TB, list ...string) []Task {
	t.Helper()
	out := []Task{}
	for _, s := range list {
		task, err := ParseTask([]byte(s), 1<<20)
		if err != nil {
			t.Fatalf("bad test task %s: %v", s, err)
		}
		out = append(out, task)
	}
	return out
}

// applyCase is one write on a user's data. changes are "kind id task" (no
// task for a delete); tasks and version the data after it. A refusal
// (code not 0) must leave the data as it was, with no mutation at all.
type applyCase struct {
	name    string
	version string   // stored version; "" for none
	stored  []string // stored tasks
	limits  Limits   // zero fields: the defaults
	write   Write    // UserID and DeviceID are filled in

	changes []string
	tasks   []string // the tasks after the write, in id order
	after   string   // the version after the write

	code ErrorCode
	err  string
}

func create(task, version string) Write {
	return Write{Kind: WriteCreate, Task: json.RawMessage(task), Version: rawOrNil(version)}
}

func update(id int64, patch, version string) Write {
	return Write{Kind: WriteUpdate, TaskID: id, Task: json.RawMessage(patch), Version: rawOrNil(version)}
}

func deleteID(id int64, version string) Write {
	return Write{Kind: WriteDelete, TaskID: id, Version: rawOrNil(version)}
}

func deleteIndex(index, version string) Write {
	return Write{Kind: WriteDelete, TaskIndex: index, Version: rawOrNil(version)}
}

func writeAll(t testing.TB, version string, tasks ...string) Write {
	return Write{Kind: WriteAll, Tasks: tasksOf(t, tasks...), Version: rawOrNil(version)}
}

func rawOrNil(s string) json.RawMessage {
	if s == "" {
		return nil
	}
	return json.RawMessage(s)
}

func applyCases(t testing.TB) []applyCase {
	abc := []string{`{"id":1,"desc":"a","index":"x"}`, `{"id":2,"desc":"b","index":12}`, `{"id":3,"desc":"c"}`}
	return []applyCase{
		// create
		{
			name: "create", version: "1", stored: abc,
			write:   create(`{"id":4, "desc":"d"}`, "2"),
			changes: []string{`create 4 {"id":4,"desc":"d"}`},
			tasks:   append(slices.Clone(abc), `{"id":4,"desc":"d"}`), after: "2",
		},
		{
			name: "create, version kept when nil", version: `"v7"`,
			write:   create(`{"id":-4}`, ""),
			changes: []string{`create -4 {"id":-4}`},
			tasks:   []string{`{"id":-4}`}, after: `"v7"`,
		},
		{
			name:    "create, no version stored yet",
			write:   create(`{"id":1}`, "1732540800123"),
			changes: []string{`create 1 {"id":1}`},
			tasks:   []string{`{"id":1}`}, after: "1732540800123",
		},
		{
			name: "create an existing task", version: "1", stored: abc,
			write: create(`{"id":2,"desc":"other"}`, "2"),
			code:  CodeTaskExists, err: "task 2 already exists",
		},
		{
			name: "create past the task limit", version: "1", stored: abc, limits: Limits{MaxTasksPerUser: 3},
			write: create(`{"id":4}`, "2"),
			code:  CodeTooManyTasks, err: "too many tasks: at most 3 per user",
		},
		{
			name: "create up to the task limit", version: "1", stored: abc[:2], limits: Limits{MaxTasksPerUser: 3},
			write:   create(`{"id":4}`, "2"),
			changes: []string{`create 4 {"id":4}`},
			tasks:   append(slices.Clone(abc[:2]), `{"id":4}`), after: "2",
		},
		{
			// That the task exists is the clearer message.
			name: "create an existing task at the limit", version: "1", stored: abc, limits: Limits{MaxTasksPerUser: 3},
			write: create(`{"id":3}`, "2"),
			code:  CodeTaskExists, err: "task 3 already exists",
		},
		{
			name: "create an invalid task", version: "1", stored: abc,
			write: create(`{"id":4,"desc":4}`, "2"),
			code:  CodeInvalidTask, err: "task 4: desc must be a string",
		},
		{
			name: "create with a duplicate key", version: "1", stored: abc,
			write: create(`{"id":4,"id":5}`, "2"),
			code:  CodeInvalidTask, err: `task has duplicate key "id"`,
		},
		{
			name: "create with id 4.0", version: "1", stored: abc,
			write: create(`{"id":4.0}`, "2"),
			code:  CodeInvalidTask, err: "task id must be an integer",
		},
		{
			name: "create past the size limit", version: "1", limits: Limits{MaxTaskBytes: 10},
			write: create(`{"id":4,"d":"xx"}`, "2"),
			code:  CodeInvalidTask, err: "task 4 exceeds 10 bytes",
		},

		// update
		{
			name: "update merges", version: "1", stored: abc,
			write:   update(2, `{"desc":"B","done":true}`, "2"),
			changes: []string{`update 2 {"id":2,"desc":"B","index":12,"done":true}`},
			tasks:   []string{abc[0], `{"id":2,"desc":"B","index":12,"done":true}`, abc[2]}, after: "2",
		},
		{
			name: "update, version kept when nil", version: "5", stored: abc,
			write:   update(3, `{"desc":"C"}`, ""),
			changes: []string{`update 3 {"id":3,"desc":"C"}`},
			tasks:   []string{abc[0], abc[1], `{"id":3,"desc":"C"}`}, after: "5",
		},
		{
			// Updates add no task: the limit does not apply.
			name: "update at the task limit", version: "1", stored: abc, limits: Limits{MaxTasksPerUser: 3},
			write:   update(1, `{"desc":"A"}`, "2"),
			changes: []string{`update 1 {"id":1,"desc":"A","index":"x"}`},
			tasks:   []string{`{"id":1,"desc":"A","index":"x"}`, abc[1], abc[2]}, after: "2",
		},
		{
			name: "update an unknown task", version: "1", stored: abc,
			write: update(9, `{"desc":"x"}`, "2"),
			code:  CodeTaskNotFound, err: "task 9 not found",
		},
		{
			name: "update renumbers", version: "1", stored: abc, limits: Limits{MaxTasksPerUser: 3},
			write:   update(1, `{"id":-1,"done":true}`, "2"),
			changes: []string{`update -1 {"id":-1,"desc":"a","index":"x","done":true}`},
			tasks:   []string{`{"id":-1,"desc":"a","index":"x","done":true}`, abc[1], abc[2]}, after: "2",
		},
		{
			name: "update renumbers onto another task", version: "1", stored: abc,
			write: update(1, `{"id":3}`, "2"),
			code:  CodeTaskExists, err: "task 3 already exists",
		},
		{
			name: "update to an invalid task", version: "1", stored: abc,
			write: update(1, `{"tags":[1]}`, "2"),
			code:  CodeInvalidTask, err: "task 1: tags must be an array of strings",
		},
		{
			name: "update to id 2.0", version: "1", stored: abc,
			write: update(1, `{"id":2.0}`, "2"),
			code:  CodeInvalidTask, err: "task id must be an integer",
		},
		{
			name: "update with a duplicate key", version: "1", stored: abc,
			write: update(1, `{"desc":"x","desc":"y"}`, "2"),
			code:  CodeInvalidTask, err: `task has duplicate key "desc"`,
		},
		{
			name: "update with invalid UTF-8", version: "1", stored: abc,
			write: update(1, "{\"desc\":\"\xc0\xaf\"}", "2"),
			code:  CodeInvalidTask, err: "task is not valid UTF-8",
		},
		{
			name: "update past the size limit", version: "1", stored: abc, limits: Limits{MaxTaskBytes: 40},
			write: update(3, `{"more":"xxxxxxxxxxxx"}`, "2"),
			code:  CodeInvalidTask, err: "task 3 exceeds 40 bytes",
		},

		// delete
		{
			name: "delete by id", version: "1", stored: abc,
			write:   deleteID(2, "2"),
			changes: []string{`delete 2`},
			tasks:   []string{abc[0], abc[2]}, after: "2",
		},
		{
			name: "delete, version kept when nil", version: "1", stored: abc,
			write:   deleteID(1, ""),
			changes: []string{`delete 1`},
			tasks:   abc[1:], after: "1",
		},
		{
			name: "delete by string index", version: "1", stored: abc,
			write:   deleteIndex("x", "2"),
			changes: []string{`delete 1`},
			tasks:   abc[1:], after: "2",
		},
		{
			// task_index 12, as a number or a string, names a number index.
			name: "delete by number index", version: "1", stored: abc,
			write:   deleteIndex("12", "2"),
			changes: []string{`delete 2`},
			tasks:   []string{abc[0], abc[2]}, after: "2",
		},
		{
			name: "delete by index shared by two tasks: the lower id", version: "1",
			stored:  []string{`{"id":5,"index":"i"}`, `{"id":3,"index":"i"}`},
			write:   deleteIndex("i", "2"),
			changes: []string{`delete 3`},
			tasks:   []string{`{"id":5,"index":"i"}`}, after: "2",
		},
		{
			name: "delete an unknown id", version: "1", stored: abc,
			write: deleteID(4, "2"),
			code:  CodeTaskNotFound, err: "task 4 not found",
		},
		{
			name: "delete an unknown index", version: "1", stored: abc,
			write: deleteIndex("zz", "2"),
			code:  CodeTaskNotFound, err: `task with index "zz" not found`,
		},
		{
			name: "delete by an index only a nested object has", version: "1",
			stored: []string{`{"id":1,"x":{"index":"i"}}`},
			write:  deleteIndex("i", "2"),
			code:   CodeTaskNotFound, err: `task with index "i" not found`,
		},

		// write-all
		{
			// Given out of order; notified as deletes, then updates, then
			// creates, each in id order.
			name: "write-all diff order", version: "1",
			stored: []string{`{"id":1,"v":1}`, `{"id":2,"v":1}`, `{"id":3,"v":1}`, `{"id":4,"v":1}`, `{"id":7,"v":1}`},
			write:  writeAll(t, "2", `{"id":6,"v":2}`, `{"id":3,"v":2}`, `{"id":1,"v":1}`, `{"id":-5,"v":2}`, `{"id":2,"v":2}`),
			changes: []string{
				`delete 4`, `delete 7`,
				`update 2 {"id":2,"v":2}`, `update 3 {"id":3,"v":2}`,
				`create -5 {"id":-5,"v":2}`, `create 6 {"id":6,"v":2}`,
			},
			tasks: []string{`{"id":-5,"v":2}`, `{"id":1,"v":1}`, `{"id":2,"v":2}`, `{"id":3,"v":2}`, `{"id":6,"v":2}`},
			after: "2",
		},
		{
			name: "write-all unchanged", version: "1", stored: abc,
			write:   writeAll(t, "2", abc[2], abc[0], abc[1]),
			changes: nil,
			tasks:   abc, after: "2",
		},
		{
			// Compared as stored: the same members in another order are
			// another task.
			name: "write-all reordered members", version: "1", stored: []string{`{"id":1,"a":1,"b":2}`},
			write:   writeAll(t, "2", `{"b":2,"a":1,"id":1}`),
			changes: []string{`update 1 {"b":2,"a":1,"id":1}`},
			tasks:   []string{`{"b":2,"a":1,"id":1}`}, after: "2",
		},
		{
			name: "write-all empty", version: "1", stored: abc,
			write:   writeAll(t, "2"),
			changes: []string{`delete 1`, `delete 2`, `delete 3`},
			tasks:   nil, after: "2",
		},
		{
			name: "write-all on a new user", version: "-1",
			write:   writeAll(t, "1732540800123", `{"id":2}`, `{"id":1}`),
			changes: []string{`create 1 {"id":1}`, `create 2 {"id":2}`},
			tasks:   []string{`{"id":1}`, `{"id":2}`}, after: "1732540800123",
		},
		{
			name: "write-all with the stored version", version: "5", stored: abc,
			write:   writeAll(t, "5", abc[0]),
			changes: []string{`delete 2`, `delete 3`},
			tasks:   abc[:1], after: "5",
		},
		{
			name: "write-all with a stale version", version: "1732540800124", stored: abc,
			write: writeAll(t, "1732540800123"),
			code:  CodeStaleVersion, err: "version 1732540800123 is older than the stored version 1732540800124: read-all first",
		},
		{
			name: "write-all stale beyond 2^53", version: "9007199254740994", stored: abc,
			write: writeAll(t, "9007199254740993"),
			code:  CodeStaleVersion, err: "is older than the stored version",
		},
		{
			name: "write-all stale by exponent", version: "2e3", stored: abc,
			write: writeAll(t, "1999.5"),
			code:  CodeStaleVersion, err: "version 1999.5 is older than the stored version 2e3",
		},
		{
			name: "write-all string version over a number", version: "5", stored: abc,
			write:   writeAll(t, `"1"`, abc[0]),
			changes: []string{`delete 2`, `delete 3`},
			tasks:   abc[:1], after: `"1"`,
		},
		{
			name: "write-all number version over a string", version: `"9"`, stored: abc,
			write:   writeAll(t, "1", abc[0]),
			changes: []string{`delete 2`, `delete 3`},
			tasks:   abc[:1], after: "1",
		},
		{
			// Strings are never compared, even when they hold numbers.
			name: "write-all string versions", version: `"9"`, stored: abc,
			write:   writeAll(t, `"1"`, abc[0]),
			changes: []string{`delete 2`, `delete 3`},
			tasks:   abc[:1], after: `"1"`,
		},
		{
			name: "write-all without a version", version: "9", stored: abc,
			write:   writeAll(t, "", abc[0]),
			changes: []string{`delete 2`, `delete 3`},
			tasks:   abc[:1], after: "9",
		},
		{
			name: "write-all past the task limit", version: "1", limits: Limits{MaxTasksPerUser: 2},
			stored: abc[:1],
			write:  writeAll(t, "2", `{"id":1}`, `{"id":2}`, `{"id":3}`),
			code:   CodeTooManyTasks, err: "too many tasks: at most 2 per user",
		},
		{
			name: "write-all up to the task limit", version: "1", limits: Limits{MaxTasksPerUser: 2}, stored: abc,
			write:   writeAll(t, "2", abc[0], abc[1]),
			changes: []string{`delete 3`},
			tasks:   abc[:2], after: "2",
		},
		{
			name: "write-all with a duplicate id", version: "1", stored: abc,
			write: writeAll(t, "2", `{"id":4}`, `{"id":5}`, `{"id":4,"x":1}`),
			code:  CodeInvalidTask, err: "duplicate task id 4",
		},
	}
}

func TestApply(t *testing.T) {
	for _, tc := range applyCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			tx := newMemTx(t, tc.version, tc.stored...)
			before := tx.state()
			w := tc.write
			w.UserID, w.DeviceID = "user-1", "device-1"
			limits := tc.limits
			limits.SetDefaults()
			changes, err := Apply(tx, &w, limits)
			if tc.code != 0 {
				if !IsCode(err, tc.code) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want code %d containing %q", err, tc.code, tc.err)
				}
				// A refusal mutates nothing, not even the version: a
				// backend that cannot roll back relies on it.
				if len(tx.log) != 0 || tx.state() != before || changes != nil {
					t.Fatalf("refused write mutated %q (changes %v)", tx.log, changes)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			var got []string
			for _, c := range changes {
				s := fmt.Sprintf("%s %d", c.Kind, c.TaskID)
				if c.Kind != ChangeDelete {
					s += " " + string(c.Task)
				} else if c.Task != nil {
					t.Errorf("delete %d carries a task %s", c.TaskID, c.Task)
				}
				got = append(got, s)
				// Every change carries the write's user, device and
				// version (the stored one when the write has none),
				// and no Seq: the backend numbers them.
				if c.UserID != "user-1" || c.DeviceID != "device-1" || string(c.Version) != tc.after || c.Seq != 0 {
					t.Errorf("change %s: user %q device %q version %s seq %d", s, c.UserID, c.DeviceID, c.Version, c.Seq)
				}
			}
			if !slices.Equal(got, tc.changes) {
				t.Fatalf("changes\n%q\nwant\n%q", got, tc.changes)
			}
			want := newMemTx(t, tc.after, tc.tasks...)
			if tx.state() != want.state() {
				t.Fatalf("after the write\n%s\nwant\n%s", tx.state(), want.state())
			}
			// The version is set exactly when the write has one.
			setVersion := slices.ContainsFunc(tx.log, func(m string) bool { return strings.HasPrefix(m, "version ") })
			if setVersion != (w.Version != nil) {
				t.Fatalf("mutations %q: version set %v, write version %s", tx.log, setVersion, w.Version)
			}
			if tx.TaskCount() != len(tx.tasks) {
				t.Fatalf("task count %d, %d tasks stored", tx.TaskCount(), len(tx.tasks))
			}
		})
	}
}

// The mutations of a write-all follow its changes: a backend that streams
// them in that order keeps its change log and its data in step.
func TestApplyWriteAllMutationOrder(t *testing.T) {
	tx := newMemTx(t, "1", `{"id":1}`, `{"id":2}`, `{"id":3,"v":1}`)
	w := writeAll(t, "2", `{"id":4}`, `{"id":3,"v":2}`, `{"id":0}`)
	if _, err := Apply(tx, &w, Limits{MaxTasksPerUser: 10}); err != nil {
		t.Fatal(err)
	}
	want := []string{`delete 1`, `delete 2`, `put 3 {"id":3,"v":2}`, `put 0 {"id":0}`, `put 4 {"id":4}`, `version 2`}
	if !slices.Equal(tx.log, want) {
		t.Fatalf("mutations\n%q\nwant\n%q", tx.log, want)
	}
}

// A renumbering update removes the old id before it puts the new one.
func TestApplyRenumberMutations(t *testing.T) {
	tx := newMemTx(t, "1", `{"id":1,"d":"a"}`)
	w := update(1, `{"id":2}`, "2")
	if _, err := Apply(tx, &w, Limits{MaxTasksPerUser: 1, MaxTaskBytes: 100}); err != nil {
		t.Fatal(err)
	}
	want := []string{`delete 1`, `put 2 {"id":2,"d":"a"}`, `version 2`}
	if !slices.Equal(tx.log, want) {
		t.Fatalf("mutations\n%q\nwant\n%q", tx.log, want)
	}
}

// An unknown write kind is a caller's bug, not a client's: an error that is
// not a refusal, and nothing changed.
func TestApplyUnknownKind(t *testing.T) {
	tx := newMemTx(t, "1", `{"id":1}`)
	w := Write{Kind: 0, Version: json.RawMessage("2")}
	changes, err := Apply(tx, &w, Limits{MaxTasksPerUser: 10})
	if err == nil || IsRefusal(err) || changes != nil || len(tx.log) != 0 {
		t.Fatalf("error %v, changes %v, mutations %q", err, changes, tx.log)
	}
}

// A store error is returned as it is, never as a refusal. One that happens
// while the write is checked comes before any mutation.
func TestApplyStoreErrors(t *testing.T) {
	errStore := errors.New("disk on fire")
	for _, tc := range []struct {
		method    string
		write     func(testing.TB) Write
		mutations bool // the error comes after a mutation was tried
	}{
		{"get", func(testing.TB) Write { return create(`{"id":9}`, "2") }, false},
		{"get", func(testing.TB) Write { return update(1, `{"d":1}`, "2") }, false},
		{"get", func(testing.TB) Write { return deleteID(1, "2") }, false},
		{"all", func(testing.TB) Write { return deleteIndex("x", "2") }, false},
		{"all", func(t testing.TB) Write { return writeAll(t, "2") }, false},
		{"put", func(testing.TB) Write { return create(`{"id":9}`, "2") }, true},
		{"put", func(testing.TB) Write { return update(1, `{"d":1}`, "2") }, true},
		{"put", func(t testing.TB) Write { return writeAll(t, "2", `{"id":9}`) }, true},
		{"delete", func(testing.TB) Write { return deleteID(1, "2") }, true},
		{"delete", func(testing.TB) Write { return update(1, `{"id":5}`, "2") }, true},
		{"delete", func(t testing.TB) Write { return writeAll(t, "2") }, true},
		{"version", func(testing.TB) Write { return deleteID(1, "2") }, true},
	} {
		w := tc.write(t)
		t.Run(tc.method+" "+w.Kind.String(), func(t *testing.T) {
			tx := newMemTx(t, "1", `{"id":1,"index":"x"}`)
			tx.fail[tc.method] = errStore
			changes, err := Apply(tx, &w, Limits{MaxTasksPerUser: 10, MaxTaskBytes: 100})
			if !errors.Is(err, errStore) || IsRefusal(err) || changes != nil {
				t.Fatalf("error %v, changes %v", err, changes)
			}
			if tc.mutations != (len(tx.log) > 0) {
				t.Fatalf("mutations %q", tx.log)
			}
		})
	}
}

func BenchmarkApply(b *testing.B) {
	for _, tc := range applyCases(b) {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			limits := tc.limits
			limits.SetDefaults()
			for b.Loop() {
				b.StopTimer()
				tx := newMemTx(b, tc.version, tc.stored...)
				tx.nolog = true
				w := tc.write
				b.StartTimer()
				Apply(tx, &w, limits)
			}
		})
	}
}

// A write-all of a whole user's tasks, the Vim client's first upload.
func BenchmarkApplyWriteAll(b *testing.B) {
	for _, n := range []int{100, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			list := make([]string, n)
			for i := range list {
				list[i] = fmt.Sprintf(`{"id":%d,"desc":"task %d","tags":["a"],"start":1732540800123}`, n-i, i)
			}
			w := writeAll(b, "1", list...)
			limits := Limits{MaxTasksPerUser: n}
			for b.Loop() {
				b.StopTimer()
				tx := newMemTx(b, "-1")
				tx.nolog = true
				b.StartTimer()
				Apply(tx, &w, limits)
			}
		})
	}
}
