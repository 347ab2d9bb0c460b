package node_test

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/gobwas/ws/wsutil"

	"github.com/kronos-sync/kronos-server/conn"
	"github.com/kronos-sync/kronos-server/feed"
	"github.com/kronos-sync/kronos-server/node"
	"github.com/kronos-sync/kronos-server/node/client"
)

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// each runs fn once per transport and engine, on a fresh node.
func each(t *testing.T, opts node.Options, fn func(t *testing.T, h *harness, tr client.Transport)) {
	for _, engine := range []string{conn.EngineEpoll, conn.EngineGoroutine} {
		for _, tr := range transports {
			t.Run(engine+"/"+string(tr), func(t *testing.T) {
				opts := opts
				opts.Conn.Engine = engine
				fn(t, start(t, opts), tr)
			})
		}
	}
}

func TestLoginCreatesUserAndDevice(t *testing.T) {
	each(t, node.Options{}, func(t *testing.T, h *harness, tr client.Transport) {
		c := h.dial(tr)
		// The Vim client sends "" for the ids it does not have yet.
		sendRaw(t, c, `{"type":"login","user_id":"","device_id":"","version":""}`)
		raw := nextRaw(t, c)
		var m struct {
			Success  *bool           `json:"success"`
			Type     string          `json:"type"`
			UserID   string          `json:"user_id"`
			DeviceID string          `json:"device_id"`
			Version  json.RawMessage `json:"version"`
		}
		if err := json.Unmarshal([]byte(raw), &m); err != nil {
			t.Fatal(err)
		}
		if m.Success == nil || !*m.Success || m.Type != "login" || string(m.Version) != "-1" {
			t.Fatalf("login answer %s", raw)
		}
		if !uuidV4.MatchString(m.UserID) || !uuidV4.MatchString(m.DeviceID) || m.UserID == m.DeviceID {
			t.Fatalf("ids are not random UUIDv4s: %s", raw)
		}
		// Known user, no device: a new device of the same user.
		_, m2 := h.login(tr, m.UserID, "")
		if m2.Str("user_id") != m.UserID || m2.Str("device_id") == m.DeviceID || !uuidV4.MatchString(m2.Str("device_id")) {
			t.Fatalf("second device login %v", m2)
		}
		// Known user and device.
		_, m3 := h.login(tr, m.UserID, m.DeviceID)
		if m3.Str("device_id") != m.DeviceID {
			t.Fatalf("same device login %v", m3)
		}
	})
}

func TestLoginRefusals(t *testing.T) {
	each(t, node.Options{}, func(t *testing.T, h *harness, tr client.Transport) {
		_, a := h.login(tr, "", "")
		_, b := h.login(tr, "", "")
		c := h.dial(tr)
		send(t, c, map[string]any{"type": "login", "user_id": "not-a-user"})
		expectError(t, c, "login", "unknown user_id")
		send(t, c, map[string]any{"type": "login", "user_id": a.Str("user_id"), "device_id": b.Str("device_id")})
		expectError(t, c, "login", "not registered for this user")
		send(t, c, map[string]any{"type": "login", "user_id": a.Str("user_id"), "device_id": "no-such-device"})
		expectError(t, c, "login", "not registered for this user")
		send(t, c, map[string]any{"type": "login", "user_id": 42})
		expectError(t, c, "login", "user_id must be a string")
		// A refused login does not bind: the client may try again.
		send(t, c, map[string]any{"type": "login", "user_id": a.Str("user_id"), "device_id": a.Str("device_id")})
		expectType(t, c, "login")
		send(t, c, map[string]any{"type": "login"})
		expectError(t, c, "login", "already logged in")
	})
}

func TestRequestsNeedLogin(t *testing.T) {
	each(t, node.Options{}, func(t *testing.T, h *harness, tr client.Transport) {
		c := h.dial(tr)
		for _, typ := range []string{"read-all", "write-all", "create", "update", "delete"} {
			send(t, c, map[string]any{"type": typ, "task": map[string]any{"id": 1}, "tasks": []any{}, "task_id": 1})
			expectError(t, c, typ, "not logged in")
		}
	})
}

