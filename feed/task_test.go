package feed

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParseTaskID(t *testing.T) {
	for _, tc := range []struct {
		in string
		id int64
		ok bool
	}{
		{"0", 0, true},
		{"7", 7, true},
		{"-3", -3, true},
		{"1732540800", 1732540800, true},
		{"9007199254740991", MaxTaskID, true},
		{"-9007199254740991", -MaxTaskID, true},
		{"9007199254740992", 0, false},
		{"-9007199254740992", 0, false},
		{"9999999999999999", 0, false},
		{"99999999999999999999", 0, false}, // would overflow an int64
		// Integers written as integers only: one spelling per id.
		{"1.0", 0, false},
		{"7.5", 0, false},
		{"1e2", 0, false},
		{"1E2", 0, false},
		{"-0", 0, false},
		{"007", 0, false},
		{"-07", 0, false},
		{"+7", 0, false},
		{"0x10", 0, false},
		{"", 0, false},
		{"-", 0, false},
		{" 7", 0, false},
		{"7 ", 0, false},
		{`"7"`, 0, false}, // a JSON string; request task_id unquotes first
		{"null", 0, false},
		{"true", 0, false},
	} {
		id, ok := ParseTaskID([]byte(tc.in))
		if id != tc.id || ok != tc.ok {
			t.Errorf("ParseTaskID(%q) = %d, %v; want %d, %v", tc.in, id, ok, tc.id, tc.ok)
		}
	}
}

