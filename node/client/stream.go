package client

import (
	"bufio"
	"encoding/binary"
	"errors"
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
	if p, err = f.r.Peek(size); err != nil {
		return ws.Header{}, err
	}
	h := ws.Header{Fin: p[0]&0x80 != 0, Rsv: (p[0] >> 4) & 0x7, OpCode: ws.OpCode(p[0] & 0xF), Masked: p[1]&0x80 != 0}
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
	_, err = f.r.Discard(size)
	return h, err
}

// errClosed: the server closed the WebSocket.
var errClosed = errors.New("the server closed the websocket")

// Stream returns the next message with no deadline, in a buffer reused by
// the next call; it answers the server's pings. For one reading goroutine
// that reads for the connection's lifetime (the load generator): tests
// use NextRaw, whose messages stay valid.
func (c *Client) Stream() ([]byte, error) {
	if c.Transport != WebSocket {
		line, err := c.reader.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			c.msg = append(c.msg[:0], line...)
			rest, err := c.reader.ReadBytes('\n')
			if err != nil {
				return nil, err
			}
			c.msg = append(c.msg, rest...)
			line = c.msg
		} else if err != nil {
			return nil, err
		}
		return line[:len(line)-1], nil
	}
	if c.frames == nil {
		c.frames = NewFrameReader(c.reader, maxFrame)
	}
	fragmented := false
	for {
		h, payload, err := c.frames.Next()
		if err != nil {
			return nil, err
		}
		switch h.OpCode {
		case ws.OpPing:
			// One Write, as SendRaw's: the writing goroutine's frames and
			// this one do not interleave.
			pong, err := ws.CompileFrame(ws.MaskFrame(ws.NewPongFrame(payload)))
			if err == nil {
				_, err = c.Conn.Write(pong)
			}
			if err != nil {
				return nil, err
			}
		case ws.OpClose:
			return nil, fmt.Errorf("%w: %x", errClosed, payload)
		case ws.OpText, ws.OpBinary, ws.OpContinuation:
			if h.Fin && !fragmented {
				return payload, nil
			}
			if !fragmented {
				c.msg = c.msg[:0]
			}
			fragmented = true
			c.msg = append(c.msg, payload...)
			if h.Fin {
				return c.msg, nil
			}
		}
	}
}
