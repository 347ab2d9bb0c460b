package conn

import (
	"bytes"
	"encoding/binary"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// maxWSHeader is the largest server frame header: 2 bytes plus a 64-bit length.
const maxWSHeader = 10

// wsReader is the read-side state of a WebSocket: a fragmented message being
// reassembled, or an oversized one being skipped.
//
// Most connections never fragment a message nor send one too big, so a
// Conn holds a *wsReader only while one of those is in progress (nil
// otherwise): idle connections do not pay for it.
type wsReader struct {
	msg        []byte    // payload of a fragmented message so far
	msgValid   int       // bytes of a text msg checked to be whole UTF-8 characters
	discard    int64     // payload bytes of the current frame still to skip
	since      int64     // when the open message's first frame arrived (Unix ns), for the read timeout
	msgOp      ws.OpCode // its opcode; 0 when no message is open
	discardMsg bool      // skip continuation frames until the one with FIN
}

// open reports whether a message is partly received: fragments reassembled
// or a payload being skipped. Its whole must arrive within the read timeout
// however the client spaces the frames.
func (r *wsReader) open() bool { return r.msgOp != 0 || r.discardMsg || r.discard > 0 }

// wsOpenSince is when the message in progress began, or 0 when none is.
func (c *Conn) wsOpenSince() int64 {
	if r := c.ws; r != nil && r.open() {
		return r.since
	}
	return 0
}

// startMessage marks a message as begun now, unless one already is.
func (r *wsReader) startMessage() {
	if !r.open() {
		r.since = nowNano()
	}
}

// wsReaderOf returns c's reader state, making it when c has none.
func (c *Conn) wsReaderOf() *wsReader {
	if c.ws == nil {
		c.ws = &wsReader{}
	}
	return c.ws
}

// releaseWSReader drops c's reader state once nothing is in progress.
func (c *Conn) releaseWSReader() {
	if r := c.ws; r != nil && r.msg == nil && r.msgOp == 0 && r.discard == 0 && !r.discardMsg {
		c.ws = nil
	}
}

// wsMsgLen is the length of the fragmented message held.
func (c *Conn) wsMsgLen() int {
	if c.ws == nil {
		return 0
	}
	return len(c.ws.msg)
}

// wsMsgCap is the capacity of the fragmented message held, for budgets.
func (c *Conn) wsMsgCap() int {
	if c.ws == nil {
		return 0
	}
	return cap(c.ws.msg)
}

// putWSTextHeader writes the header of an unmasked final text frame carrying
// n bytes and returns its length.
func putWSTextHeader(dst []byte, n int) int {
	dst[0] = 0x80 | byte(ws.OpText)
	switch {
	case n < 126:
		dst[1] = byte(n)
		return 2
	case n <= 0xFFFF:
		dst[1] = 126
		binary.BigEndian.PutUint16(dst[2:], uint16(n))
		return 4
	default:
		dst[1] = 127
		binary.BigEndian.PutUint64(dst[2:], uint64(n))
		return 10
	}
}

// wsControlFrame is an unmasked control frame carrying a copy of payload,
// allocated at its exact size: a flood of pings must not cost a buffer of
// the allocator's minimum per pong.
func wsControlFrame(op ws.OpCode, payload []byte) []byte {
	if len(payload) > ws.MaxControlFramePayloadSize {
		payload = payload[:ws.MaxControlFramePayloadSize] // only our own close reasons; all are shorter
	}
	b := make([]byte, 2+len(payload))
	b[0] = 0x80 | byte(op) // FIN
	b[1] = byte(len(payload))
	copy(b[2:], payload)
	return b
}

// wsPing is the server's keepalive ping, the same bytes for every
// connection (outItems never modify their data).
var wsPing = wsControlFrame(ws.OpPing, nil)

func wsCloseFrame(code ws.StatusCode, reason string) []byte {
	return wsControlFrame(ws.OpClose, ws.NewCloseFrameBody(code, reason))
}

// wsHeaderSize returns how many bytes the frame header at the start of p
// takes, or 0 if p is too short to tell.
func wsHeaderSize(p []byte) int {
	if len(p) < 2 {
		return 0
	}
	n := 2
	switch p[1] & 0x7F {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if p[1]&0x80 != 0 {
		n += 4
	}
	return n
}

// consumeWS handles the complete frames at the start of p and returns how
// many bytes it used. A frame is handled only when all of it has arrived, so
// the unmasking happens exactly once.
func (c *Conn) consumeWS(p []byte) int {
	used := c.consumeWSFrames(p)
	c.releaseWSReader()
	return used
}

func (c *Conn) consumeWSFrames(p []byte) int {
	used := 0
	for !c.discardIn {
		rest := p[used:]
		if r := c.ws; r != nil && r.discard > 0 {
			n := min(int64(len(rest)), r.discard)
			r.discard -= n
			used += int(n)
			if r.discard > 0 {
				return used
			}
			continue
		}
		hsize := wsHeaderSize(rest)
		if hsize == 0 || len(rest) < hsize {
			return used
		}
		h, err := ws.ReadHeader(bytes.NewReader(rest[:hsize]))
		if err != nil {
			c.wsFail(ws.StatusProtocolError, "bad frame header")
			return len(p)
		}
		if !c.wsHeaderValid(h) {
			return len(p)
		}
		if !h.OpCode.IsControl() {
			// h.Length is the client's, up to 2^63-1: compare without adding
			// to it. len(r.msg) never exceeds the limit, so the subtraction
			// cannot overflow either.
			r := c.ws
			if limit := int64(c.srv.opts.MaxMessageBytes); r != nil && r.discardMsg || h.Length > limit-int64(c.wsMsgLen()) {
				// Skip the payload as it streams in instead of buffering it:
				// the connection stays usable and memory stays bounded.
				if r == nil || !r.discardMsg {
					c.srv.handler.OnFramingError(c, &TooBigError{Limit: c.srv.opts.MaxMessageBytes})
				}
				r = c.wsReaderOf()
				r.startMessage()
				r.discardMsg = !h.Fin
				r.msg, r.msgOp = nil, 0
				used += hsize
				r.discard = h.Length
				continue
			}
		}
		if int64(len(rest)-hsize) < h.Length {
			return used // wait for the whole payload
		}
		payload := rest[hsize : hsize+int(h.Length)]
		used += hsize + int(h.Length)
		ws.Cipher(payload, h.Mask, 0)
		c.wsFrame(h, payload)
	}
	return len(p)
}

// startsMessage: gobwas's IsData also counts continuation frames.
func startsMessage(op ws.OpCode) bool { return op == ws.OpText || op == ws.OpBinary }

// wsHeaderValid applies RFC 6455's rules for frames from a client.
func (c *Conn) wsHeaderValid(h ws.Header) bool {
	var msgOp ws.OpCode
	var discardMsg bool
	if r := c.ws; r != nil {
		msgOp, discardMsg = r.msgOp, r.discardMsg
	}
	switch {
	case h.Length < 0: // the most significant bit of a 64-bit length is set
		c.wsFail(ws.StatusProtocolError, "invalid payload length")
	case !h.Masked:
		c.wsFail(ws.StatusProtocolError, "client frames must be masked")
	case h.Rsv != 0:
		c.wsFail(ws.StatusProtocolError, "reserved bits set")
	case h.OpCode.IsReserved():
		c.wsFail(ws.StatusProtocolError, "reserved opcode")
	case h.OpCode.IsControl() && (!h.Fin || h.Length > ws.MaxControlFramePayloadSize):
		c.wsFail(ws.StatusProtocolError, "bad control frame")
	case h.OpCode == ws.OpContinuation && msgOp == 0 && !discardMsg:
		c.wsFail(ws.StatusProtocolError, "continuation without a message")
	case startsMessage(h.OpCode) && (msgOp != 0 || discardMsg):
		c.wsFail(ws.StatusProtocolError, "new message inside a fragmented one")
	default:
		return true
	}
	return false
}

func (c *Conn) wsFrame(h ws.Header, payload []byte) {
	switch h.OpCode {
	case ws.OpPing:
		c.sendPong(payload)
		return
	case ws.OpPong:
		return
	case ws.OpClose:
		c.wsClose(payload)
		return
	case ws.OpText, ws.OpBinary:
		if h.Fin {
			if h.OpCode == ws.OpText && !utf8.Valid(payload) {
				c.wsFail(ws.StatusInvalidFramePayloadData, "invalid UTF-8")
				return
			}
			c.wsMessage(payload)
			return
		}
		r := c.wsReaderOf()
		r.startMessage()
		r.msgOp, r.msgValid = h.OpCode, 0
		r.msg = c.appendIn(r.msg[:0], payload)
	case ws.OpContinuation:
		r := c.wsReaderOf()
		r.msg = c.appendIn(r.msg, payload)
	default:
		return
	}
	if c.discardIn { // cut for the input budget
		return
	}
	r := c.ws
	// A fragment of text is checked as it arrives: invalid UTF-8 fails the
	// connection at once (RFC 6455 8.1), not after the last fragment.
	if r.msgOp == ws.OpText {
		n, ok := utf8Prefix(r.msg[r.msgValid:])
		r.msgValid += n
		if !ok || (h.Fin && r.msgValid != len(r.msg)) {
			c.wsFail(ws.StatusInvalidFramePayloadData, "invalid UTF-8")
			return
		}
	}
	if h.Fin {
		msg := r.msg
		r.msg, r.msgOp, r.msgValid = nil, 0, 0
		c.wsMessage(msg)
	}
}

// utf8Prefix checks p, which may end inside a character: ok reports
// whether p is valid UTF-8 up to that character, whose first byte is at n
// (n is len(p) when p ends between characters).
func utf8Prefix(p []byte) (n int, ok bool) {
	n = len(p)
	for i := len(p) - 1; i >= 0 && i >= len(p)-utf8.UTFMax+1; i-- {
		if utf8.RuneStart(p[i]) {
			if !utf8.FullRune(p[i:]) { // a valid beginning, cut short
				n = i
			}
			break
		}
	}
	return n, utf8.Valid(p[:n])
}

func (c *Conn) wsMessage(p []byte) {
	if c.Closing() {
		return
	}
	c.messageDone()
	c.srv.handler.OnMessage(c, p)
}

// wsClose answers the peer's close frame: its code echoed, or a protocol
// error for a frame RFC 6455 does not allow.
func (c *Conn) wsClose(payload []byte) {
	code, ok := parseClose(payload)
	if !ok {
		c.wsFail(ws.StatusProtocolError, "invalid close frame")
		return
	}
	var echo []byte
	if c.markClosing(ReasonClientClosed) {
		echo = wsCloseFrame(code, "")
	}
	c.discardIn = true // nothing may follow a close frame
	c.closeAfterSend(echo)
}

// parseClose returns the code of a client's close frame, to echo. RFC 6455
// 7.1.5: no body means no code (answered with 1000); a body is a valid code
// (7.4) followed by a UTF-8 reason.
func parseClose(payload []byte) (ws.StatusCode, bool) {
	if len(payload) == 0 {
		return ws.StatusNormalClosure, true
	}
	if len(payload) < 2 {
		return 0, false
	}
	code, reason := ws.ParseCloseFrameDataUnsafe(payload)
	return code, validCloseCode(code) && utf8.ValidString(reason)
}

// validCloseCode: the codes a peer may send (RFC 6455 7.4.1 and IANA's
// registry, where 1012-1014 were added); 1004 is reserved and 1005, 1006 and
// 1015 must never be sent; 3000-4999 belong to libraries and applications.
func validCloseCode(code ws.StatusCode) bool {
	switch {
	case code >= 1000 && code <= 1014:
		return code != 1004 && code != 1005 && code != 1006
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// wsFail closes the connection with a WebSocket close code after a protocol
// violation; nothing more is read from it.
func (c *Conn) wsFail(code ws.StatusCode, reason string) {
	var frame []byte
	if c.markClosing(ReasonProtocolError) {
		frame = wsCloseFrame(code, reason)
	}
	c.discardIn = true
	c.closeAfterSend(frame)
}
