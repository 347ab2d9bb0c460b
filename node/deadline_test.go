package node_test

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/node"
	"github.com/kronos-sync/kronos-server/node/client"
)

// closedWithin waits for the server to close c, failing after within.
func closedWithin(t *testing.T, c net.Conn, within time.Duration) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(within))
	got, err := io.ReadAll(c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("still open after %v (read %q)", within, got)
	}
	return got
}

// A connection that never sends a byte is closed after the handshake
// timeout, and one that never logs in after the login timeout (with an
// error saying so); a logged-in one stays.
func TestSilentAndAnonymousConnectionsAreClosed(t *testing.T) {
	opts := node.Options{}
	opts.Conn.HandshakeTimeout = 300 * time.Millisecond
	opts.Conn.LoginTimeout = 600 * time.Millisecond
	h := start(t, opts)
	silent, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	anonymous := h.dial(client.TCP)
	sendRaw(t, anonymous, ` `) // a byte, but never a login
	sendRaw(t, anonymous, `{"type":"read-all"}`)
	expectError(t, anonymous, "read-all", "not logged in")
	member, _ := h.login(client.WebSocket, "", "")

	closedWithin(t, silent, 10*time.Second)
	expectError(t, anonymous, "", "not logged in in time")
	expectClosed(t, anonymous)
	send(t, member, map[string]any{"type": "read-all"})
	expectType(t, member, "read-all")
}

// Past --max-conns-per-ip, a client address's connections are refused;
// other addresses are not, and a slot comes back when one closes.
func TestConnectionsPerAddressAreBounded(t *testing.T) {
	opts := node.Options{}
	opts.Conn.MaxConnsPerIP = 3
	h := start(t, opts)
	var held []*client.Client
	for range 3 {
		c, _ := h.login(client.TCP, "", "")
		held = append(held, c)
	}
	refused, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	closedWithin(t, refused, 5*time.Second)
	// From another loopback address: served.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	other, err := d.DialContext(context.Background(), "tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	other.Write([]byte(`{"type":"login"}`))
	other.SetReadDeadline(time.Now().Add(wait))
	if n, err := other.Read(make([]byte, 256)); err != nil || n == 0 {
		t.Fatalf("another address was refused too: %v", err)
	}
	held[0].Close()
	eventually(t, 10*time.Second, "a slot back after a close", func() bool {
		c, err := client.Dial(context.Background(), client.TCP, h.addr)
		if err != nil {
			return false
		}
		defer c.Close()
		_, err = c.Login("", "", time.Second)
		return err == nil
	})
}

// A device that takes none of its queued output for --write-timeout is
// dropped, even below the queue's byte bound; the writer is not.
func TestStalledReaderIsDropped(t *testing.T) {
	opts := node.Options{RateLimit: 1e6, RateBurst: 1e6}
	opts.Conn.WriteTimeout = time.Second
	opts.Conn.MaxQueueBytes = 256 << 20 // far above what the test sends
	h := start(t, opts)
	writer, login := h.login(client.TCP, "", "")
	h.login(client.TCP, login.Str("user_id"), "") // a device that never reads again
	big := make([]byte, 60<<10)
	for i := range big {
		big[i] = 'x'
	}
	for i := 0; h.node.Connections() == 2; i++ {
		if i > 2000 {
			t.Fatal("the stalled device was never dropped")
		}
		send(t, writer, map[string]any{"type": "create", "task": map[string]any{"id": i, "desc": string(big)}, "version": i})
		expectType(t, writer, "create")
	}
	send(t, writer, map[string]any{"type": "read-all"})
	if m := next(t, writer); m.Type() != "read-all" && m.Type() != "create" {
		t.Fatalf("the writer got %v", m)
	}
}

// One address may create only so many users a minute; another address
// is not held back by it.
func TestNewUsersPerAddressAreBounded(t *testing.T) {
	h := start(t, node.Options{NewUsersPerMinute: 3})
	for range 3 {
		h.login(client.TCP, "", "")
	}
	c := h.dial(client.TCP)
	send(t, c, map[string]any{"type": "login"})
	expectError(t, c, "login", "too many new users from this address")
	other, err := client.DialFrom(context.Background(), client.WebSocket, h.addr, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 3)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Login("", "", wait); err != nil {
		t.Fatalf("another address was held back: %v", err)
	}
}