func TestCreateNotifiesEveryDevice(t *testing.T) {
	each(t, node.Options{}, func(t *testing.T, h *harness, tr client.Transport) {
		c1, m := h.login(tr, "", "")
		user, dev1 := m.Str("user_id"), m.Str("device_id")
		other := client.TCP // the second device uses the other transport
		if tr == client.TCP {
			other = client.WebSocket
		}
		c2, _ := h.login(other, user, "")
		sendRaw(t, c1, `{"type":"create","user_id":"`+user+`","device_id":"`+dev1+`","task":{"id":1,"desc":"write tests","tags":["dev"],"start":1732540800,"last_active":null,"extra":{"nested":[1,2]}},"version":1732540800123}`)
		want := `{"success":true,"type":"create","task":{"id":1,"desc":"write tests","tags":["dev"],"start":1732540800,"last_active":null,"extra":{"nested":[1,2]}},"device_id":"` + dev1 + `","version":1732540800123}`
		for _, c := range []*client.Client{c1, c2} {
			if got := nextRaw(t, c); got != want {
				t.Fatalf("notification\n got %s\nwant %s", got, want)
			}
		}
		send(t, c2, map[string]any{"type": "read-all"})
		if got := nextRaw(t, c2); got != `{"success":true,"type":"read-all","tasks":[{"id":1,"desc":"write tests","tags":["dev"],"start":1732540800,"last_active":null,"extra":{"nested":[1,2]}}],"version":1732540800123}` {
			t.Fatalf("read-all %s", got)
		}
		send(t, c2, map[string]any{"type": "create", "task": map[string]any{"id": 1}, "version": 1})
		expectError(t, c2, "create", "task 1 already exists")
	})
}

func TestUpdate(t *testing.T) {
	each(t, node.Options{}, func(t *testing.T, h *harness, tr client.Transport) {
		c, m := h.login(tr, "", "")
		dev := m.Str("device_id")
		sendRaw(t, c, `{"type":"create","task":{"id":1,"desc":"a","tags":["x"],"start":5},"version":1}`)
		expectType(t, c, "create")
		// Fields sent replace the stored ones; the others are kept.
		sendRaw(t, c, `{"type":"update","task":{"id":1,"desc":"b","stop":9},"version":2}`)
		if got := nextRaw(t, c); got != `{"success":true,"type":"update","task":{"id":1,"desc":"b","tags":["x"],"start":5,"stop":9},"device_id":"`+dev+`","version":2}` {
			t.Fatalf("update notification %s", got)
		}
		// task_id names the task; task.id renumbers it.
		sendRaw(t, c, `{"type":"update","task_id":1,"task":{"id":-1,"done":true},"version":3}`)
		if got := nextRaw(t, c); got != `{"success":true,"type":"update","task":{"id":-1,"desc":"b","tags":["x"],"start":5,"stop":9,"done":true},"device_id":"`+dev+`","version":3}` {
			t.Fatalf("renumber notification %s", got)
		}
		sendRaw(t, c, `{"type":"update","task":{"id":7,"desc":"x"},"version":4}`)
		expectError(t, c, "update", "task 7 not found")
		sendRaw(t, c, `{"type":"update","task":{"desc":"no id"},"version":4}`)
		expectError(t, c, "update", "missing task_id")
		sendRaw(t, c, `{"type":"update","task_id":-1,"task":{"tags":[1]},"version":4}`)
		expectError(t, c, "update", "tags must be an array of strings")
		send(t, c, map[string]any{"type": "read-all"})
		if m := expectType(t, c, "read-all"); fmt.Sprint(m["version"]) != "3" {
			t.Fatalf("refused updates changed the version: %v", m)
		}
	})
}

