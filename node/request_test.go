package node

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/kronos-sync/kronos-server/feed"
)

func TestDecodeRequest(t *testing.T) {
	for _, tc := range []struct {
		in, typ, err string
	}{
		{in: `{"type":"read-all"}`, typ: "read-all"},
		{in: " {\"type\":\"login\",\"user_id\":\"\"}\n", typ: "login"},
		{in: `{"type":"create","task":{"id":1,"desc":"日本語 😀"}}`, typ: "create"},
		// An escaped lone surrogate is valid JSON text, and its bytes are
		// ASCII.
		{in: `{"type":"create","task":{"id":1,"desc":"\ud800"}}`, typ: "create"},
		{in: `{"type":"create"`, err: "invalid JSON"},
		{in: `{"type":"create"}x`, err: "invalid JSON"},
		{in: `[1]`, err: "request must be a JSON object"},
		{in: `"login"`, err: "request must be a JSON object"},
		{in: `{}`, err: "missing request type"},
		{in: `{"type":null}`, err: "missing request type"},
		{in: `{"type":7}`, err: "type must be a string"},
		// Anything that is not UTF-8, anywhere in the message, and the
		// answer still names the type.
		{in: "{\"type\":\"create\",\"task\":{\"id\":1,\"desc\":\"\xff\"}}", typ: "create", err: "invalid UTF-8"},
		{in: "{\"type\":\"login\",\"user_id\":\"\xc3\x28\"}", typ: "login", err: "invalid UTF-8"},
		{in: "{\"type\":\"read-all\",\"x\xfe\":1}", typ: "read-all", err: "invalid UTF-8"},
		{in: "{\"type\":\"update\",\"task\":{\"id\":1},\"version\":\"\xe2\x82\"}", typ: "update", err: "invalid UTF-8"},
		// Surrogates encoded as UTF-8 (CESU-8) are not UTF-8.
		{in: "{\"type\":\"create\",\"task\":{\"desc\":\"\xed\xa0\x80\"}}", typ: "create", err: "invalid UTF-8"},
		// An invalid type is read with U+FFFD: the answer stays UTF-8.
		{in: "{\"type\":\"cr\xffeate\"}", typ: "cr\uFFFDeate", err: "invalid UTF-8"},
	} {
		_, typ, err := decodeRequest([]byte(tc.in))
		var msg string
		if err != nil {
			msg = err.Error()
		}
		if typ != tc.typ || msg != tc.err {
			t.Errorf("decodeRequest(%q) = %q, %q; want %q, %q", tc.in, typ, msg, tc.typ, tc.err)
		}
	}
}