// parseCases drive TestParseTask and BenchmarkParseTask. want is the task
// as stored ("" when refused), err a part of the refusal's message.
var parseCases = []struct {
	name  string
	in    string
	limit int // 0: 1 KiB
	id    int64
	want  string
	err   string
}{
	{name: "minimal", in: `{"id":1}`, id: 1, want: `{"id":1}`},
	{
		name: "vim task",
		in:   `{"id":1732540800,"desc":"write the report","tags":["work","writing"],"start":1732540800123,"stop":null,"index":"12","last_active":1732540900123,"worktime":3600}`,
		id:   1732540800,
		want: `{"id":1732540800,"desc":"write the report","tags":["work","writing"],"start":1732540800123,"stop":null,"index":"12","last_active":1732540900123,"worktime":3600}`,
	},
	{name: "negative id", in: `{"id":-3}`, id: -3, want: `{"id":-3}`},
	{name: "zero id", in: `{"id":0}`, id: 0, want: `{"id":0}`},
	{name: "largest id", in: `{"id":9007199254740991}`, id: MaxTaskID, want: `{"id":9007199254740991}`},
	{name: "smallest id", in: `{"id":-9007199254740991}`, id: -MaxTaskID, want: `{"id":-9007199254740991}`},
	{name: "id past 2^53-1", in: `{"id":9007199254740992}`, err: "task id must be an integer between -9007199254740991 and 9007199254740991"},
	{name: "id below -(2^53-1)", in: `{"id":-9007199254740992}`, err: "task id must be an integer"},
	{name: "id with a fraction", in: `{"id":1.5}`, err: "task id must be an integer"},
	{name: "id written 1.0", in: `{"id":1.0}`, err: "task id must be an integer"},
	{name: "id written 1e2", in: `{"id":1e2}`, err: "task id must be an integer"},
	{name: "id written -0", in: `{"id":-0}`, err: "task id must be an integer"},
	{name: "id string", in: `{"id":"1"}`, err: "task id must be an integer"},
	{name: "id null", in: `{"id":null}`, err: "task id must be an integer"},
	{name: "id object", in: `{"id":{"n":1}}`, err: "task id must be an integer"},
	{name: "no id", in: `{"desc":"x"}`, err: "task has no id"},
	{name: "empty object", in: `{}`, err: "task has no id"},
	{name: "id in a nested object only", in: `{"x":{"id":1}}`, err: "task has no id"},

	{name: "desc string", in: `{"id":1,"desc":"a"}`, id: 1, want: `{"id":1,"desc":"a"}`},
	{name: "desc null", in: `{"id":1,"desc":null}`, id: 1, want: `{"id":1,"desc":null}`},
	{name: "desc number", in: `{"id":1,"desc":5}`, err: "task 1: desc must be a string"},
	{name: "desc object", in: `{"id":1,"desc":{}}`, err: "desc must be a string"},
	{name: "desc array", in: `{"id":1,"desc":["a"]}`, err: "desc must be a string"},
	{name: "desc bool", in: `{"id":1,"desc":true}`, err: "desc must be a string"},

	{name: "tags strings", in: `{"id":1,"tags":["a","b"]}`, id: 1, want: `{"id":1,"tags":["a","b"]}`},
	{name: "tags empty", in: `{"id":1,"tags":[]}`, id: 1, want: `{"id":1,"tags":[]}`},
	{name: "tags null", in: `{"id":1,"tags":null}`, id: 1, want: `{"id":1,"tags":null}`},
	{name: "tags with spaces", in: `{"id":1,"tags":[ "a" , "b" ]}`, id: 1, want: `{"id":1,"tags":["a","b"]}`},
	{name: "tags string", in: `{"id":1,"tags":"x"}`, err: "task 1: tags must be an array of strings"},
	{name: "tags with a number", in: `{"id":1,"tags":["a",2]}`, err: "tags must be an array of strings"},
	{name: "tags with null", in: `{"id":1,"tags":[null]}`, err: "tags must be an array of strings"},
	{name: "tags nested", in: `{"id":1,"tags":[["a"]]}`, err: "tags must be an array of strings"},
	{name: "tags object", in: `{"id":1,"tags":{"a":"b"}}`, err: "tags must be an array of strings"},

	{
		name: "unknown fields kept in order",
		in:   `{"start":1,"id":2,"x":{"y":[1,{"z":null}]},"index":"3","done":true,"n":-1.5e3}`,
		id:   2,
		want: `{"start":1,"id":2,"x":{"y":[1,{"z":null}]},"index":"3","done":true,"n":-1.5e3}`,
	},
	{
		name: "whitespace compacted, strings untouched",
		in:   " {\n\t\"id\" : 1 ,\r\n \"desc\" : \"a  b\\n\" , \"x\" : [ 1 , 2 ] } \n",
		id:   1,
		want: `{"id":1,"desc":"a  b\n","x":[1,2]}`,
	},
	{
		name: "escapes kept verbatim",
		in:   `{"id":1,"desc":"\u00e9 <&> \"q\" \\ \/ \u2028","k\u0065y":1}`,
		id:   1,
		want: `{"id":1,"desc":"\u00e9 <&> \"q\" \\ \/ \u2028","k\u0065y":1}`,
	},
	{name: "non-ASCII kept", in: `{"id":1,"desc":"日本語 ✓ 😀"}`, id: 1, want: `{"id":1,"desc":"日本語 ✓ 😀"}`},
	{name: "empty key", in: `{"":0,"id":1}`, id: 1, want: `{"":0,"id":1}`},
	{
		// Only the task's own keys are checked: nested objects are the
		// client's data, stored as sent.
		name: "nested duplicate keys kept",
		in:   `{"id":1,"x":{"a":1,"a":2}}`,
		id:   1,
		want: `{"id":1,"x":{"a":1,"a":2}}`,
	},

	{name: "at the size limit", in: `{"id":1,"d":"` + strings.Repeat("x", 23) + `"}`, limit: 38, id: 1, want: `{"id":1,"d":"` + strings.Repeat("x", 23) + `"}`},
	{name: "one byte past the size limit", in: `{"id":1,"d":"` + strings.Repeat("x", 24) + `"}`, limit: 38, err: "task 1 exceeds 38 bytes"},
	{
		// The limit is on what is stored: spaces do not count.
		name:  "spaces past the limit",
		in:    "{ \"id\" : 1 , \"d\" : \"" + strings.Repeat("x", 23) + "\" }" + strings.Repeat(" ", 100),
		limit: 38, id: 1,
		want: `{"id":1,"d":"` + strings.Repeat("x", 23) + `"}`,
	},

	{name: "duplicate id", in: `{"id":1,"id":2}`, err: `task has duplicate key "id"`},
	{name: "duplicate id, the first invalid", in: `{"id":"x","id":2}`, err: `task has duplicate key "id"`},
	{name: "duplicate desc", in: `{"id":1,"desc":5,"desc":"a"}`, err: `task has duplicate key "desc"`},
	{name: "duplicate unknown key", in: `{"id":1,"a":1,"b":2,"a":1}`, err: `task has duplicate key "a"`},
	{name: "duplicate key escaped", in: `{"id":1,"a":1,"\u0061":2}`, err: `task has duplicate key "a"`},
	{name: "duplicate empty key", in: `{"id":1,"":1,"":2}`, err: `task has duplicate key ""`},
	{name: "duplicate key among many", in: manyFields(40, "f7"), err: `task has duplicate key "f7"`},
	{name: "duplicate long key", in: `{"id":1,"` + strings.Repeat("é", 100) + `":1,"` + strings.Repeat("é", 100) + `":2}`, err: `task has duplicate key "` + strings.Repeat("é", 32) + `…"`},

	{name: "invalid UTF-8 in a value", in: "{\"id\":1,\"desc\":\"a\xffb\"}", err: "task is not valid UTF-8"},
	{name: "invalid UTF-8 in a key", in: "{\"id\":1,\"\xc3\":1}", err: "task is not valid UTF-8"},
	{name: "invalid UTF-8 nested", in: "{\"id\":1,\"x\":[{\"y\":\"\xed\xa0\x80\"}]}", err: "task is not valid UTF-8"},
	{name: "truncated UTF-8", in: "{\"id\":1,\"desc\":\"\xe2\x9c\"}", err: "task is not valid UTF-8"},
	{
		// A lone surrogate escape is valid JSON text; decoders read U+FFFD.
		name: "surrogate escape",
		in:   `{"id":1,"desc":"\ud800"}`,
		id:   1,
		want: `{"id":1,"desc":"\ud800"}`,
	},

	{name: "string", in: `"x"`, err: "task must be a JSON object"},
	{name: "number", in: `1`, err: "task must be a JSON object"},
	{name: "null", in: `null`, err: "task must be a JSON object"},
	{name: "array", in: `[{"id":1}]`, err: "task must be a JSON object"},
	{name: "empty", in: ``, err: "task must be a JSON object"},
	{name: "spaces", in: `   `, err: "task must be a JSON object"},
	{name: "unterminated", in: `{"id":1`, err: "task must be a JSON object"},
	{name: "two objects", in: `{"id":1}{"id":2}`, err: "task must be a JSON object"},
	{name: "trailing garbage", in: `{"id":1}x`, err: "task must be a JSON object"},
	{name: "trailing comma", in: `{"id":1,}`, err: "task must be a JSON object"},
	{name: "single quotes", in: `{'id':1}`, err: "task must be a JSON object"},
}

