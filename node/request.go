package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode"
	"unicode/utf8"

	"github.com/kronos-sync/kronos-server/feed"
)

// Request types. Only append: they are wire names and metric labels.
const (
	typeLogin    = "login"
	typeReadAll  = "read-all"
	typeWriteAll = "write-all"
	typeCreate   = "create"
	typeUpdate   = "update"
	typeDelete   = "delete"
)

// maxIDLength bounds user_id and device_id; server-made ids are 36 bytes.
const maxIDLength = 128

// request is a client request as received. Every field is kept raw so that a
// wrong type gets a precise error instead of a generic decode failure.
type request struct {
	Type      json.RawMessage `json:"type"`
	UserID    json.RawMessage `json:"user_id"`
	DeviceID  json.RawMessage `json:"device_id"`
	Version   json.RawMessage `json:"version"`
	Task      json.RawMessage `json:"task"`
	Tasks     json.RawMessage `json:"tasks"`
	Data      json.RawMessage `json:"data"`
	TaskID    json.RawMessage `json:"task_id"`
	TaskIndex json.RawMessage `json:"task_index"`
}

// errRequest is a request error whose message goes to the client.
type errRequest struct{ msg string }

func (e *errRequest) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &errRequest{fmt.Sprintf(format, args...)}
}

var (
	errInvalidJSON = &errRequest{"invalid JSON"}
	errInvalidUTF8 = &errRequest{"invalid UTF-8"}
)

// decodeRequest parses one message and returns it with its type ("" when
// the message names none). A message that is not valid UTF-8 is refused
// whole: raw TCP and binary WebSocket messages carry any bytes, and a store
// must not keep, nor a WebSocket client receive as text, what is not UTF-8.
func decodeRequest(p []byte) (*request, string, error) {
	req := new(request)
	if err := json.Unmarshal(p, req); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return nil, "", badRequest("request must be a JSON object")
		}
		return nil, "", errInvalidJSON
	}
	if isAbsent(req.Type) {
		return req, "", badRequest("missing request type")
	}
	var typ string
	if json.Unmarshal(req.Type, &typ) != nil {
		return req, "", badRequest("type must be a string")
	}
	// Checked once the type is known, so that the answer names it.
	// (encoding/json reads an invalid byte as U+FFFD: typ is UTF-8.)
	if !utf8.Valid(p) {
		return req, typ, errInvalidUTF8
	}
	return req, typ, nil
}

func isAbsent(raw json.RawMessage) bool { return len(raw) == 0 || string(raw) == "null" }

// optionalString reads a string field; absent, null and "" all give "".
func optionalString(raw json.RawMessage, name string) (string, error) {
	if isAbsent(raw) {
		return "", nil
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", badRequest("%s must be a string", name)
	}
	if len(s) > maxIDLength {
		return "", badRequest("%s exceeds %d bytes", name, maxIDLength)
	}
	// Ids reach the store, the feed's filters and log hashes: checked here,
	// before any of them (a NUL byte broke PostgreSQL's change-log query).
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return "", badRequest("%s must be printable text", name)
		}
	}
	return s, nil
}

func requestVersion(req *request) (json.RawMessage, error) {
	v, err := feed.CheckVersion(req.Version)
	if err != nil {
		return nil, &errRequest{err.Error()}
	}
	return v, nil
}

// parseTaskRef reads task_id: an integer written as one (feed.ParseTaskID),
// or a string holding one ("7").
func parseTaskRef(raw json.RawMessage) (int64, error) {
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		if json.Unmarshal(raw, &s) == nil {
			raw = json.RawMessage(s)
		}
	}
	id, ok := feed.ParseTaskID(raw)
	if !ok {
		return 0, badRequest("task_id must be an integer between -%d and %d", feed.MaxTaskID, feed.MaxTaskID)
	}
	return id, nil
}