func TestDelete(t *testing.T) {
	each(t, node.Options{}, func(t *testing.T, h *harness, tr client.Transport) {
		c, m := h.login(tr, "", "")
		dev := m.Str("device_id")
		sendRaw(t, c, `{"type":"write-all","tasks":[{"id":1},{"id":2,"index":"12"},{"id":3}],"version":1}`)
		for range 3 {
			expectType(t, c, "create")
		}
		sendRaw(t, c, `{"type":"delete","task_id":1,"version":2}`)
		if got := nextRaw(t, c); got != `{"success":true,"type":"delete","task_id":1,"device_id":"`+dev+`","version":2}` {
			t.Fatalf("delete notification %s", got)
		}
		// Older clients name the task by its index; the notification still
		// carries task_id, the only field the Vim client reads.
		sendRaw(t, c, `{"type":"delete","task_index":"12","version":3}`)
		if got := nextRaw(t, c); got != `{"success":true,"type":"delete","task_id":2,"device_id":"`+dev+`","version":3}` {
			t.Fatalf("delete by index notification %s", got)
		}
		sendRaw(t, c, `{"type":"delete","task_id":1,"version":4}`)
		expectError(t, c, "delete", "task 1 not found")
		sendRaw(t, c, `{"type":"delete","task_id":"x","version":4}`)
		expectError(t, c, "delete", "task_id must be an integer")
		sendRaw(t, c, `{"type":"delete","version":4}`)
		expectError(t, c, "delete", "missing task_id")
	})
}

func TestWriteAll(t *testing.T) {
	each(t, node.Options{}, func(t *testing.T, h *harness, tr client.Transport) {
		c1, m := h.login(tr, "", "")
		c2, _ := h.login(tr, m.Str("user_id"), "")
		// The seed README's form: data.tasks.
		sendRaw(t, c1, `{"type":"write-all","data":{"tasks":[{"id":1,"desc":"keep"},{"id":2,"desc":"old"},{"id":3}]},"version":1800000000000}`)
		for _, c := range []*client.Client{c1, c2} {
			for id := 1; id <= 3; id++ {
				if n := expectType(t, c, "create"); fmt.Sprint(n["task"].(map[string]any)["id"]) != fmt.Sprint(id) {
					t.Fatalf("create %d: %v", id, n)
				}
			}
		}
		// The protocol's form: tasks. Notified as the difference.
		sendRaw(t, c1, `{"type":"write-all","tasks":[{"id":1,"desc":"keep"},{"id":2,"desc":"new"},{"id":4}],"version":1800000000001}`)
		for _, c := range []*client.Client{c1, c2} {
			if n := expectType(t, c, "delete"); n["task_id"] != float64(3) {
				t.Fatalf("delete: %v", n)
			}
			if n := expectType(t, c, "update"); n["task"].(map[string]any)["desc"] != "new" {
				t.Fatalf("update: %v", n)
			}
			if n := expectType(t, c, "create"); n["task"].(map[string]any)["id"] != float64(4) {
				t.Fatalf("create: %v", n)
			}
		}
		// A stale device must not wipe newer data.
		sendRaw(t, c2, `{"type":"write-all","tasks":[],"version":1799999999999}`)
		expectError(t, c2, "write-all", "older than the stored version")
		sendRaw(t, c2, `{"type":"write-all","tasks":[{"id":1},{"id":1}],"version":1900000000000}`)
		expectError(t, c2, "write-all", "duplicate task id 1")
		sendRaw(t, c2, `{"type":"write-all","version":1900000000000}`)
		expectError(t, c2, "write-all", "missing tasks")
		send(t, c2, map[string]any{"type": "read-all"})
		if got := nextRaw(t, c2); got != `{"success":true,"type":"read-all","tasks":[{"id":1,"desc":"keep"},{"id":2,"desc":"new"},{"id":4}],"version":1800000000001}` {
			t.Fatalf("read-all %s", got)
		}
	})
}