// manyFields is a task with n fields f0… and, when dup is set, that key a
// second time at the end.
func manyFields(n int, dup string) string {
	var b strings.Builder
	b.WriteString(`{"id":1`)
	for i := range n {
		fmt.Fprintf(&b, `,"f%d":%d`, i, i)
	}
	if dup != "" {
		fmt.Fprintf(&b, `,%q:0`, dup)
	}
	b.WriteString("}")
	return b.String()
}

func TestParseTask(t *testing.T) {
	for _, tc := range parseCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseTask([]byte(tc.in), cmpOr(tc.limit, 1<<10))
			if tc.err != "" {
				wantRefusal(t, err, CodeInvalidTask, tc.err)
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if got.ID != tc.id || string(got.Raw) != tc.want {
				t.Fatalf("got %d %s, want %d %s", got.ID, got.Raw, tc.id, tc.want)
			}
		})
	}
}

// The stored task is a copy: the caller may reuse its buffer.
func TestParseTaskDoesNotAlias(t *testing.T) {
	in := []byte(`{"id":1,"desc":"abc"}`)
	task, err := ParseTask(in, 100)
	if err != nil {
		t.Fatal(err)
	}
	for i := range in {
		in[i] = 'x'
	}
	if string(task.Raw) != `{"id":1,"desc":"abc"}` {
		t.Fatalf("task changed with its input: %s", task.Raw)
	}
}

func BenchmarkParseTask(b *testing.B) {
	for _, tc := range parseCases {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			in := []byte(tc.in)
			limit := cmpOr(tc.limit, 1<<10)
			for b.Loop() {
				ParseTask(in, limit)
			}
		})
	}
}

