// Package client is a minimal Kronos protocol client over raw TCP or
// WebSocket, for tests and the load generator. It is not used by the server.
package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// Transport selects how a Client talks to the server.
type Transport string

const (
	TCP       Transport = "tcp"
	WebSocket Transport = "websocket"
)

// Client is one connection. Its methods are not safe for concurrent use,
// except that one goroutine may read (Next) while another writes.
type Client struct {
	Transport Transport
	Conn      net.Conn
	reader    *bufio.Reader
}

// Dial connects to addr over the given transport.
func Dial(ctx context.Context, t Transport, addr string) (*Client, error) {
	return DialFrom(ctx, t, addr, nil)
}

// DialFrom is Dial from a chosen local address (nil: any). On Linux the
// port is left for connect() to choose (see bindNoPort).
func DialFrom(ctx context.Context, t Transport, addr string, local *net.TCPAddr) (*Client, error) {
	if t != TCP && t != WebSocket {
		return nil, fmt.Errorf("unknown transport %q", t)
	}
	c, err := DialRaw(ctx, addr, local)
	if err != nil {
		return nil, err
	}
	cl, err := Over(ctx, t, c, addr)
	if err != nil {
		c.Close()
	}
	return cl, err
}

// DialRaw opens a TCP connection from a chosen local address (nil: any), to
// speak the protocol over later (Over) after TLS or a PROXY header. On Linux
// the port is left for connect() to choose (see bindNoPort).
func DialRaw(ctx context.Context, addr string, local *net.TCPAddr) (net.Conn, error) {
	d := net.Dialer{LocalAddr: local}
	if local != nil {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			return c.Control(bindNoPort)
		}
	}
	return d.DialContext(ctx, "tcp", addr)
}

// Over speaks the protocol over a connection made already: TLS, say, or one
// that sent a PROXY protocol header first. addr names the server in the
// WebSocket handshake.
func Over(ctx context.Context, t Transport, c net.Conn, addr string) (*Client, error) {
	switch t {
	case TCP:
		return &Client{Transport: t, Conn: c, reader: bufio.NewReader(c)}, nil
	case WebSocket:
		wd := ws.Dialer{NetDial: func(context.Context, string, string) (net.Conn, error) { return c, nil }}
		_, br, _, err := wd.Dial(ctx, "ws://"+addr+"/")
		if err != nil {
			return nil, err
		}
		cl := &Client{Transport: t, Conn: c}
		if br != nil {
			cl.reader = br
		} else {
			cl.reader = bufio.NewReader(c)
		}
		return cl, nil
	}
	return nil, fmt.Errorf("unknown transport %q", t)
}

// Close closes the connection.
func (c *Client) Close() error { return c.Conn.Close() }

// SendRaw writes one message as is: bytes on the raw stream, one text
// message on a WebSocket.
func (c *Client) SendRaw(p []byte) error {
	if c.Transport == WebSocket {
		// One Write for the whole frame (wsutil writes the header and the
		// payload apart): the server is woken once, as a browser's frame
		// would wake it, and a pong written by the reading goroutine
		// cannot fall between the two.
		frame, err := ws.CompileFrame(ws.MaskFrame(ws.NewTextFrame(p)))
		if err != nil {
			return err
		}
		p = frame
	}
	_, err := c.Conn.Write(p)
	return err
}

// Send encodes v as JSON and sends it as one message.
func (c *Client) Send(v any) error {
	p, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return c.SendRaw(p)
}

// NextRaw reads the next message from the server, waiting at most timeout.
func (c *Client) NextRaw(timeout time.Duration) ([]byte, error) {
	if err := c.Conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	if c.Transport == WebSocket {
		for {
			msg, op, err := wsutil.ReadServerData(struct {
				io.Reader
				io.Writer
			}{c.reader, c.Conn})
			if err != nil {
				return nil, err
			}
			if op == ws.OpText || op == ws.OpBinary {
				return msg, nil
			}
		}
	}
	line, err := c.reader.ReadBytes('\n')
	if err != nil {
		return nil, err
	}
	return line[:len(line)-1], nil
}

// maxFrame bounds a frame ReadFrame accepts: the server's own limit on a
// message is 4 MiB by default, and a test never needs more.
const maxFrame = 64 << 20

// ReadFrame reads one raw WebSocket frame, control frames included, for
// tests of the framing itself.
func (c *Client) ReadFrame(timeout time.Duration) (ws.Frame, error) {
	if err := c.Conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return ws.Frame{}, err
	}
	return ReadFrame(c.reader, maxFrame)
}

// ReadFrame reads one WebSocket frame whose payload is at most limit
// bytes (the length a peer declares is checked before anything is read),
// and unmasks it.
func ReadFrame(r io.Reader, limit int64) (ws.Frame, error) {
	h, err := ws.ReadHeader(r)
	if err != nil {
		return ws.Frame{}, err
	}
	if h.Length < 0 || h.Length > limit {
		return ws.Frame{}, fmt.Errorf("websocket frame of %d bytes, over %d", h.Length, limit)
	}
	payload := make([]byte, h.Length)
	if _, err := io.ReadFull(r, payload); err != nil {
		return ws.Frame{}, err
	}
	if h.Masked {
		ws.Cipher(payload, h.Mask, 0)
		h.Masked = false
	}
	return ws.Frame{Header: h, Payload: payload}, nil
}

// Message is a decoded server message.
type Message map[string]any

// Type is the message's "type" field.
func (m Message) Type() string { s, _ := m["type"].(string); return s }

// Success is the message's "success" field.
func (m Message) Success() bool { b, _ := m["success"].(bool); return b }

// Str returns a string field.
func (m Message) Str(key string) string { s, _ := m[key].(string); return s }

// Next reads and decodes the next message.
func (c *Client) Next(timeout time.Duration) (Message, error) {
	p, err := c.NextRaw(timeout)
	if err != nil {
		return nil, err
	}
	var m Message
	if err := json.Unmarshal(p, &m); err != nil {
		return nil, fmt.Errorf("server sent invalid JSON %q: %w", p, err)
	}
	return m, nil
}

// Login logs in and returns the server's answer; an error answer is an error.
func (c *Client) Login(userID, deviceID string, timeout time.Duration) (Message, error) {
	if err := c.Send(map[string]any{"type": "login", "user_id": userID, "device_id": deviceID, "version": ""}); err != nil {
		return nil, err
	}
	m, err := c.Next(timeout)
	if err != nil {
		return nil, err
	}
	if !m.Success() || m.Type() != "login" {
		return m, errors.New("login refused: " + m.Str("error"))
	}
	return m, nil
}