// buildCases drive TestBuildWrite: a write request and the feed.Write it
// gives (see describe), or a part of the error it gets.
var buildCases = []struct {
	in     string
	limits feed.Limits // zero fields: the defaults
	want   string
	err    string
}{
	// delete
	{in: `{"type":"delete","task_id":7,"version":3}`, want: `delete id=7 version=3`},
	{in: `{"type":"delete","task_id":-7}`, want: `delete id=-7`},
	{in: `{"type":"delete","task_id":0}`, want: `delete id=0`},
	{in: `{"type":"delete","task_id":9007199254740991}`, want: `delete id=9007199254740991`},
	{in: `{"type":"delete","task_id":"7"}`, want: `delete id=7`},
	{in: `{"type":"delete","task_id":"-7"}`, want: `delete id=-7`},
	{in: `{"type":"delete","task_id":"\u0037"}`, want: `delete id=7`},
	{in: `{"type":"delete","task_id":1e2}`, err: "task_id must be an integer between -9007199254740991 and 9007199254740991"},
	{in: `{"type":"delete","task_id":7.0}`, err: "task_id must be an integer"},
	{in: `{"type":"delete","task_id":-0}`, err: "task_id must be an integer"},
	{in: `{"type":"delete","task_id":9007199254740992}`, err: "task_id must be an integer"},
	{in: `{"type":"delete","task_id":"7.0"}`, err: "task_id must be an integer"},
	{in: `{"type":"delete","task_id":"1e2"}`, err: "task_id must be an integer"},
	{in: `{"type":"delete","task_id":"07"}`, err: "task_id must be an integer"},
	{in: `{"type":"delete","task_id":" 7"}`, err: "task_id must be an integer"},
	{in: `{"type":"delete","task_id":"+7"}`, err: "task_id must be an integer"},
	{in: `{"type":"delete","task_id":""}`, err: "task_id must be an integer"},
	{in: `{"type":"delete","task_id":true}`, err: "task_id must be an integer"},
	{in: `{"type":"delete","task_id":[7]}`, err: "task_id must be an integer"},
	{in: `{"type":"delete","task_index":"12","version":3}`, want: `delete index="12" version=3`},
	{in: `{"type":"delete","task_index":"a b"}`, want: `delete index="a b"`},
	{in: `{"type":"delete","task_index":12}`, want: `delete index="12"`},
	{in: `{"type":"delete","task_index":1.5}`, err: "task_index must be a string or an integer"},
	{in: `{"type":"delete","task_index":1e1}`, err: "task_index must be a string or an integer"},
	{in: `{"type":"delete","task_index":{}}`, err: "task_index must be a string or an integer"},
	{in: `{"type":"delete","task_index":""}`, err: "task_index must not be empty"},
	{in: `{"type":"delete","task_id":7,"task_index":"12"}`, want: `delete id=7`},
	{in: `{"type":"delete","version":3}`, err: "missing task_id"},

	// create
	{in: `{"type":"create","task":{"id":1},"version":1}`, want: `create task={"id":1} version=1`},
	{in: `{"type":"create","task":{ "id" : 1 , "x" : [ 1 ] }}`, want: `create task={"id":1,"x":[1]}`},
	{in: `{"type":"create","task":{"id":1,"id":2}}`, err: `task has duplicate key "id"`},
	{in: `{"type":"create","task":{"id":1,"desc":"a","\u0064esc":"b"}}`, err: `task has duplicate key "desc"`},
	{in: `{"type":"create","task":{"id":1.0}}`, err: "task id must be an integer"},
	{in: `{"type":"create","task":{"id":1e2}}`, err: "task id must be an integer"},
	{in: `{"type":"create","task":[]}`, err: "task must be a JSON object"},
	{in: `{"type":"create","version":1}`, err: "missing task"},
	{in: `{"type":"create","task":null}`, err: "missing task"},
	{in: `{"type":"create","task":{"id":1},"version":{"a":1}}`, err: "version must be a number or a string"},
	{in: `{"type":"create","task":{"id":1,"d":"xxxxxxxxxxxxxx"}}`, limits: feed.Limits{MaxTaskBytes: 20}, err: "task 1 exceeds 20 bytes"},

	// update
	{in: `{"type":"update","task":{"id":7,"done":true},"version":2}`, want: `update id=7 task={"id":7,"done":true} version=2`},
	// task_id names the task; task.id renumbers it.
	{in: `{"type":"update","task_id":"7","task":{"id":8,"done":true}}`, want: `update id=7 task={"id":8,"done":true}`},
	{in: `{"type":"update","task_id":7,"task":{"done":true}}`, want: `update id=7 task={"done":true}`},
	{in: `{"type":"update","task":{"done":true}}`, err: "missing task_id (or task.id)"},
	{in: `{"type":"update","task":{"id":1,"id":2}}`, err: `task has duplicate key "id"`},
	{in: `{"type":"update","task_id":1,"task":{"id":1,"id":2}}`, err: `task has duplicate key "id"`},
	{in: `{"type":"update","task_id":1,"task":{"done":true,"done":false}}`, err: `task has duplicate key "done"`},
	{in: `{"type":"update","task":{"id":7.0}}`, err: "task id must be an integer"},
	{in: `{"type":"update","task_id":7,"task":{"id":8.0}}`, err: "task id must be an integer"},
	{in: `{"type":"update","task":{"id":"7"}}`, err: "task id must be an integer"},
	{in: `{"type":"update","task_id":7.5,"task":{"done":true}}`, err: "task_id must be an integer"},
	{in: `{"type":"update","task":"x"}`, err: "task must be a JSON object"},
	{in: `{"type":"update","task_id":7}`, err: "missing task"},

	// write-all
	{in: `{"type":"write-all","tasks":[{"id":2},{"id":1,"d":"x"}],"version":5}`, want: `write-all tasks=[2 {"id":2} 1 {"id":1,"d":"x"}] version=5`},
	{in: `{"type":"write-all","tasks":[],"version":5}`, want: `write-all tasks=[] version=5`},
	{in: `{"type":"write-all","data":{"tasks":[{"id":1}]},"version":"1"}`, want: `write-all tasks=[1 {"id":1}] version="1"`},
	{in: `{"type":"write-all","tasks":[{"id":1},{"id":1}]}`, err: "duplicate task id 1"},
	{in: `{"type":"write-all","tasks":[{"id":1},{"id":2,"id":3}]}`, err: `task has duplicate key "id"`},
	{in: `{"type":"write-all","tasks":[{"id":1.0}]}`, err: "task id must be an integer"},
	{in: `{"type":"write-all","tasks":[{"id":1},{"id":2},{"id":3}]}`, limits: feed.Limits{MaxTasksPerUser: 2}, err: "too many tasks: at most 2 per user"},
	{in: `{"type":"write-all","tasks":{"id":1}}`, err: "tasks must be an array"},
	{in: `{"type":"write-all","data":[1]}`, err: "data must be an object holding tasks"},
	{in: `{"type":"write-all","version":1}`, err: "missing tasks"},
}