func cmpOr(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// wantRefusal checks that err is an *Error with code and a message
// containing msg.
func wantRefusal(t *testing.T, err error, code ErrorCode, msg string) {
	t.Helper()
	var fe *Error
	if !errors.As(err, &fe) {
		t.Fatalf("error %v (%T), want a refusal containing %q", err, err, msg)
	}
	if fe.Code != code || !strings.Contains(fe.Msg, msg) {
		t.Fatalf("refusal %d %q, want %d containing %q", fe.Code, fe.Msg, code, msg)
	}
}

// mergeCases drive TestMergeTask and BenchmarkMergeTask.
var mergeCases = []struct {
	name          string
	stored, patch string
	limit         int // 0: 1 KiB
	id            int64
	want          string
	err           string // a refusal's message
	storeErr      bool   // an error that is not a refusal
}{
	{
		name:   "field replaced in place",
		stored: `{"id":1,"desc":"a","start":5}`, patch: `{"desc":"b"}`,
		id: 1, want: `{"id":1,"desc":"b","start":5}`,
	},
	{
		name:   "new fields appended in patch order",
		stored: `{"id":1,"desc":"a"}`, patch: `{"z":1,"desc":"b","a":2}`,
		id: 1, want: `{"id":1,"desc":"b","z":1,"a":2}`,
	},
	{
		name:   "fields not sent kept",
		stored: `{"id":1,"desc":"a","tags":["x"],"start":5,"x":{"y":1}}`, patch: `{"start":6}`,
		id: 1, want: `{"id":1,"desc":"a","tags":["x"],"start":6,"x":{"y":1}}`,
	},
	{
		name:   "empty patch",
		stored: `{"id":1,"desc":"a"}`, patch: `{}`,
		id: 1, want: `{"id":1,"desc":"a"}`,
	},
	{
		name:   "same id in the patch",
		stored: `{"id":1,"desc":"a"}`, patch: `{"id":1,"desc":"b"}`,
		id: 1, want: `{"id":1,"desc":"b"}`,
	},
	{
		// Clients renumber a task when it is done.
		name:   "renumbered",
		stored: `{"id":1,"desc":"a"}`, patch: `{"id":-1732540800,"stop":17}`,
		id: -1732540800, want: `{"id":-1732540800,"desc":"a","stop":17}`,
	},
	{
		// A shallow merge: an object replaces an object, null replaces a
		// value (the protocol has no way to remove a field).
		name:   "shallow",
		stored: `{"id":1,"x":{"a":1,"b":2},"desc":"a"}`, patch: `{"x":{"c":3},"desc":null}`,
		id: 1, want: `{"id":1,"x":{"c":3},"desc":null}`,
	},
	{
		name:   "patch spaces compacted",
		stored: `{"id":1,"desc":"a"}`, patch: "{ \"desc\" : \"b c\" ,\n\"tags\" : [ \"t\" ] }",
		id: 1, want: `{"id":1,"desc":"b c","tags":["t"]}`,
	},
	{
		// Keys are kept as written: re-encoding them would escape <, >
		// and & and change what the client stored.
		name:   "keys kept verbatim",
		stored: `{"id":1,"a<b&c>":1,"k\u0065y":2}`, patch: `{"a<b&c>":3,"key":4,"\u00e9":5}`,
		id: 1, want: `{"id":1,"a<b&c>":3,"k\u0065y":4,"\u00e9":5}`,
	},
	{
		// Tasks stored before duplicate keys were refused: the key that
		// every reader saw (the last) keeps the first place.
		name:   "stored duplicate collapsed",
		stored: `{"id":1,"a":1,"b":2,"a":3}`, patch: `{"desc":"x"}`,
		id: 1, want: `{"id":1,"a":3,"b":2,"desc":"x"}`,
	},
	{
		name:   "stored duplicate replaced",
		stored: `{"id":1,"a":1,"a":3}`, patch: `{"a":4}`,
		id: 1, want: `{"id":1,"a":4}`,
	},
	{
		name:   "stored with spaces",
		stored: `{ "id" : 1 , "desc" : "a" }`, patch: `{"x":1}`,
		id: 1, want: `{"id":1,"desc":"a","x":1}`,
	},
	{
		name:   "many fields",
		stored: manyFields(2000, ""), patch: `{"f1999":"x","f0":"y","new":1}`, limit: 1 << 20,
		id: 1, want: strings.Replace(strings.Replace(manyFields(2000, ""), `"f1999":1999}`, `"f1999":"x","new":1}`, 1), `"f0":0,`, `"f0":"y",`, 1),
	},

	{name: "renumbered to a fraction", stored: `{"id":1}`, patch: `{"id":1.5}`, err: "task id must be an integer"},
	{name: "renumbered to 2.0", stored: `{"id":1}`, patch: `{"id":2.0}`, err: "task id must be an integer"},
	{name: "renumbered to 2e0", stored: `{"id":1}`, patch: `{"id":2e0}`, err: "task id must be an integer"},
	{name: "renumbered past 2^53-1", stored: `{"id":1}`, patch: `{"id":9007199254740992}`, err: "task id must be an integer"},
	{name: "id removed", stored: `{"id":1}`, patch: `{"id":null}`, err: "task id must be an integer"},
	{name: "desc made a number", stored: `{"id":1,"desc":"a"}`, patch: `{"desc":5}`, err: "task 1: desc must be a string"},
	{name: "tags made a string", stored: `{"id":1}`, patch: `{"tags":"x"}`, err: "task 1: tags must be an array of strings"},
	{name: "grown past the limit", stored: `{"id":1,"d":"` + strings.Repeat("x", 20) + `"}`, patch: `{"e":"xxxxxxx"}`, limit: 40, err: "task 1 exceeds 40 bytes"},
	{name: "patch not an object", stored: `{"id":1}`, patch: `[1]`, err: "task must be a JSON object"},
	{name: "patch not JSON", stored: `{"id":1}`, patch: `{"desc":`, err: "task must be a JSON object"},
	{name: "patch duplicate key", stored: `{"id":1}`, patch: `{"desc":"a","desc":"b"}`, err: `task has duplicate key "desc"`},
	{name: "patch duplicate id", stored: `{"id":1}`, patch: `{"id":2,"id":1}`, err: `task has duplicate key "id"`},
	{name: "patch invalid UTF-8", stored: `{"id":1}`, patch: "{\"desc\":\"\xff\"}", err: "task is not valid UTF-8"},
	{
		// A task stored before the UTF-8 check cannot be kept as it is,
		// only mended.
		name:   "stored invalid UTF-8 kept",
		stored: "{\"id\":1,\"desc\":\"\xff\"}", patch: `{"done":true}`,
		err: "task is not valid UTF-8",
	},
	{
		name:   "stored invalid UTF-8 mended",
		stored: "{\"id\":1,\"desc\":\"\xff\"}", patch: `{"desc":"ok"}`,
		id: 1, want: `{"id":1,"desc":"ok"}`,
	},
	{name: "stored not JSON", stored: `{"id":1`, patch: `{}`, storeErr: true},
	{name: "stored not an object", stored: `[]`, patch: `{}`, storeErr: true},
}

func TestMergeTask(t *testing.T) {
	for _, tc := range mergeCases {
		t.Run(tc.name, func(t *testing.T) {
			stored, patch := []byte(tc.stored), []byte(tc.patch)
			got, err := MergeTask(stored, patch, cmpOr(tc.limit, 1<<10))
			switch {
			case tc.storeErr:
				if err == nil || IsRefusal(err) {
					t.Fatalf("error %v, want an error of the store", err)
				}
				return
			case tc.err != "":
				wantRefusal(t, err, CodeInvalidTask, tc.err)
				return
			case err != nil:
				t.Fatalf("refused: %v", err)
			}
			if got.ID != tc.id || string(got.Raw) != tc.want {
				t.Fatalf("got %d %s\nwant %d %s", got.ID, got.Raw, tc.id, tc.want)
			}
			// The merge is a task as ParseTask would store it.
			again, err := ParseTask(got.Raw, cmpOr(tc.limit, 1<<10))
			if err != nil || again.ID != got.ID || !bytes.Equal(again.Raw, got.Raw) {
				t.Fatalf("merged task %s parses again as %d %s, %v", got.Raw, again.ID, again.Raw, err)
			}
			// Neither input aliases the result.
			clear(stored)
			clear(patch)
			if string(got.Raw) != tc.want {
				t.Fatalf("merged task changed with its inputs: %s", got.Raw)
			}
		})
	}
}

func BenchmarkMergeTask(b *testing.B) {
	for _, tc := range mergeCases {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			stored, patch := []byte(tc.stored), []byte(tc.patch)
			limit := cmpOr(tc.limit, 1<<10)
			for b.Loop() {
				MergeTask(stored, patch, limit)
			}
		})
	}
}