func TestVersionsEchoedExactly(t *testing.T) {
	each(t, node.Options{}, func(t *testing.T, h *harness, tr client.Transport) {
		c, m := h.login(tr, "", "")
		for i, v := range []string{`1732540800123`, `"1732540800124"`, `123456789012345678901234567890`, `1.5e3`} {
			sendRaw(t, c, fmt.Sprintf(`{"type":"create","task":{"id":%d},"version":%s}`, i, v))
			var got struct{ Version json.RawMessage }
			json.Unmarshal([]byte(nextRaw(t, c)), &got)
			if string(got.Version) != v {
				t.Fatalf("version %s notified as %s", v, got.Version)
			}
			send(t, c, map[string]any{"type": "read-all"})
			json.Unmarshal([]byte(nextRaw(t, c)), &got)
			if string(got.Version) != v {
				t.Fatalf("version %s read back as %s", v, got.Version)
			}
			d := h.dial(tr)
			send(t, d, map[string]any{"type": "login", "user_id": m.Str("user_id")})
			json.Unmarshal([]byte(nextRaw(t, d)), &got)
			if string(got.Version) != v {
				t.Fatalf("version %s logged in as %s", v, got.Version)
			}
			d.Close()
		}
		sendRaw(t, c, `{"type":"create","task":{"id":99},"version":{"no":1}}`)
		expectError(t, c, "create", "version must be a number or a string")
	})
}

func TestIdentityIsTheConnections(t *testing.T) {
	each(t, node.Options{}, func(t *testing.T, h *harness, tr client.Transport) {
		c, m := h.login(tr, "", "")
		_, other := h.login(tr, "", "")
		send(t, c, map[string]any{"type": "read-all", "user_id": other.Str("user_id")})
		expectError(t, c, "read-all", "user_id does not match")
		send(t, c, map[string]any{"type": "create", "device_id": other.Str("device_id"), "task": map[string]any{"id": 1}})
		expectError(t, c, "create", "device_id does not match")
		// Matching or empty ids are fine.
		send(t, c, map[string]any{"type": "read-all", "user_id": m.Str("user_id"), "device_id": ""})
		expectType(t, c, "read-all")
	})
}

func TestUsersAreIsolated(t *testing.T) {
	each(t, node.Options{}, func(t *testing.T, h *harness, tr client.Transport) {
		a, _ := h.login(tr, "", "")
		b, _ := h.login(tr, "", "")
		sendRaw(t, a, `{"type":"create","task":{"id":1,"desc":"a's secret"},"version":1}`)
		expectType(t, a, "create")
		// Changes are delivered in commit order: b's own change comes after
		// a's, so anything of a's sent to b would arrive first.
		sendRaw(t, b, `{"type":"create","task":{"id":1,"desc":"b's"},"version":1}`)
		if n := expectType(t, b, "create"); n["task"].(map[string]any)["desc"] != "b's" {
			t.Fatalf("b got %v", n)
		}
		send(t, b, map[string]any{"type": "read-all"})
		if got := nextRaw(t, b); got != `{"success":true,"type":"read-all","tasks":[{"id":1,"desc":"b's"}],"version":1}` {
			t.Fatalf("b read %s", got)
		}
	})
}

