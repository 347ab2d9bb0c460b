package main

import (
	"context"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// The servers the tool can drive. A wire value: it is passed to the
// workers and written in the results.
const (
	serverKronos     = "kronos"
	serverCentrifugo = "centrifugo"
)

// A target is the server under test as the devices see it. connect is
// called concurrently for different devices, except that a user's first
// device is connected alone before the others (it may set the user's
// identity, which the others then read).
type target interface {
	// connect dials from local (nil: any address) and logs device d in,
	// setting d's identities the first time.
	connect(ctx context.Context, d *benchDevice, local *net.TCPAddr) (session, error)
}

// A session is one logged-in device. After the login a poller reads its
// connection (poller.go) and hands the bytes to consume, while another
// goroutine calls write.
type session interface {
	// write sends one change of the device's user whose notification
	// carries sent (Unix nanoseconds), the writer's device ID and version.
	write(sent, version int64) error
	// handoff ends the login's reading: it gives the messages it read
	// already to got and returns the connection for the poller to read,
	// with the bytes read from it that no message has taken yet.
	handoff(got func(msg []byte, err error)) (net.Conn, []byte, error)
	// consume handles the complete messages at the start of p and returns
	// how many bytes they took. Each notification goes to got, valid only
	// during the call; a *replyError is the server refusing a request (the
	// session goes on). It answers the server's pings itself. An error
	// ends the connection.
	consume(p []byte, got func(msg []byte, err error)) (int, error)
	// useConn makes c, the same socket taken out of Go's poller (see
	// detach), the connection that write, the pongs and close use.
	useConn(c net.Conn)
	close() error
}

// replyError is the server's refusal of one request, such as a write.
type replyError struct{ msg string }

func (e *replyError) Error() string { return "server refused a request: " + e.msg }

func newTarget(cfg workerConfig) (target, error) {
	switch cfg.server {
	case serverKronos:
		return kronosTarget{addr: cfg.addr, tls: cfg.tls, timeout: cfg.timeout}, nil
	case serverCentrifugo:
		return centrifugoTarget{addr: cfg.addr, secret: []byte(cfg.secret), timeout: cfg.timeout}, nil
	}
	return nil, fmt.Errorf("unknown server %q (want %s or %s)", cfg.server, serverKronos, serverCentrifugo)
}

// dialer dials from local with the port left for connect() to choose
// (IP_BIND_ADDRESS_NO_PORT): bind() would not reuse a port in TIME_WAIT,
// and back-to-back runs of tens of thousands of connections run out of
// them. node/client.DialFrom does the same for the Kronos client.
func dialer(local *net.TCPAddr) *net.Dialer {
	d := &net.Dialer{}
	if local != nil {
		d.LocalAddr = local
		d.Control = func(_, _ string, c syscall.RawConn) error {
			return c.Control(func(fd uintptr) {
				_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
			})
		}
	}
	return d
}