func TestParsePatch(t *testing.T) {
	for _, tc := range []struct {
		in    string
		id    int64
		hasID bool
		err   string
	}{
		{in: `{"desc":"x"}`},
		{in: `{}`},
		{in: `{"id":7,"desc":"x"}`, id: 7, hasID: true},
		{in: `{"id":-7}`, id: -7, hasID: true},
		// The rest is checked on the merged task.
		{in: `{"desc":5}`},
		{in: `{"id":7.0}`, err: "task id must be an integer"},
		{in: `{"id":"7"}`, err: "task id must be an integer"},
		{in: `{"id":null}`, err: "task id must be an integer"},
		{in: `{"id":1,"id":2}`, err: `task has duplicate key "id"`},
		{in: `{"a":1,"\u0061":2}`, err: `task has duplicate key "a"`},
		{in: "{\"desc\":\"\xff\"}", err: "task is not valid UTF-8"},
		{in: `[]`, err: "task must be a JSON object"},
		{in: `{"id":1}x`, err: "task must be a JSON object"},
	} {
		id, hasID, err := ParsePatch([]byte(tc.in))
		if tc.err != "" {
			wantRefusal(t, err, CodeInvalidTask, tc.err)
			continue
		}
		if err != nil || id != tc.id || hasID != tc.hasID {
			t.Errorf("ParsePatch(%s) = %d, %v, %v; want %d, %v", tc.in, id, hasID, err, tc.id, tc.hasID)
		}
	}
}

