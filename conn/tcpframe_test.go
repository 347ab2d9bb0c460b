package conn

import (
	"bytes"
	"encoding/json"
	"io"
	"slices"
	"testing"
)

// frameAll cuts values from chunks the way the read side does: a partial
// value is kept and scanning resumes when more bytes come.
func frameAll(chunks [][]byte) (values []string, broken bool) {
	var s jsonScanner
	var in []byte
	for _, chunk := range chunks {
		in = append(in, chunk...)
		used := 0
	scan:
		for {
			start, end, res := s.next(in[used:])
			switch res {
			case scanBlank:
				used = len(in)
				break scan
			case scanMore:
				break scan
			case scanBadStart, scanNotJSON:
				return values, true
			}
			values = append(values, string(in[used+start:used+end]))
			used += end
		}
		in = append([]byte(nil), in[used:]...)
	}
	return values, false
}

// split cuts p at the given offsets (taken modulo len(p)).
func split(p []byte, cuts []byte) [][]byte {
	var chunks [][]byte
	prev := 0
	for _, c := range cuts {
		if len(p) == 0 {
			break
		}
		at := int(c) % (len(p) + 1)
		if at > prev {
			chunks = append(chunks, p[prev:at])
			prev = at
		}
	}
	return append(chunks, p[prev:])
}

var framerSeeds = []string{
	`{"type":"login"}`,
	`{"type":"login","user_id":"","device_id":"","version":""}{"type":"read-all"}`,
	"  \n{\"a\":\"}\\\"{\"}\t[1,{\"b\":[]}]\r\n",
	`{"desc":"\\\\"}{"x":"\\"}"}`,
	`{"unterminated":`,
	`}{`,
	`hello`,
	`{"a":[}]}`,
	`{"emoji":"✓ \u00e9"}{}`,
}

func FuzzJSONFramer(f *testing.F) {
	for _, s := range framerSeeds {
		f.Add([]byte(s), []byte{1, 5, 9})
	}
	f.Fuzz(func(t *testing.T, stream, cuts []byte) {
		whole, wholeBroken := frameAll([][]byte{stream})
		parts, partsBroken := frameAll(split(stream, cuts))
		// Where bytes arrive must not change what is cut out.
		if wholeBroken != partsBroken || !slices.Equal(whole, parts) {
			t.Fatalf("whole: %q %v; in parts: %q %v", whole, wholeBroken, parts, partsBroken)
		}
		for _, v := range whole {
			if v[0] != '{' && v[0] != '[' {
				t.Fatalf("value %q does not start an object or array", v)
			}
		}
		// On a stream of valid objects and arrays, the cuts are exactly the
		// values encoding/json's own Decoder reads.
		if want, ok := decoderValues(stream); ok && (wholeBroken || !slices.Equal(whole, want)) {
			t.Fatalf("framer cut %q (broken %v), decoder read %q", whole, wholeBroken, want)
		}
	})
}

func decoderValues(stream []byte) ([]string, bool) {
	dec := json.NewDecoder(bytes.NewReader(stream))
	var values []string
	for {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if err == io.EOF {
			return values, true
		}
		if err != nil || (raw[0] != '{' && raw[0] != '[') {
			return nil, false
		}
		values = append(values, string(raw))
	}
}

func TestFramerCutsExactlyTheValuesSent(t *testing.T) {
	reqs := []string{`{"type":"login","user_id":""}`, `{"type":"create","task":{"id":1,"desc":"} { \" \\"}}`, `[]`, `{}`}
	var stream []byte
	for i, r := range reqs {
		stream = append(stream, r...)
		if i%2 == 1 {
			stream = append(stream, '\n', ' ')
		}
	}
	for cut := range len(stream) {
		got, broken := frameAll([][]byte{stream[:cut], stream[cut:]})
		if broken || !slices.Equal(got, reqs) {
			t.Fatalf("cut at %d: %q %v", cut, got, broken)
		}
	}
}