func TestTaskValidation(t *testing.T) {
	each(t, node.Options{Limits: feed.Limits{MaxTaskBytes: 200}}, func(t *testing.T, h *harness, tr client.Transport) {
		c, _ := h.login(tr, "", "")
		for _, tc := range []struct{ task, want string }{
			{`"x"`, "task must be a JSON object"},
			{`{"desc":"x"}`, "task has no id"},
			{`{"id":"1"}`, "task id must be an integer"},
			{`{"id":1.5}`, "task id must be an integer"},
			// Integers written as integers only: one spelling per id.
			{`{"id":1.0}`, "task id must be an integer"},
			{`{"id":1e2}`, "task id must be an integer"},
			{`{"id":-0}`, "task id must be an integer"},
			{`{"id":9007199254740992}`, "task id must be an integer"},
			// Each key once: otherwise the checks and the clients may
			// read different values.
			{`{"id":1,"id":2}`, `task has duplicate key "id"`},
			{`{"id":1,"desc":"a","desc":5}`, `task has duplicate key "desc"`},
			{`{"id":1,"desc":5}`, "desc must be a string"},
			{`{"id":1,"tags":"x"}`, "tags must be an array of strings"},
			{`{"id":1,"tags":["a",2]}`, "tags must be an array of strings"},
			{`{"id":1,"big":"` + strings.Repeat("x", 300) + `"}`, "exceeds 200 bytes"},
		} {
			sendRaw(t, c, `{"type":"create","task":`+tc.task+`,"version":1}`)
			expectError(t, c, "create", tc.want)
		}
		sendRaw(t, c, `{"type":"create","version":1}`)
		expectError(t, c, "create", "missing task")
		sendRaw(t, c, `{"type":"create","task":{"id":-9007199254740991,"desc":null,"tags":null},"version":1}`)
		expectType(t, c, "create")
		// Updates and write-all are held to the same rules.
		sendRaw(t, c, `{"type":"update","task":{"id":-9007199254740991,"desc":"a","desc":"b"},"version":2}`)
		expectError(t, c, "update", `task has duplicate key "desc"`)
		sendRaw(t, c, `{"type":"update","task_id":-9007199254740991,"task":{"id":2.0},"version":2}`)
		expectError(t, c, "update", "task id must be an integer")
		sendRaw(t, c, `{"type":"write-all","tasks":[{"id":1},{"id":2,"x":1,"x":2}],"version":2}`)
		expectError(t, c, "write-all", `task has duplicate key "x"`)
		sendRaw(t, c, `{"type":"write-all","tasks":[{"id":1e0}],"version":2}`)
		expectError(t, c, "write-all", "task id must be an integer")
		send(t, c, map[string]any{"type": "read-all"})
		if got := nextRaw(t, c); got != `{"success":true,"type":"read-all","tasks":[{"id":-9007199254740991,"desc":null,"tags":null}],"version":1}` {
			t.Fatalf("refused writes changed the data: %s", got)
		}
	})
}

// task_id is an integer written as one, or a string of its digits; 1.0 and
// 1e0 name no task.
func TestTaskIDRequests(t *testing.T) {
	each(t, node.Options{}, func(t *testing.T, h *harness, tr client.Transport) {
		c, _ := h.login(tr, "", "")
		sendRaw(t, c, `{"type":"write-all","tasks":[{"id":1},{"id":2},{"id":3}],"version":1}`)
		for range 3 {
			expectType(t, c, "create")
		}
		for _, ref := range []string{`1.0`, `1e0`, `"1.0"`, `"01"`, `-0`} {
			sendRaw(t, c, `{"type":"delete","task_id":`+ref+`,"version":2}`)
			expectError(t, c, "delete", "task_id must be an integer between -9007199254740991 and 9007199254740991")
			sendRaw(t, c, `{"type":"update","task_id":`+ref+`,"task":{"done":true},"version":2}`)
			expectError(t, c, "update", "task_id must be an integer")
		}
		sendRaw(t, c, `{"type":"delete","task_index":1.5,"version":2}`)
		expectError(t, c, "delete", "task_index must be a string or an integer")
		sendRaw(t, c, `{"type":"delete","task_id":"1","version":2}`)
		if n := expectType(t, c, "delete"); n["task_id"] != float64(1) {
			t.Fatalf("delete: %v", n)
		}
		sendRaw(t, c, `{"type":"update","task_id":"2","task":{"done":true},"version":3}`)
		if n := expectType(t, c, "update"); n["task"].(map[string]any)["done"] != true {
			t.Fatalf("update: %v", n)
		}
	})
}