// describe prints the parts of a write a test compares.
func describe(w *feed.Write) string {
	s := w.Kind.String()
	switch w.Kind {
	case feed.WriteAll:
		var tasks []string
		for _, t := range w.Tasks {
			tasks = append(tasks, fmt.Sprintf("%d %s", t.ID, t.Raw))
		}
		s += " tasks=[" + strings.Join(tasks, " ") + "]"
	case feed.WriteCreate:
		s += " task=" + string(w.Task)
	case feed.WriteUpdate:
		s += fmt.Sprintf(" id=%d task=%s", w.TaskID, w.Task)
	case feed.WriteDelete:
		if w.TaskIndex != "" {
			s += fmt.Sprintf(" index=%q", w.TaskIndex)
		} else {
			s += fmt.Sprintf(" id=%d", w.TaskID)
		}
	}
	if w.Version != nil {
		s += " version=" + string(w.Version)
	}
	return s
}

func TestBuildWrite(t *testing.T) {
	for _, tc := range buildCases {
		req, typ, err := decodeRequest([]byte(tc.in))
		if err != nil {
			t.Fatalf("decodeRequest(%s): %v", tc.in, err)
		}
		limits := tc.limits
		limits.SetDefaults()
		w, err := buildWrite(typ, req, limits)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("buildWrite(%s) error %v, want %q", tc.in, err, tc.err)
			}
		case err != nil:
			t.Errorf("buildWrite(%s) error %v, want %s", tc.in, err, tc.want)
		case describe(w) != tc.want:
			t.Errorf("buildWrite(%s) = %s, want %s", tc.in, describe(w), tc.want)
		}
	}
}

func BenchmarkBuildWrite(b *testing.B) {
	limits := feed.Limits{}
	limits.SetDefaults()
	for _, tc := range buildCases {
		b.Run(tc.in, func(b *testing.B) {
			b.ReportAllocs()
			p := []byte(tc.in)
			for b.Loop() {
				if req, typ, err := decodeRequest(p); err == nil {
					buildWrite(typ, req, limits)
				}
			}
		})
	}
}

