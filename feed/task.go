package feed

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"strconv"
)

// MaxTaskID is the largest task id magnitude, 2^53-1, so that JavaScript
// clients read every id exactly.
const MaxTaskID = 1<<53 - 1

// field is one member of a JSON object, kept in its original order.
type field struct {
	key string
	raw json.RawMessage
}

// objectFields splits a JSON object into its members, in order.
func objectFields(raw []byte) ([]field, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("not an object")
	}
	var fields []field
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		fields = append(fields, field{key, v})
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the object")
	}
	return fields, nil
}

// lookup returns the last value of key (the one a JSON parser keeps).
func lookup(fields []field, key string) (json.RawMessage, bool) {
	for i := len(fields) - 1; i >= 0; i-- {
		if fields[i].key == key {
			return fields[i].raw, true
		}
	}
	return nil, false
}

func isNull(raw []byte) bool   { return string(raw) == "null" }
func isString(raw []byte) bool { return len(raw) > 0 && raw[0] == '"' }
func isNumber(raw []byte) bool {
	return len(raw) > 0 && (raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9')
}

// ParseTaskID reads a task id: an integer (7, -3, also 7.0) of magnitude at
// most MaxTaskID.
func ParseTaskID(raw []byte) (int64, bool) {
	if !isNumber(raw) {
		return 0, false
	}
	if id, err := strconv.ParseInt(string(raw), 10, 64); err == nil {
		return id, id >= -MaxTaskID && id <= MaxTaskID
	}
	r, ok := new(big.Rat).SetString(string(raw))
	if !ok || !r.IsInt() || !r.Num().IsInt64() {
		return 0, false
	}
	id := r.Num().Int64()
	return id, id >= -MaxTaskID && id <= MaxTaskID
}

// ParseTask checks a task object and returns it compacted, fields in their
// original order and unknown fields kept. It checks only what the protocol
// asks: an integer id, desc a string and tags an array of strings when
// present, and the size limit.
func ParseTask(raw []byte, maxBytes int) (Task, error) {
	fields, err := objectFields(raw)
	if err != nil {
		return Task{}, errInvalidTask("task must be a JSON object")
	}
	return checkTask(fields, raw, maxBytes)
}

func checkTask(fields []field, raw []byte, maxBytes int) (Task, error) {
	idRaw, ok := lookup(fields, "id")
	if !ok {
		return Task{}, errInvalidTask("task has no id")
	}
	id, ok := ParseTaskID(idRaw)
	if !ok {
		return Task{}, errInvalidTask("task id must be an integer between -%d and %d", MaxTaskID, MaxTaskID)
	}
	if desc, ok := lookup(fields, "desc"); ok && !isNull(desc) && !isString(desc) {
		return Task{}, errInvalidTask("task %d: desc must be a string", id)
	}
	if tags, ok := lookup(fields, "tags"); ok && !isNull(tags) {
		var list []json.RawMessage
		if json.Unmarshal(tags, &list) != nil {
			return Task{}, errInvalidTask("task %d: tags must be an array of strings", id)
		}
		for _, t := range list {
			if !isString(t) {
				return Task{}, errInvalidTask("task %d: tags must be an array of strings", id)
			}
		}
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		return Task{}, errInvalidTask("task must be a JSON object")
	}
	if compact.Len() > maxBytes {
		return Task{}, errInvalidTask("task %d exceeds %d bytes", id, maxBytes)
	}
	return Task{ID: id, Raw: compact.Bytes()}, nil
}

// MergeTask applies an update: the fields of patch replace the stored ones,
// fields not in patch are kept, new fields are added at the end.
func MergeTask(stored, patch []byte, maxBytes int) (Task, error) {
	base, err := objectFields(stored)
	if err != nil {
		return Task{}, err
	}
	upd, err := objectFields(patch)
	if err != nil {
		return Task{}, errInvalidTask("task must be a JSON object")
	}
	merged := make([]field, 0, len(base)+len(upd))
	for _, f := range base {
		if v, ok := lookup(upd, f.key); ok {
			f.raw = v
		}
		if _, seen := lookup(merged, f.key); !seen {
			merged = append(merged, f)
		}
	}
	for _, f := range upd {
		if _, seen := lookup(merged, f.key); !seen {
			merged = append(merged, f)
		}
	}
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range merged {
		if i > 0 {
			b.WriteByte(',')
		}
		key, _ := json.Marshal(f.key)
		b.Write(key)
		b.WriteByte(':')
		b.Write(f.raw)
	}
	b.WriteByte('}')
	return checkTask(merged, b.Bytes(), maxBytes)
}

// taskIndexIs reports whether a stored task's "index" field equals index
// (older clients name a task to delete by it, as a string).
func taskIndexIs(raw []byte, index string) bool {
	fields, err := objectFields(raw)
	if err != nil {
		return false
	}
	v, ok := lookup(fields, "index")
	if !ok {
		return false
	}
	if isString(v) {
		var s string
		return json.Unmarshal(v, &s) == nil && s == index
	}
	return string(v) == index
}

// CheckVersion validates a request's version: a number or a string, kept
// verbatim. null or absent gives nil: the stored version is kept.
func CheckVersion(raw json.RawMessage) (json.RawMessage, error) {
	raw = bytes.TrimSpace(raw)
	switch {
	case len(raw) == 0 || isNull(raw):
		return nil, nil
	case isString(raw) || isNumber(raw):
		return raw, nil
	}
	return nil, errors.New("version must be a number or a string")
}

// versionOlder reports whether a is a smaller number than b. Versions are
// compared only when both are numbers; they may pass 2^53 and carry
// fractions or exponents, so they are compared exactly.
func versionOlder(a, b json.RawMessage) bool {
	if !isNumber(a) || !isNumber(b) {
		return false
	}
	ra, ok1 := new(big.Rat).SetString(string(a))
	rb, ok2 := new(big.Rat).SetString(string(b))
	return ok1 && ok2 && ra.Cmp(rb) < 0
}
