package conn

// jsonScanner finds where one JSON object or array ends in a byte stream whose
// values may be separated by whitespace or by nothing at all (the Vim client
// writes `{"type":"login"}{"type":"read-all"}` with no delimiter). It tracks
// only nesting and strings; full validation is left to the JSON decoder that
// reads the value it cuts out.
//
// The state survives between calls, so a value that arrives over many reads is
// scanned once, not again from its start on every read.
type jsonScanner struct {
	pos     int // bytes of the current buffer already scanned
	depth   int // nesting depth inside the current value; int, as the value's size, so no nesting wraps it
	inStr   bool
	escaped bool
	started bool // the value's first byte has been seen
	start   int  // offset of that first byte
}

// scanResult says what next found.
type scanResult uint8

const (
	scanMore     scanResult = iota // the value is incomplete; call again with more bytes
	scanValue                      // a whole value lies at p[start:end]
	scanBlank                      // p holds only whitespace: nothing to keep
	scanNotJSON                    // the stream cannot be JSON; it cannot be re-synchronised
	scanBadStart                   // a value begins with a byte that is not `{` or `[`
)

// startsScalar says whether p, which is not empty, can begin a JSON value
// other than an object or an array (`nope` cannot: that is invalid JSON).
func startsScalar(p []byte) bool {
	if b := p[0]; b == '"' || b == '-' || ('0' <= b && b <= '9') {
		return true
	}
	for _, lit := range []string{"true", "false", "null"} {
		if n := min(len(p), len(lit)); string(p[:n]) == lit[:n] {
			return true
		}
	}
	return false
}

func isJSONSpace(b byte) bool { return b == ' ' || b == '\t' || b == '\r' || b == '\n' }

// next scans p, which must begin with the bytes given to the previous call
// that returned scanMore (offsets are relative to p). On scanValue the value is p[start:end] and the
// scanner is reset for the bytes after end.
func (s *jsonScanner) next(p []byte) (start, end int, res scanResult) {
	i := s.pos
	if !s.started {
		for i < len(p) && isJSONSpace(p[i]) {
			i++
		}
		if i == len(p) {
			s.reset()
			return 0, 0, scanBlank
		}
		if p[i] != '{' && p[i] != '[' {
			s.reset()
			return i, i, scanBadStart
		}
		s.started, s.start = true, i
	}
	for ; i < len(p); i++ {
		b := p[i]
		if s.inStr {
			switch {
			case s.escaped:
				s.escaped = false
			case b == '\\':
				s.escaped = true
			case b == '"':
				s.inStr = false
			}
			continue
		}
		switch b {
		case '"':
			s.inStr = true
		case '{', '[':
			s.depth++
		case '}', ']':
			s.depth--
			if s.depth == 0 {
				start = s.start
				s.reset()
				return start, i + 1, scanValue
			}
			if s.depth < 0 {
				s.reset()
				return 0, 0, scanNotJSON
			}
		}
	}
	s.pos = i
	return s.start, 0, scanMore
}

func (s *jsonScanner) reset() { *s = jsonScanner{} }
