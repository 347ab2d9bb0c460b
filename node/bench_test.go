package node

import (
	"encoding/json"
	"testing"

	"github.com/kronos-sync/kronos-server/feed"
)

var benchChange = feed.Change{
	Seq: 42, UserID: "5f0c2b9e-8d7a-4c1b-9e3f-2a6d4c8b1e07", Kind: feed.ChangeUpdate, TaskID: 1,
	Task:     json.RawMessage(`{"id":1,"desc":"write the report","tags":["work"],"start":1732540800,"active":true}`),
	DeviceID: "0f4b0e7c-3a1e-4f67-9a41-1f6f8a7d2c11", Version: json.RawMessage(`1732540800123`),
}

// BenchmarkEncodeNotification: the one encoding a change gets for all the
// devices of its user.
func BenchmarkEncodeNotification(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		encodeNotification(&benchChange)
	}
}

// appendString quotes plain text itself and leaves the rest to
// encoding/json: both must agree with json.Marshal.
func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "0f4b0e7c-3a1e-4f67-9a41-1f6f8a7d2c11", `quote " and \ back`, "tab\tnew\nline",
		"<tag> & co", "é ü 日本", "\x7f del", "\u2028 sep", "\xff bad utf-8"} {
		want, _ := json.Marshal(s)
		if got := appendString(nil, s); string(got) != string(want) {
			t.Errorf("appendString(%q) = %s, want %s", s, got, want)
		}
	}
}