func TestTaskIndexIs(t *testing.T) {
	for _, tc := range []struct {
		task, index string
		want        bool
	}{
		{`{"id":1,"index":"12"}`, "12", true},
		{`{"id":1,"index":"12"}`, "1", false},
		{`{"id":1,"index":"12"}`, "12 ", false},
		{`{"id":1,"index":"\u0031\u0032"}`, "12", true},
		{`{"id":1,"index":"a\"b"}`, `a"b`, true},
		{`{"id":1,"index":""}`, "", true},
		// A number index matches its text, as a number task_index or a
		// string holding the same digits does.
		{`{"id":1,"index":12}`, "12", true},
		{`{"id":1,"index":-3}`, "-3", true},
		{`{"id":1,"index":12.0}`, "12", false},
		{`{"id":1,"index":12}`, "12.0", false},
		// Not an index: null, booleans, objects match nothing, even
		// their own text.
		{`{"id":1,"index":null}`, "null", false},
		{`{"id":1,"index":true}`, "true", false},
		{`{"id":1,"index":["12"]}`, `["12"]`, false},
		{`{"id":1}`, "12", false},
		{`{"id":1,"x":{"index":"12"}}`, "12", false},
		// A task stored before duplicates were refused: the last, as a
		// JSON reader sees it.
		{`{"id":1,"index":"1","index":"2"}`, "2", true},
		{`{"id":1,"index":"1","index":"2"}`, "1", false},
		{`not json`, "12", false},
	} {
		if got := taskIndexIs([]byte(tc.task), tc.index); got != tc.want {
			t.Errorf("taskIndexIs(%s, %q) = %v, want %v", tc.task, tc.index, got, tc.want)
		}
	}
}

