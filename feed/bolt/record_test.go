package bolt

import (
	"bytes"
	"encoding/json"
	"math"
	"testing"
)

var testVersions = []string{
	`0`, `-1`, `42`, `-0`, `1700000123`, `1.5e10`, `-0.25E-3`, `123456789012345678901234567890`,
	`""`, `"a"`, `"a<b>&c"`, `"with space"`, `"\"quoted\""`, `"\\u003c"`, `"\u003c"`,
	`"é ü 日本"`, "\"\u2028\u2029\"", `"\u2028"`, `"tab\tnewline\n"`, `"/"`, `"\/"`,
	// Not numbers or strings: encoding/json's way.
	`null`, `true`, `false`, `{"a":1}`, `[1,2]`, `{"a": [1, 2]}`, `[ 1 ]`,
}

// The record is written and read exactly as encoding/json writes and reads
// it, whatever the version.
func TestUserRecordLikeJSON(t *testing.T) {
	counts := []struct {
		seq            uint64
		tasks, devices int
	}{{0, 0, 0}, {1, 2, 3}, {math.MaxUint64, math.MaxInt64, math.MinInt64}, {1e18, 1e17, -1}, {9999999999999999999, 999999999999999999, 10}}
	for _, v := range testVersions {
		for _, c := range counts {
			rec := &userRecord{Version: json.RawMessage(v), Seq: c.seq, Tasks: c.tasks, Devices: c.devices}
			want, err := encodeUserJSON(rec)
			if err != nil {
				t.Fatalf("%s: %v", v, err)
			}
			got, err := encodeUser(rec)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("encodeUser(%+v) = %s, %v; encoding/json writes %s", rec, got, err, want)
			}
			checkDecode(t, got)
		}
	}
	// An invalid version fails as encoding/json fails.
	for _, v := range []string{`01`, `-`, `-01`, `1-`, `--1`, `"a`, `1 2`, `nul`, "\"\x01\""} {
		if _, err := encodeUser(&userRecord{Version: json.RawMessage(v)}); err == nil {
			t.Errorf("version %q was encoded", v)
		}
	}
	// Records in other shapes read as encoding/json reads them.
	for _, r := range []string{
		`{"version":7,"seq":0,"tasks":0,"devices":2}`,
		`{"version": 7, "seq": 1, "tasks": 2, "devices": 3}`,
		`{"seq":1,"version":7,"tasks":2,"devices":3}`,
		`{"version":1,"seq":5,"seq":3,"tasks":0,"devices":0}`,
		`{"version":1,"version":2,"seq":3,"tasks":0,"devices":0}`,
		`{"version":"a","seq":1,"x":"b","seq":2,"tasks":0,"devices":0}`,
		`{"version":"x\",\"seq\":9","seq":1,"tasks":2,"devices":3}`,
		`{"version":7,"seq":01,"tasks":0,"devices":0}`,
		`{"version":7,"seq":18446744073709551615,"tasks":0,"devices":0}`,
		`{"version":7,"seq":18446744073709551616,"tasks":0,"devices":0}`,
		`{"version":7,"seq":1,"tasks":-0,"devices":-2}`,
		`{"version":7,"seq":1,"tasks":9223372036854775807,"devices":0}`,
		`{"version":7,"seq":1,"tasks":9223372036854775808,"devices":0}`,
		`{"Version":7,"seq":1,"tasks":2,"devices":3}`,
		`{"version":7,"seq":1,"tasks":2,"devices":3,"more":1}`,
		`{"version":7,"seq":1,"tasks":2,"devices":3} `,
		`{"version":7,"seq":1,"tasks":2,"devices":3}}`,
		`{"version":,"seq":1,"tasks":2,"devices":3}`,
		`{"version": 7 ,"seq":1,"tasks":2,"devices":3}`,
		"{\"version\":\"\xff\",\"seq\":1,\"tasks\":2,\"devices\":3}",
		`{"version":null,"seq":1,"tasks":2,"devices":3}`,
		`{}`, ``, `null`,
	} {
		checkDecode(t, []byte(r))
	}
}

// checkDecode checks that decodeUser reads v as json.Unmarshal does.
func checkDecode(t testing.TB, v []byte) {
	t.Helper()
	want := new(userRecord)
	wantErr := json.Unmarshal(v, want)
	got, err := decodeUser(v)
	switch {
	case (err != nil) != (wantErr != nil):
		t.Fatalf("decodeUser(%q): %v; encoding/json: %v", v, err, wantErr)
	case err == nil && (!bytes.Equal(got.Version, want.Version) || (got.Version == nil) != (want.Version == nil) ||
		got.Seq != want.Seq || got.Tasks != want.Tasks || got.Devices != want.Devices):
		t.Fatalf("decodeUser(%q) = %+v, encoding/json reads %+v", v, got, want)
	}
}

func FuzzUserRecord(f *testing.F) {
	for _, v := range testVersions {
		f.Add([]byte(`{"version":` + v + `,"seq":12,"tasks":3,"devices":10}`))
	}
	f.Add([]byte(`{"version":"x\",\"seq\":9","seq":1,"tasks":2,"devices":3}`))
	f.Fuzz(func(t *testing.T, v []byte) {
		checkDecode(t, v)
		rec, err := decodeUser(v)
		if err != nil {
			return
		}
		want, wantErr := encodeUserJSON(rec)
		got, err := encodeUser(rec)
		if (err != nil) != (wantErr != nil) || !bytes.Equal(got, want) {
			t.Fatalf("encodeUser(%+v) = %s, %v; encoding/json: %s, %v", rec, got, err, want, wantErr)
		}
	})
}

// BenchmarkUserRecord reads and rewrites a user record, as every write
// does: encodeUser and decodeUser against encoding/json.
func BenchmarkUserRecord(b *testing.B) {
	v := []byte(`{"version":1700000123,"seq":48213,"tasks":20,"devices":10}`)
	b.Run("direct", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			rec, err := decodeUser(v)
			if err != nil {
				b.Fatal(err)
			}
			rec.Seq++
			if _, err := encodeUser(rec); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			rec := new(userRecord)
			if err := json.Unmarshal(v, rec); err != nil {
				b.Fatal(err)
			}
			rec.Seq++
			if _, err := encodeUserJSON(rec); err != nil {
				b.Fatal(err)
			}
		}
	})
}
