package bolt

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// userRecord is a user's entry in the users bucket.
//
// It is stored as encoding/json writes it, without HTML escaping:
//
//	{"version":V,"seq":S,"tasks":T,"devices":D}
//
// Every write reads and rewrites it, so encodeUser and decodeUser write and
// read that form directly when the version is a number or a string (the
// versions a request may carry, feed.CheckVersion), producing and accepting
// exactly the bytes encoding/json would; anything else, including records
// written in any other shape, goes through encoding/json as before. The
// format on disk is unchanged (TestUserRecordLikeJSON, FuzzUserRecord).
type userRecord struct {
	Version json.RawMessage `json:"version"`
	// Seq is the user's last change number (feed.Change.Seq).
	Seq     uint64 `json:"seq"`
	Tasks   int    `json:"tasks"`
	Devices int    `json:"devices"`
}

const (
	recVersion = `{"version":`
	recSeq     = `,"seq":`
	recTasks   = `,"tasks":`
	recDevices = `,"devices":`
)

// decodeUser decodes a stored user record. The version is a copy: v may
// be the transaction's memory.
func decodeUser(v []byte) (*userRecord, error) {
	if rec, ok := decodeUserFast(v); ok {
		return rec, nil
	}
	rec := new(userRecord)
	if err := json.Unmarshal(v, rec); err != nil {
		return nil, fmt.Errorf("bolt store: corrupt user record: %w", err)
	}
	return rec, nil
}

// decodeUserFast reads a record in encodeUser's form whose version is a
// number or a string; ok is false for anything else. The counts are read
// from the end, so the version, whatever its text, is what lies between
// the first field's name and ",\"seq\":": valid as one JSON value, it can
// be nothing else.
func decodeUserFast(v []byte) (rec *userRecord, ok bool) {
	rest, ok := bytes.CutPrefix(v, []byte(recVersion))
	if !ok {
		return nil, false
	}
	if rest, ok = bytes.CutSuffix(rest, []byte("}")); !ok {
		return nil, false
	}
	var devices, tasks, seq uint64
	if rest, devices, ok = cutUint(rest, recDevices, 18); !ok {
		return nil, false
	}
	if rest, tasks, ok = cutUint(rest, recTasks, 18); !ok {
		return nil, false
	}
	if rest, seq, ok = cutUint(rest, recSeq, 19); !ok {
		return nil, false
	}
	if !simpleVersion(rest) {
		return nil, false
	}
	return &userRecord{Version: bytes.Clone(rest), Seq: seq, Tasks: int(tasks), Devices: int(devices)}, true
}

// cutUint cuts a decimal number, as strconv writes it, of at most maxDigits
// digits (no overflow) and the field name before it from the end of b.
func cutUint(b []byte, name string, maxDigits int) (rest []byte, n uint64, ok bool) {
	i := len(b)
	for i > 0 && b[i-1] >= '0' && b[i-1] <= '9' {
		i--
	}
	digits := b[i:]
	if len(digits) == 0 || len(digits) > maxDigits || len(digits) > 1 && digits[0] == '0' {
		return nil, 0, false
	}
	for _, c := range digits {
		n = n*10 + uint64(c-'0')
	}
	rest, ok = bytes.CutSuffix(b[:i], []byte(name))
	return rest, n, ok
}

// simpleVersion reports whether v is one JSON number or string in valid
// UTF-8, with no space around it: text that encoding/json, without HTML
// escaping, writes as it is and reads back as it is.
func simpleVersion(v []byte) bool {
	if len(v) == 0 {
		return false
	}
	switch c := v[0]; {
	case c == '"' || c == '-' || c >= '0' && c <= '9':
	default:
		return false
	}
	switch v[len(v)-1] {
	case ' ', '\t', '\n', '\r':
		return false
	}
	return isInteger(v) || json.Valid(v) && utf8.Valid(v)
}

// isInteger reports whether v is an integer in JSON's grammar, the usual
// version, which spares json.Valid.
func isInteger(v []byte) bool {
	if len(v) > 0 && v[0] == '-' {
		v = v[1:]
	}
	if len(v) == 0 || len(v) > 1 && v[0] == '0' {
		return false
	}
	for _, c := range v {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// encodeUser encodes a user record as encoding/json does, without HTML
// escaping: it would rewrite <, > and & in a string version as \u003c…,
// and versions are echoed verbatim.
func encodeUser(rec *userRecord) ([]byte, error) {
	if simpleVersion(rec.Version) {
		b := make([]byte, 0, len(recVersion)+len(rec.Version)+len(recSeq)+len(recTasks)+len(recDevices)+3*20+1)
		b = append(b, recVersion...)
		b = append(b, rec.Version...)
		b = append(b, recSeq...)
		b = strconv.AppendUint(b, rec.Seq, 10)
		b = append(b, recTasks...)
		b = strconv.AppendInt(b, int64(rec.Tasks), 10)
		b = append(b, recDevices...)
		b = strconv.AppendInt(b, int64(rec.Devices), 10)
		return append(b, '}'), nil
	}
	return encodeUserJSON(rec)
}

func encodeUserJSON(rec *userRecord) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(rec); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}
