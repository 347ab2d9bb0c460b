package node_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/internal/nodetest"
	"github.com/kronos-sync/kronos-server/node"
	"github.com/kronos-sync/kronos-server/node/client"
)

// wait bounds every read in these tests: a message that is due arrives in
// milliseconds; a test fails instead of hanging when one never comes.
const wait = 5 * time.Second

var transports = []client.Transport{client.TCP, client.WebSocket}

type harness struct {
	t    *testing.T
	node *nodetest.Node
	addr string
}

// start runs a node with a fresh bbolt file on a random loopback port.
func start(t *testing.T, opts node.Options) *harness {
	t.Helper()
	n := nodetest.Start(t, nodetest.Options{Node: opts})
	return &harness{t: t, node: n, addr: n.Addr}
}

func (h *harness) dial(tr client.Transport) *client.Client {
	h.t.Helper()
	c, err := client.Dial(context.Background(), tr, h.addr)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

// login dials and logs in; empty ids create a user or a device.
func (h *harness) login(tr client.Transport, user, device string) (*client.Client, client.Message) {
	h.t.Helper()
	c := h.dial(tr)
	m, err := c.Login(user, device, wait)
	if err != nil {
		h.t.Fatal(err)
	}
	return c, m
}

// loginTCP dials addr over raw TCP and logs in a new user; the client is
// closed when the test ends.
func loginTCP(t *testing.T, addr string) *client.Client {
	t.Helper()
	c, err := client.Dial(context.Background(), client.TCP, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Login("", "", wait); err != nil {
		t.Fatal(err)
	}
	return c
}

func send(t *testing.T, c *client.Client, v any) {
	t.Helper()
	if err := c.Send(v); err != nil {
		t.Fatal(err)
	}
}

func sendRaw(t *testing.T, c *client.Client, s string) {
	t.Helper()
	if err := c.SendRaw([]byte(s)); err != nil {
		t.Fatal(err)
	}
}

func next(t *testing.T, c *client.Client) client.Message {
	t.Helper()
	m, err := c.Next(wait)
	if err != nil {
		t.Fatalf("waiting for a message: %v", err)
	}
	return m
}

// nextRaw returns the next message exactly as the server sent it.
func nextRaw(t *testing.T, c *client.Client) string {
	t.Helper()
	p, err := c.NextRaw(wait)
	if err != nil {
		t.Fatalf("waiting for a message: %v", err)
	}
	return string(p)
}

func expectType(t *testing.T, c *client.Client, typ string) client.Message {
	t.Helper()
	m := next(t, c)
	if m.Type() != typ || !m.Success() {
		t.Fatalf("got %v, want a successful %q", m, typ)
	}
	return m
}

// expectError reads the next message: an error of request type typ ("" for
// none) whose text contains want.
func expectError(t *testing.T, c *client.Client, typ, want string) {
	t.Helper()
	m := next(t, c)
	if m.Success() || m["success"] != false || m.Type() != typ || !strings.Contains(m.Str("error"), want) {
		t.Fatalf("got %v, want an error of type %q containing %q", m, typ, want)
	}
	if _, hasType := m["type"]; typ == "" && hasType {
		t.Fatalf("error %v names a type the request did not have", m)
	}
}

// expectClosed waits for the server to close the connection.
func expectClosed(t *testing.T, c *client.Client) {
	t.Helper()
	for {
		_, err := c.NextRaw(wait)
		if err == nil {
			continue
		}
		var ne interface{ Timeout() bool }
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("connection still open after %v", wait)
		}
		return
	}
}