var requestSeeds = []string{
	`{"type":"login","user_id":"","device_id":"","version":""}`,
	`{"type":"read-all","user_id":"u","device_id":"d"}`,
	`{"type":"write-all","data":{"tasks":[{"id":1,"desc":"a","tags":["x"]}]},"version":"1"}`,
	`{"type":"write-all","tasks":[{"id":1},{"id":1}],"version":1732540800123}`,
	`{"type":"create","task":{"id":-3,"desc":null,"start":1700000000},"version":1}`,
	`{"type":"update","task_id":"7","task":{"id":8,"done":true},"version":2}`,
	`{"type":"delete","task_index":"12","version":3}`,
	`{"type":"delete","task_id":1e2}`,
	`{"type":["x"]}`,
	`[1,2]`,
	`{"type":"create","task":{"id":9007199254740993}}`,
	`{"type":"create","version":{"a":1},"task":{"id":1}}`,
	`{"type":"create","task":{"id":1,"id":2}}`,
	`{"type":"update","task":{"id":1,"desc":"a","desc":"b"}}`,
	"{\"type\":\"create\",\"task\":{\"id\":1,\"desc\":\"\xff\"}}",
}

// FuzzDecodeRequest: no input panics, and whatever is accepted is well
// formed for the store.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range requestSeeds {
		f.Add([]byte(s))
	}
	for _, tc := range buildCases {
		f.Add([]byte(tc.in))
	}
	limits := feed.Limits{}
	limits.SetDefaults()
	f.Fuzz(func(t *testing.T, p []byte) {
		req, typ, err := decodeRequest(p)
		if err == nil && !utf8.Valid(p) {
			t.Fatalf("accepted %q, not UTF-8", p)
		}
		if err != nil || !knownType(typ) || typ == typeLogin || typ == typeReadAll {
			return
		}
		w, err := buildWrite(typ, req, limits)
		if err != nil {
			if _, ok := err.(*errRequest); !ok {
				if _, ok := err.(*feed.Error); !ok {
					t.Fatalf("error of an unexpected kind %T: %v", err, err)
				}
			}
			return
		}
		if w.Version != nil {
			if _, err := feed.CheckVersion(w.Version); err != nil {
				t.Fatalf("accepted version %s: %v", w.Version, err)
			}
		}
		for _, task := range w.Tasks {
			again, err := feed.ParseTask(task.Raw, limits.MaxTaskBytes)
			if err != nil || again.ID != task.ID {
				t.Fatalf("accepted task %s does not parse again: %v", task.Raw, err)
			}
		}
		switch w.Kind {
		case feed.WriteCreate:
			if _, err := feed.ParseTask(w.Task, limits.MaxTaskBytes); err != nil {
				t.Fatalf("accepted create task %s: %v", w.Task, err)
			}
		case feed.WriteUpdate:
			if _, _, err := feed.ParsePatch(w.Task); err != nil {
				t.Fatalf("accepted update fields %s: %v", w.Task, err)
			}
		}
		if (w.TaskID > feed.MaxTaskID || w.TaskID < -feed.MaxTaskID) && w.TaskIndex == "" {
			t.Fatalf("task id %d out of range", w.TaskID)
		}
	})
}

// Ids with control characters (a NUL byte broke PostgreSQL's change-log
// query) are refused before any store call; the connection stays usable.
func TestIDsMustBePrintable(t *testing.T) {
	for _, bad := range []string{"a\x00b", "tab\there", "\x7f", "line\nbreak"} {
		for _, field := range []string{"user_id", "device_id"} {
			_, err := optionalString(mustRaw(t, bad), field)
			if err == nil || !strings.Contains(err.Error(), field+" must be printable text") {
				t.Errorf("%s %q: %v", field, bad, err)
			}
		}
	}
	for _, good := range []string{"5f0c2b9e-8d7a-4c1b-9e3f-2a6d4c8b1e07", "my laptop", "ordinateur-de-zoé"} {
		if _, err := optionalString(mustRaw(t, good), "device_id"); err != nil {
			t.Errorf("%q refused: %v", good, err)
		}
	}
}

func mustRaw(t *testing.T, s string) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
