package feed

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"unicode/utf8"
)

// MaxTaskID is the largest task id magnitude, 2^53-1, so that JavaScript
// clients read every id exactly.
const MaxTaskID = 1<<53 - 1

// field is one member of a JSON object, as written.
type field struct {
	key    []byte // decoded, to compare keys however they are escaped
	rawKey []byte // as written, quotes included: a merge rewrites nothing
	raw    []byte // the value as written
}

var errNotObject = errors.New("not a JSON object")

// compactObject compacts a JSON object and splits it into its members, in
// order; the fields alias the compact copy, never raw. json.Compact checks
// the syntax as it goes: one pass over the input instead of two.
func compactObject(raw []byte) ([]byte, []field, error) {
	var b bytes.Buffer
	b.Grow(len(raw))
	if err := json.Compact(&b, raw); err != nil || b.Bytes()[0] != '{' {
		return nil, nil, errNotObject
	}
	return b.Bytes(), splitObject(b.Bytes()), nil
}

// objectFields splits a JSON object into its members, in order; the fields
// alias raw.
func objectFields(raw []byte) ([]field, error) {
	if !json.Valid(raw) || raw[skipSpace(raw, 0)] != '{' {
		return nil, errNotObject
	}
	return splitObject(raw), nil
}

// splitObject splits a valid JSON object: it only has to find boundaries.
func splitObject(raw []byte) []field {
	i := skipSpace(raw, skipSpace(raw, 0)+1) // after '{'
	if raw[i] == '}' {
		return []field{}
	}
	// Most tasks have a handful of fields; one byte in eight is a bound.
	fields := make([]field, 0, min(len(raw)/8, 16))
	for {
		end := stringEnd(raw, i)
		f := field{rawKey: raw[i:end]}
		f.key = decodeString(f.rawKey)
		i = skipSpace(raw, end) // at ':'
		i = skipSpace(raw, i+1) // at the value
		end = valueEnd(raw, i)
		f.raw = raw[i:end]
		fields = append(fields, f)
		i = skipSpace(raw, end) // at ',' or '}'
		if raw[i] == '}' {
			return fields
		}
		i = skipSpace(raw, i+1)
	}
}

func skipSpace(p []byte, i int) int {
	for i < len(p) && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r') {
		i++
	}
	return i
}