// parseTaskIndex reads task_index: a string (older clients), or an integer
// written as one, which names the task whose index is that number.
func parseTaskIndex(raw json.RawMessage) (string, error) {
	index := string(raw)
	if raw[0] == '"' {
		if json.Unmarshal(raw, &index) != nil {
			return "", badRequest("task_index must be a string")
		}
	} else if _, ok := feed.ParseTaskID(raw); !ok {
		return "", badRequest("task_index must be a string or an integer")
	}
	if index == "" {
		return "", badRequest("task_index must not be empty")
	}
	return index, nil
}

// buildWrite turns a write request into a feed.Write for the store,
// checking everything that does not need the stored data.
func buildWrite(typ string, req *request, limits feed.Limits) (*feed.Write, error) {
	version, err := requestVersion(req)
	if err != nil {
		return nil, err
	}
	w := &feed.Write{Version: version}
	switch typ {
	case typeWriteAll:
		w.Kind = feed.WriteAll
		w.Tasks, err = parseTaskList(req, limits)
	case typeCreate:
		w.Kind = feed.WriteCreate
		if isAbsent(req.Task) {
			return nil, badRequest("missing task")
		}
		var t feed.Task
		t, err = feed.ParseTask(req.Task, limits.MaxTaskBytes)
		w.Task = t.Raw
	case typeUpdate:
		w.Kind = feed.WriteUpdate
		w.Task, w.TaskID, err = parseUpdate(req)
	case typeDelete:
		w.Kind = feed.WriteDelete
		switch {
		case !isAbsent(req.TaskID):
			w.TaskID, err = parseTaskRef(req.TaskID)
		case !isAbsent(req.TaskIndex):
			w.TaskIndex, err = parseTaskIndex(req.TaskIndex)
		default:
			err = badRequest("missing task_id")
		}
	}
	if err != nil {
		return nil, err
	}
	return w, nil
}

// parseUpdate returns the fields to merge and the id of the task to update:
// task_id when given, else task.id. The fields are checked here as far as
// they can be without the stored task: a patch with a key twice names no
// task and is refused for that, before the store is asked.
func parseUpdate(req *request) (json.RawMessage, int64, error) {
	if isAbsent(req.Task) {
		return nil, 0, badRequest("missing task")
	}
	id, hasID, err := feed.ParsePatch(req.Task)
	if err != nil {
		return nil, 0, err
	}
	if !isAbsent(req.TaskID) {
		id, err := parseTaskRef(req.TaskID)
		return req.Task, id, err
	}
	if !hasID {
		return nil, 0, badRequest("missing task_id (or task.id)")
	}
	return req.Task, id, nil
}

// parseTaskList reads write-all's tasks: "tasks", or "data":{"tasks":…} as
// the original README words it.
func parseTaskList(req *request, limits feed.Limits) ([]feed.Task, error) {
	raw := req.Tasks
	if isAbsent(raw) && !isAbsent(req.Data) {
		var data struct {
			Tasks json.RawMessage `json:"tasks"`
		}
		if json.Unmarshal(req.Data, &data) != nil {
			return nil, badRequest("data must be an object holding tasks")
		}
		raw = data.Tasks
	}
	if isAbsent(raw) {
		return nil, badRequest("missing tasks")
	}
	var list []json.RawMessage
	if json.Unmarshal(raw, &list) != nil {
		return nil, badRequest("tasks must be an array")
	}
	if len(list) > limits.MaxTasksPerUser {
		return nil, badRequest("too many tasks: at most %d per user", limits.MaxTasksPerUser)
	}
	tasks := make([]feed.Task, 0, len(list))
	seen := make(map[int64]bool, len(list))
	for _, raw := range list {
		t, err := feed.ParseTask(raw, limits.MaxTaskBytes)
		if err != nil {
			return nil, err
		}
		if seen[t.ID] {
			return nil, badRequest("duplicate task id %s", strconv.FormatInt(t.ID, 10))
		}
		seen[t.ID] = true
		tasks = append(tasks, t)
	}
	return tasks, nil
}
