package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/gobwas/ws"
	"github.com/kronos-sync/kronos-server/node/client"
)

// kronosTarget speaks the Kronos protocol, over raw TCP or WebSocket as
// each device's transport says.
type kronosTarget struct {
	addr    string
	tls     bool
	timeout time.Duration
}

type kronosSession struct{ c *client.Client }

// connect logs d in. The first device of a user creates the user and its
// one task, which the writes then update; the others join the user.
func (t kronosTarget) connect(ctx context.Context, d *benchDevice, local *net.TCPAddr) (session, error) {
	c, err := t.dial(ctx, d.tr, local)
	if err != nil {
		return nil, err
	}
	m, err := c.Login(d.user.id, d.deviceID, t.timeout)
	if err != nil {
		c.Close()
		return nil, err
	}
	if d.user.id == "" {
		d.user.id = m.Str("user_id")
		if err := c.SendRaw([]byte(`{"type":"create","task":{"id":1,"desc":"bench"},"version":0}`)); err != nil {
			c.Close()
			return nil, err
		}
	}
	d.deviceID = m.Str("device_id")
	return kronosSession{c}, nil
}

func (t kronosTarget) dial(ctx context.Context, tr client.Transport, local *net.TCPAddr) (*client.Client, error) {
	if !t.tls {
		return client.DialFrom(ctx, tr, t.addr, local)
	}
	raw, err := client.DialRaw(ctx, t.addr, local)
	if err != nil {
		return nil, err
	}
	// Not verified: the bench measures what TLS costs, with any certificate.
	tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	c, err := client.Over(ctx, tr, tc, t.addr)
	if err != nil {
		raw.Close()
	}
	return c, err
}

// write updates the task; the server notifies every device of the user,
// the writer included, with the whole task:
// {"success":true,"type":"update","task":{"id":1,"desc":"bench","sent":…},"device_id":…,"version":…}
func (s kronosSession) write(sent, version int64) error {
	return s.c.SendRaw(fmt.Appendf(nil, `{"type":"update","task":{"id":1,"sent":%d},"version":%d}`, sent, version))
}

var kronosRefusal = []byte(`{"success":false`)

// maxKronosMessage bounds a message from the server: a notification is a
// task, far below the server's own 4 MiB limit on a request.
const maxKronosMessage = 4 << 20

func (s kronosSession) handoff(func([]byte, error)) (net.Conn, []byte, error) {
	return s.c.Conn, s.c.Buffered(), nil
}

// consume passes on every message but errors: after login the server
// sends only notifications (the create's own among them, before the load
// starts) and the answers to refused requests. Raw TCP messages end with a
// newline; on a WebSocket each is one text frame, which the server never
// fragments.
func (s kronosSession) consume(p []byte, got func([]byte, error)) (int, error) {
	if s.c.Transport != client.WebSocket {
		used := 0
		for {
			i := bytes.IndexByte(p[used:], '\n')
			if i < 0 {
				if len(p)-used > maxKronosMessage {
					return used, fmt.Errorf("a message over %d bytes", maxKronosMessage)
				}
				return used, nil
			}
			kronosMessage(p[used:used+i], got)
			used += i + 1
		}
	}
	used := 0
	for {
		h, payload, n, err := client.CutFrame(p[used:], maxKronosMessage)
		if n == 0 || err != nil {
			return used, err
		}
		used += n
		switch h.OpCode {
		case ws.OpText, ws.OpBinary:
			if !h.Fin {
				return used, errors.New("a fragmented message from the server")
			}
			kronosMessage(payload, got)
		case ws.OpPing:
			// One Write: the writing goroutine's frames stay whole.
			pong, err := ws.CompileFrame(ws.MaskFrame(ws.NewPongFrame(payload)))
			if err == nil {
				_, err = s.c.Conn.Write(pong)
			}
			if err != nil {
				return used, err
			}
		case ws.OpClose:
			return used, fmt.Errorf("the server closed the websocket: %w", io.EOF)
		case ws.OpPong:
		default:
			return used, fmt.Errorf("unexpected frame %v from the server", h.OpCode)
		}
	}
}

func kronosMessage(msg []byte, got func([]byte, error)) {
	if bytes.HasPrefix(msg, kronosRefusal) {
		got(nil, &replyError{string(msg)})
		return
	}
	got(msg, nil)
}

func (s kronosSession) close() error { return s.c.Close() }

func (s kronosSession) useConn(c net.Conn) { s.c.Conn = c }
