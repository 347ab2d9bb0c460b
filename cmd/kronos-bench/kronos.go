package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

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

// next returns every message but errors, with no deadline (the workers
// close the connections when they stop): after login the server sends
// only notifications (the create's own among them, before the load starts)
// and the answers to refused requests.
func (s kronosSession) next() ([]byte, error) {
	msg, err := s.c.Stream()
	if err == nil && bytes.HasPrefix(msg, kronosRefusal) {
		return nil, &replyError{string(msg)}
	}
	return msg, err
}

func (s kronosSession) close() error { return s.c.Close() }
