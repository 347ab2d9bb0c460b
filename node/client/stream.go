package client

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/gobwas/ws"
)

// FrameReader reads a server's WebSocket frames into one buffer that each
// call reuses: the load generator reads millions of notifications, and a
// buffer per frame (ReadFrame) made its garbage collection a large part of
// what it measured.
type FrameReader struct {
	r     *bufio.Reader
	limit int64
	buf   []byte
}

// NewFrameReader reads frames of at most limit bytes from r.
func NewFrameReader(r *bufio.Reader, limit int64) *FrameReader {
	return &FrameReader{r: r, limit: limit}
}

// Next reads one frame, unmasked; its payload is valid until the next call.
func (f *FrameReader) Next() (ws.Header, []byte, error) {
	h, err := f.header()
	if err != nil {
		return h, nil, err
	}
	if h.Length < 0 || h.Length > f.limit {
		return h, nil, fmt.Errorf("websocket frame of %d bytes, over %d", h.Length, f.limit)
	}
	if int64(cap(f.buf)) < h.Length {
		f.buf = make([]byte, h.Length)
	}
	payload := f.buf[:h.Length]
	if _, err := io.ReadFull(f.r, payload); err != nil {
		return h, nil, err
	}
	if h.Masked {
		ws.Cipher(payload, h.Mask, 0)
		h.Masked = false
	}
	return h, payload, nil
}

// header parses a frame header from the buffered reader without the
// allocation ws.ReadHeader makes for each one.
func (f *FrameReader) header() (ws.Header, error) {
	p, err := f.r.Peek(2)
	if err != nil {
		return ws.Header{}, err
	}
	if p, err = f.r.Peek(HeaderSize(p)); err != nil {
		return ws.Header{}, err
	}
	h, size, _ := ParseHeader(p)
	_, err = f.r.Discard(size)
	return h, err
}

// Buffered is what the reader holds that no frame has taken yet, for a
// caller that goes on reading the connection itself.
func (f *FrameReader) Buffered() []byte {
	p, _ := f.r.Peek(f.r.Buffered())
	return p
}

// HeaderSize is the size of the WebSocket frame header p begins with,
// from its first two bytes (2 when p is shorter: call again with more).
func HeaderSize(p []byte) int {
	if len(p) < 2 {
		return 2
	}
	size := 2
	switch p[1] & 0x7F {
	case 126:
		size += 2
	case 127:
		size += 8
	}
	if p[1]&0x80 != 0 {
		size += 4
	}
	return size
}

// ParseHeader parses the frame header p begins with and returns its size;
// ok is false while p holds only part of it.
func ParseHeader(p []byte) (h ws.Header, size int, ok bool) {
	size = HeaderSize(p)
	if len(p) < size {
		return h, size, false
	}
	h = ws.Header{Fin: p[0]&0x80 != 0, Rsv: (p[0] >> 4) & 0x7, OpCode: ws.OpCode(p[0] & 0xF), Masked: p[1]&0x80 != 0}
	rest := p[2:]
	switch n := p[1] & 0x7F; n {
	case 126:
		h.Length, rest = int64(binary.BigEndian.Uint16(rest)), rest[2:]
	case 127:
		h.Length, rest = int64(binary.BigEndian.Uint64(rest)), rest[8:]
	default:
		h.Length = int64(n)
	}
	if h.Masked {
		copy(h.Mask[:], rest)
	}
	return h, size, true
}

// CutFrame cuts the server frame p begins with: its header, its payload
// (a part of p) and its whole size. n is 0 while p holds only part of it.
// A frame over limit bytes, or masked (a server's never is), is an error.
func CutFrame(p []byte, limit int64) (h ws.Header, payload []byte, n int, err error) {
	h, size, ok := ParseHeader(p)
	if !ok {
		return h, nil, 0, nil
	}
	if h.Length < 0 || h.Length > limit || h.Masked {
		return h, nil, 0, fmt.Errorf("bad frame from the server: %+v", h)
	}
	if int64(len(p)-size) < h.Length {
		return h, nil, 0, nil
	}
	n = size + int(h.Length)
	return h, p[size:n], n, nil
}

// Buffered is what the client has read from the connection and not yet
// returned, for a caller that goes on reading the connection itself (the
// load generator's poller).
func (c *Client) Buffered() []byte {
	p, _ := c.reader.Peek(c.reader.Buffered())
	return p
}