// Raw TCP streams and binary WebSocket messages carry any bytes (text
// messages that are not UTF-8 close the WebSocket, see conn). A request
// that is not UTF-8 is refused whole and stores nothing; the connection
// stays open.
func TestInvalidUTF8IsRefused(t *testing.T) {
	each(t, node.Options{}, func(t *testing.T, h *harness, tr client.Transport) {
		c, _ := h.login(tr, "", "")
		sendBytes := func(s string) {
			t.Helper()
			var err error
			if tr == client.WebSocket {
				err = wsutil.WriteClientBinary(c.Conn, []byte(s))
			} else {
				_, err = c.Conn.Write([]byte(s))
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		for _, tc := range []struct{ typ, msg string }{
			{"create", "{\"type\":\"create\",\"task\":{\"id\":1,\"desc\":\"caf\xe9\"},\"version\":1}"},
			{"create", "{\"type\":\"create\",\"task\":{\"id\":1,\"\xff\":1},\"version\":1}"},
			{"write-all", "{\"type\":\"write-all\",\"tasks\":[{\"id\":1},{\"id\":2,\"desc\":\"\xed\xa0\x80\"}],\"version\":1}"},
			{"update", "{\"type\":\"update\",\"task\":{\"id\":1,\"desc\":\"\xc3\"},\"version\":1}"},
			{"create", "{\"type\":\"create\",\"task\":{\"id\":1},\"version\":\"v\x80\"}"},
			{"read-all", "{\"type\":\"read-all\",\"device_id\":\"\xfe\"}"},
		} {
			sendBytes(tc.msg)
			expectError(t, c, tc.typ, "invalid UTF-8")
		}
		send(t, c, map[string]any{"type": "read-all"})
		if got := nextRaw(t, c); got != `{"success":true,"type":"read-all","tasks":[],"version":-1}` {
			t.Fatalf("refused writes changed the data: %s", got)
		}
	})
}

func TestBadRequests(t *testing.T) {
	each(t, node.Options{}, func(t *testing.T, h *harness, tr client.Transport) {
		c, _ := h.login(tr, "", "")
		sendRaw(t, c, `{"type":"frobnicate"}`)
		expectError(t, c, "frobnicate", `unknown request type "frobnicate"`)
		sendRaw(t, c, `{"user_id":"x"}`)
		expectError(t, c, "", "missing request type")
		sendRaw(t, c, `{"type":7}`)
		expectError(t, c, "", "type must be a string")
		sendRaw(t, c, `["login"]`)
		expectError(t, c, "", "request must be a JSON object")
		send(t, c, map[string]any{"type": "read-all"})
		expectType(t, c, "read-all")
	})
}

func TestLimits(t *testing.T) {
	opts := node.Options{Limits: feed.Limits{MaxTasksPerUser: 2, MaxDevicesPerUser: 2}}
	each(t, opts, func(t *testing.T, h *harness, tr client.Transport) {
		c, m := h.login(tr, "", "")
		h.login(tr, m.Str("user_id"), "")
		d := h.dial(tr)
		send(t, d, map[string]any{"type": "login", "user_id": m.Str("user_id")})
		expectError(t, d, "login", "too many devices: at most 2 per user")
		sendRaw(t, c, `{"type":"write-all","tasks":[{"id":1},{"id":2},{"id":3}],"version":1}`)
		expectError(t, c, "write-all", "too many tasks: at most 2 per user")
		for id := 1; id <= 3; id++ {
			sendRaw(t, c, fmt.Sprintf(`{"type":"create","task":{"id":%d},"version":%d}`, id, id))
		}
		// The refusal is answered at once; the notifications of the two
		// accepted creates may come before or after it.
		kinds := map[string]int{}
		for range 3 {
			m := next(t, c)
			if !m.Success() && m.Type() == "create" && strings.Contains(m.Str("error"), "too many tasks") {
				kinds["refused"]++
			} else {
				kinds[m.Type()]++
			}
		}
		if kinds["refused"] != 1 || kinds["create"] != 2 {
			t.Fatalf("got %v, want two create notifications and one refusal", kinds)
		}
	})
}