func TestCheckVersion(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		err      string
	}{
		{in: ``, want: ``},
		{in: `null`, want: ``},
		{in: ` null `, want: ``},
		{in: `1732540800123`, want: `1732540800123`},
		{in: ` 5 `, want: `5`},
		{in: `-1`, want: `-1`},
		{in: `1.5e300`, want: `1.5e300`},
		{in: `123456789012345678901234567890`, want: `123456789012345678901234567890`},
		{in: `"1732540800123"`, want: `"1732540800123"`},
		{in: `""`, want: `""`},
		{in: `"v\u00e9"`, want: `"v\u00e9"`},
		{in: `{}`, err: "version must be a number or a string"},
		{in: `[1]`, err: "version must be a number or a string"},
		{in: `true`, err: "version must be a number or a string"},
		{in: `-`, err: "version must be a number or a string"},
		{in: `1x`, err: "version must be a number or a string"},
		{in: `"open`, err: "version must be a number or a string"},
		{in: `1 2`, err: "version must be a number or a string"},
		{in: "\"\xff\"", err: "version is not valid UTF-8"},
	} {
		got, err := CheckVersion(json.RawMessage(tc.in))
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("CheckVersion(%s) = %s, %v; want error %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || string(got) != tc.want || (tc.want == "") != (got == nil) {
			t.Errorf("CheckVersion(%s) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// versionCases drive TestVersionOlder and BenchmarkVersionOlder: whether a
// is older than b.
var versionCases = []struct {
	a, b  string
	older bool
}{
	{"1", "2", true},
	{"2", "1", false},
	{"1", "1", false},
	{"1732540800123", "1732540800124", true},
	// Beyond 2^53, where float64 reads both as the same number.
	{"9007199254740993", "9007199254740994", true},
	{"9007199254740994", "9007199254740993", false},
	{"123456789012345678901234567890", "123456789012345678901234567891", true},
	// Fractions.
	{"1.25", "1.5", true},
	{"1.5", "1.25", false},
	{"0.1", "0.10", false},
	{"0.10", "0.1", false},
	{"0.001", "0.01", true},
	{"1.0000000000000000000001", "1.0000000000000000000002", true},
	{"2", "2.0000000000000000000001", true},
	// Exponents.
	{"999", "1e3", true},
	{"1e3", "999", false},
	{"1E3", "1000", false},
	{"1000", "1e+3", false},
	{"1.5e2", "151", true},
	{"12e-1", "1.3", true},
	{"1.3", "12e-1", false},
	{"0.5e1", "5", false},
	{"1732540800123", "1.732540800124e12", true},
	// Signs and zeros.
	{"-1", "0", true},
	{"0", "-1", false},
	{"-2", "-1", true},
	{"-1e2", "-99", true},
	{"-99", "-1e2", false},
	{"-0", "0", false},
	{"0", "-0", false},
	{"0.0e5", "0", false},
	{"-0.5", "-0", true},
	{"-1", "1", true},
	// Exponents too large for big.Rat, or costly for it: still exact.
	{"1e1000000", "2e1000000", true},
	{"2e1000000", "1e1000000", false},
	{"1e999999999999999999999", "1e1000000000000000000000", true},
	{"1e-1000000000000000000000", "1e-999999999999999999999", true},
	{"-1e999999999999999999999", "1", true},
	{"1e-999999999999999999999", "0", false},
	// Strings are never compared, with anything.
	{`"1"`, `"2"`, false},
	{`"1"`, "2", false},
	{"1", `"2"`, false},
	{`"2"`, "1", false},
	// Nothing to compare.
	{"", "1", false},
	{"1", "", false},
	{"null", "1", false},
}

func TestVersionOlder(t *testing.T) {
	for _, tc := range versionCases {
		if got := versionOlder(json.RawMessage(tc.a), json.RawMessage(tc.b)); got != tc.older {
			t.Errorf("versionOlder(%s, %s) = %v, want %v", tc.a, tc.b, got, tc.older)
		}
	}
}

func BenchmarkVersionOlder(b *testing.B) {
	for _, tc := range versionCases {
		b.Run(tc.a+"<"+tc.b, func(b *testing.B) {
			b.ReportAllocs()
			x, y := json.RawMessage(tc.a), json.RawMessage(tc.b)
			for b.Loop() {
				versionOlder(x, y)
			}
		})
	}
}

// FuzzParseTask: whatever the input, ParseTask either refuses it with an
// *Error or returns a compact JSON object, valid UTF-8, within the limit,
// whose id is its "id" member for any JSON reader and which parses again to
// the same task.
func FuzzParseTask(f *testing.F) {
	for _, tc := range parseCases {
		f.Add([]byte(tc.in))
	}
	for _, tc := range mergeCases {
		if len(tc.stored) < 1<<10 { // large seeds slow the fuzzer down
			f.Add([]byte(tc.stored))
		}
	}
	const limit = 1 << 10
	f.Fuzz(func(t *testing.T, in []byte) {
		task, err := ParseTask(in, limit)
		if err != nil {
			var fe *Error
			if !errors.As(err, &fe) || fe.Code != CodeInvalidTask {
				t.Fatalf("error %v (%T) is not a refusal", err, err)
			}
			return
		}
		if !json.Valid(task.Raw) || !utf8.Valid(task.Raw) || len(task.Raw) > limit {
			t.Fatalf("accepted %q as %q", in, task.Raw)
		}
		var compact bytes.Buffer
		json.Compact(&compact, task.Raw)
		if !bytes.Equal(compact.Bytes(), task.Raw) {
			t.Fatalf("stored %q is not compact", task.Raw)
		}
		var members map[string]json.RawMessage
		if err := json.Unmarshal(task.Raw, &members); err != nil {
			t.Fatalf("stored %q is not an object: %v", task.Raw, err)
		}
		if string(members["id"]) != strconv.FormatInt(task.ID, 10) {
			t.Fatalf("stored %q has id %s, parsed as %d", task.Raw, members["id"], task.ID)
		}
		again, err := ParseTask(task.Raw, limit)
		if err != nil || again.ID != task.ID || !bytes.Equal(again.Raw, task.Raw) {
			t.Fatalf("stored %q parses again as %d %q, %v", task.Raw, again.ID, again.Raw, err)
		}
	})
}

// FuzzObjectFields checks the hand-written splitter against encoding/json's
// own tokenizer: the same keys, in order, with the same values.
func FuzzObjectFields(f *testing.F) {
	for _, tc := range parseCases {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		fields, err := objectFields(in)
		if !utf8.Valid(in) {
			// Tasks are checked for UTF-8 first; encoding/json reads an
			// invalid byte as U+FFFD, the splitter keeps it.
			return
		}
		want, wantErr := decoderFields(in)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("objectFields(%q) error %v, encoding/json %v", in, err, wantErr)
		}
		if err != nil {
			return
		}
		if len(fields) != len(want) {
			t.Fatalf("objectFields(%q): %d fields, encoding/json %d", in, len(fields), len(want))
		}
		for i, f := range fields {
			var key string
			json.Unmarshal(f.rawKey, &key)
			if string(f.key) != want[i].key || key != want[i].key || !bytes.Equal(f.raw, want[i].raw) {
				t.Fatalf("objectFields(%q) field %d: %q (%s) = %s, encoding/json %q = %s",
					in, i, f.key, f.rawKey, f.raw, want[i].key, want[i].raw)
			}
		}
		// Compacting first gives the same members, compacted.
		_, cfields, err := compactObject(in)
		if err != nil || len(cfields) != len(fields) {
			t.Fatalf("compactObject(%q): %d fields, %v", in, len(cfields), err)
		}
		for i := range fields {
			var c bytes.Buffer
			json.Compact(&c, fields[i].raw)
			if !bytes.Equal(cfields[i].key, fields[i].key) || !bytes.Equal(cfields[i].raw, c.Bytes()) {
				t.Fatalf("compactObject(%q) field %d: %q = %s", in, i, cfields[i].key, cfields[i].raw)
			}
		}
	})
}

type decodedField struct {
	key string
	raw []byte
}

// decoderFields splits an object with encoding/json's Decoder: slow, and
// the reference for objectFields.
func decoderFields(raw []byte) ([]decodedField, error) {
	if !json.Valid(raw) {
		return nil, errNotObject
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, _ := dec.Token(); tok != json.Delim('{') {
		return nil, errNotObject
	}
	var fields []decodedField
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		fields = append(fields, decodedField{tok.(string), v})
	}
	return fields, nil
}

// FuzzVersionOlder checks the decimal comparison against big.Rat wherever
// big.Rat is cheap: numbers of JSON's grammar with small exponents.
func FuzzVersionOlder(f *testing.F) {
	for _, tc := range versionCases {
		f.Add(tc.a, tc.b)
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		ra, okA := smallRat(a)
		rb, okB := smallRat(b)
		if !okA || !okB {
			versionOlder(json.RawMessage(a), json.RawMessage(b)) // must not panic
			return
		}
		if got, want := versionOlder(json.RawMessage(a), json.RawMessage(b)), ra.Cmp(rb) < 0; got != want {
			t.Fatalf("versionOlder(%s, %s) = %v, want %v", a, b, got, want)
		}
	})
}

// smallRat reads a JSON number whose exponent is small enough for big.Rat.
func smallRat(s string) (*big.Rat, bool) {
	var n json.Number
	if !isNumber([]byte(s)) || json.Unmarshal([]byte(s), &n) != nil || len(s) > 200 {
		return nil, false
	}
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		if e, err := strconv.Atoi(strings.TrimPrefix(s[i+1:], "+")); err != nil || e > 1000 || e < -1000 {
			return nil, false
		}
	}
	return new(big.Rat).SetString(s)
}