// stringEnd returns the index after the valid JSON string at p[i].
func stringEnd(p []byte, i int) int {
	for i++; ; i++ {
		switch p[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
}

// valueEnd returns the index after the valid JSON value at p[i].
func valueEnd(p []byte, i int) int {
	switch p[i] {
	case '"':
		return stringEnd(p, i)
	case '{', '[':
		depth := 0
		for ; ; i++ {
			switch p[i] {
			case '"':
				i = stringEnd(p, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
	}
	// A number or a literal: it ends where a delimiter or space begins.
	for i < len(p) && !isDelim(p[i]) {
		i++
	}
	return i
}

func isDelim(c byte) bool {
	switch c {
	case ',', '}', ']', ' ', '\t', '\n', '\r':
		return true
	}
	return false
}

// decodeString decodes a valid JSON string. Most have no escapes: their
// text is a slice of raw.
func decodeString(raw []byte) []byte {
	if bytes.IndexByte(raw, '\\') < 0 {
		return raw[1 : len(raw)-1]
	}
	var s string
	json.Unmarshal(raw, &s) // valid: checked by the caller
	return []byte(s)
}

// duplicateKey returns a key that occurs twice in fields.
func duplicateKey(fields []field) (string, bool) {
	if len(fields) <= 16 { // a scan beats a map for the usual task
		for i := range fields {
			for j := range i {
				if bytes.Equal(fields[i].key, fields[j].key) {
					return string(fields[i].key), true
				}
			}
		}
		return "", false
	}
	seen := make(map[string]struct{}, len(fields))
	for _, f := range fields {
		if _, dup := seen[string(f.key)]; dup {
			return string(f.key), true
		}
		seen[string(f.key)] = struct{}{}
	}
	return "", false
}

// lookup returns the last value of key: the one a JSON parser keeps, should
// a task stored before duplicate keys were refused hold one twice.
func lookup(fields []field, key string) ([]byte, bool) {
	for i := len(fields) - 1; i >= 0; i-- {
		if string(fields[i].key) == key {
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

// ParseTaskID reads a task id: an integer written as one (7, -3; not 7.0,
// 7e0, 07 or -0, so that every id has one spelling) of magnitude at most
// MaxTaskID.
func ParseTaskID(raw []byte) (int64, bool) {
	digits := raw
	neg := len(digits) > 0 && digits[0] == '-'
	if neg {
		digits = digits[1:]
	}
	// 16 digits hold MaxTaskID, and cannot overflow an int64.
	if len(digits) == 0 || len(digits) > 16 || digits[0] == '0' && (len(digits) > 1 || neg) {
		return 0, false
	}
	var id int64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
		id = id*10 + int64(c-'0')
	}
	if id > MaxTaskID {
		return 0, false
	}
	if neg {
		id = -id
	}
	return id, true
}

// ParseTask checks a task object and returns it compacted, fields in their
// original order and unknown fields kept. It checks only what the protocol
// asks: an integer id, desc a string and tags an array of strings when
// present, and the size limit; and that the task is valid UTF-8 with each
// key once, so that every client reads the same task. A refusal is an
// *Error. The result does not alias raw.
func ParseTask(raw []byte, maxBytes int) (Task, error) {
	// Raw TCP and binary WebSocket frames carry any bytes; the node checks
	// whole messages too, but nothing invalid may reach a store.
	if !utf8.Valid(raw) {
		return Task{}, errInvalidTask("task is not valid UTF-8")
	}
	compact, fields, err := compactObject(raw)
	if err != nil {
		return Task{}, errInvalidTask("task must be a JSON object")
	}
	if key, dup := duplicateKey(fields); dup {
		return Task{}, errDuplicateKey(key)
	}
	return checkTask(fields, compact, maxBytes)
}

func errDuplicateKey(key string) error {
	// A key may be long; the message need not be.
	if len(key) > 64 {
		n := 64
		for n > 0 && !utf8.RuneStart(key[n]) {
			n--
		}
		key = key[:n] + "…"
	}
	return errInvalidTask("task has duplicate key %q", key)
}

// ParsePatch checks the fields an update sends as ParseTask checks a task,
// except that the id may be absent (MergeTask checks the rest, on the
// merged task). It returns the patch's id when it has one. A refusal is an
// *Error.
func ParsePatch(raw []byte) (id int64, hasID bool, err error) {
	if !utf8.Valid(raw) {
		return 0, false, errInvalidTask("task is not valid UTF-8")
	}
	fields, err := objectFields(raw)
	if err != nil {
		return 0, false, errInvalidTask("task must be a JSON object")
	}
	if key, dup := duplicateKey(fields); dup {
		return 0, false, errDuplicateKey(key)
	}
	idRaw, ok := lookup(fields, "id")
	if !ok {
		return 0, false, nil
	}
	if id, ok = ParseTaskID(idRaw); !ok {
		return 0, false, errBadTaskID()
	}
	return id, true, nil
}

func errBadTaskID() error {
	return errInvalidTask("task id must be an integer between -%d and %d", MaxTaskID, MaxTaskID)
}

// checkTask checks the members of a compact task.
func checkTask(fields []field, compact []byte, maxBytes int) (Task, error) {
	idRaw, ok := lookup(fields, "id")
	if !ok {
		return Task{}, errInvalidTask("task has no id")
	}
	id, ok := ParseTaskID(idRaw)
	if !ok {
		return Task{}, errBadTaskID()
	}
	if desc, ok := lookup(fields, "desc"); ok && !isNull(desc) && !isString(desc) {
		return Task{}, errInvalidTask("task %d: desc must be a string", id)
	}
	if tags, ok := lookup(fields, "tags"); ok && !isNull(tags) && !isStringArray(tags) {
		return Task{}, errInvalidTask("task %d: tags must be an array of strings", id)
	}
	if len(compact) > maxBytes {
		return Task{}, errInvalidTask("task %d exceeds %d bytes", id, maxBytes)
	}
	return Task{ID: id, Raw: compact}, nil
}

// isStringArray reports whether the valid JSON value raw is an array of
// strings.
func isStringArray(raw []byte) bool {
	if raw[0] != '[' {
		return false
	}
	i := skipSpace(raw, 1)
	if raw[i] == ']' {
		return true
	}
	for {
		if raw[i] != '"' {
			return false
		}
		i = skipSpace(raw, stringEnd(raw, i))
		if raw[i] == ']' {
			return true
		}
		i = skipSpace(raw, i+1) // after ','
	}
}

// MergeTask applies an update: the fields of patch replace the stored ones
// in place, fields not in patch are kept, new fields are added at the end.
// Keys and values are kept as written. The patch is checked as ParseTask
// checks a task, and the result as a whole: a refusal is an *Error. A
// stored task that is not a JSON object is an error of the store.
func MergeTask(stored, patch []byte, maxBytes int) (Task, error) {
	base, err := objectFields(stored)
	if err != nil {
		return Task{}, fmt.Errorf("feed: stored task: %w", err)
	}
	if !utf8.Valid(patch) {
		return Task{}, errInvalidTask("task is not valid UTF-8")
	}
	upd, err := objectFields(patch)
	if err != nil {
		return Task{}, errInvalidTask("task must be a JSON object")
	}
	if key, dup := duplicateKey(upd); dup {
		return Task{}, errDuplicateKey(key)
	}
	// Index the patch once: a task may have thousands of fields.
	byKey := make(map[string]int, len(upd))
	for i, f := range upd {
		byKey[string(f.key)] = i
	}
	used := make([]bool, len(upd))
	merged := make([]field, 0, len(base)+len(upd))
	for _, f := range dedupe(base) {
		if i, ok := byKey[string(f.key)]; ok {
			f.raw, used[i] = upd[i].raw, true
		}
		merged = append(merged, f)
	}
	for i, f := range upd {
		if !used[i] {
			merged = append(merged, f)
		}
	}
	// Written compact, piece by piece: keys hold no spaces to remove.
	b := bytes.NewBuffer(make([]byte, 0, len(stored)+len(patch)))
	b.WriteByte('{')
	for i, f := range merged {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(f.rawKey)
		b.WriteByte(':')
		json.Compact(b, f.raw) // valid: split from valid objects
	}
	b.WriteByte('}')
	// The stored task may predate the UTF-8 check; what is stored now may
	// not.
	if !utf8.Valid(b.Bytes()) {
		return Task{}, errInvalidTask("task is not valid UTF-8")
	}
	return checkTask(merged, b.Bytes(), maxBytes)
}

// dedupe collapses a key that a stored task, written before duplicate keys
// were refused, holds more than once: at its first place, with its last
// value, the one JSON parsers read.
func dedupe(fields []field) []field {
	if _, dup := duplicateKey(fields); !dup {
		return fields
	}
	at := make(map[string]int, len(fields))
	out := make([]field, 0, len(fields))
	for _, f := range fields {
		if i, seen := at[string(f.key)]; seen {
			out[i].raw = f.raw
			continue
		}
		at[string(f.key)] = len(out)
		out = append(out, f)
	}
	return out
}

// taskIndexIs reports whether a stored task's "index" field equals index
// (older clients name a task to delete by it): a string with that text, or
// a number written as index is.
func taskIndexIs(raw []byte, index string) bool {
	fields, err := objectFields(raw)
	if err != nil {
		return false
	}
	v, ok := lookup(fields, "index")
	switch {
	case !ok:
		return false
	case isString(v):
		return string(decodeString(v)) == index
	case isNumber(v):
		return string(v) == index
	}
	return false // null, true, an object: no index
}

// CheckVersion validates a request's version: a number or a string, kept
// verbatim. null or absent gives nil: the stored version is kept.
func CheckVersion(raw json.RawMessage) (json.RawMessage, error) {
	raw = bytes.TrimSpace(raw)
	switch {
	case len(raw) == 0 || isNull(raw):
		return nil, nil
	case (isString(raw) || isNumber(raw)) && json.Valid(raw):
		if !utf8.Valid(raw) {
			return nil, errors.New("version is not valid UTF-8")
		}
		return raw, nil
	}
	return nil, errors.New("version must be a number or a string")
}

// versionOlder reports whether a is a smaller number than b. Versions are
// compared only when both are numbers; they may pass 2^53 and carry
// fractions or exponents, so they are compared exactly, as decimals.
func versionOlder(a, b json.RawMessage) bool {
	if !isNumber(a) || !isNumber(b) {
		return false
	}
	da, ok1 := parseDecimal(a)
	db, ok2 := parseDecimal(b)
	return ok1 && ok2 && da.cmp(db) < 0
}

// decimal is a JSON number as 0.digits × 10^point, digits without leading
// or trailing zeros (none for zero). Comparing two takes no arithmetic on
// their values: big.Rat would build 10^exponent, which for 1e999999 takes
// tens of milliseconds and for larger exponents fails.
type decimal struct {
	neg    bool
	digits []byte
	point  *big.Int // the exponent may have any number of digits
}

// parseDecimal reads a number in JSON's grammar.
func parseDecimal(raw []byte) (decimal, bool) {
	var d decimal
	i := 0
	if i < len(raw) && raw[i] == '-' {
		d.neg = true
		i++
	}
	intStart := i
	for i < len(raw) && raw[i] >= '0' && raw[i] <= '9' {
		i++
	}
	intPart := raw[intStart:i]
	if len(intPart) == 0 || len(intPart) > 1 && intPart[0] == '0' {
		return d, false
	}
	var frac []byte
	if i < len(raw) && raw[i] == '.' {
		i++
		fracStart := i
		for i < len(raw) && raw[i] >= '0' && raw[i] <= '9' {
			i++
		}
		if frac = raw[fracStart:i]; len(frac) == 0 {
			return d, false
		}
	}
	exp := new(big.Int)
	if i < len(raw) && (raw[i] == 'e' || raw[i] == 'E') {
		i++
		expStart := i
		if i < len(raw) && (raw[i] == '+' || raw[i] == '-') {
			i++
		}
		digitsStart := i
		for i < len(raw) && raw[i] >= '0' && raw[i] <= '9' {
			i++
		}
		if i == digitsStart {
			return d, false
		}
		exp.SetString(string(raw[expStart:i]), 10)
	}
	if i != len(raw) {
		return d, false
	}
	// digits = intPart frac; the point sits after intPart, moved by exp.
	all := make([]byte, 0, len(intPart)+len(frac))
	all = append(append(all, intPart...), frac...)
	lead := 0
	for lead < len(all) && all[lead] == '0' {
		lead++
	}
	d.digits = bytes.TrimRight(all[lead:], "0")
	d.point = exp.Add(exp, big.NewInt(int64(len(intPart)-lead)))
	return d, true
}

func (d decimal) sign() int {
	switch {
	case len(d.digits) == 0:
		return 0 // -0 and 0.0e5 are zero
	case d.neg:
		return -1
	}
	return 1
}

// cmp compares d and e as numbers: -1, 0 or +1.
func (d decimal) cmp(e decimal) int {
	ds, es := d.sign(), e.sign()
	if ds != es || ds == 0 {
		return cmp.Compare(ds, es)
	}
	// Same sign, both not zero: compare the magnitudes, then flip for
	// negatives.
	c := d.point.Cmp(e.point)
	if c == 0 {
		c = bytes.Compare(d.digits, e.digits)
	}
	return c * ds
}
