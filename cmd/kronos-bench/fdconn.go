package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// After the login a plain TCP connection is read by the worker's own
// poller, but Go's network poller watched its socket too: each
// notification then woke two epoll instances, and Go's found no goroutine
// waiting, a wasted wake-up that cost the tool a fifth of its CPU and the
// server's send a second callback. detach takes the socket out of Go's
// poller: the descriptor is duplicated, and closing the net.Conn
// unregisters and closes the original, leaving the socket open through
// the copy, which the session then writes through.

// fdConn is a connection's socket without Go's poller: writes wait with
// poll(2) when the socket is full. Only Write and Close are used after the
// login; the rest is there to be a net.Conn, and refuses.
type fdConn struct {
	wmu    sync.Mutex // one message at a time: a pong between a write's parts would corrupt both
	fd     int
	local  net.Addr
	remote net.Addr
	once   sync.Once
}

var (
	errNoDeadlines   = errors.New("fdConn: deadlines are not supported after the login")
	errReadsByPoller = errors.New("fdConn: the worker's poller reads this socket")
)

// detach returns c's socket as an fdConn and closes c.
func detach(c net.Conn) (*fdConn, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("%T has no descriptor", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd, dupErr := -1, error(nil)
	if err := raw.Control(func(f uintptr) {
		fd, dupErr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if dupErr != nil {
		return nil, fmt.Errorf("dup: %w", dupErr)
	}
	fc := &fdConn{fd: fd, local: c.LocalAddr(), remote: c.RemoteAddr()}
	if err := c.Close(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return fc, nil
}

func (c *fdConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	done := 0
	for done < len(p) {
		n, err := unix.Write(c.fd, p[done:])
		if n > 0 {
			done += n
		}
		switch {
		case err == nil || errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.EAGAIN):
			if err := c.waitWritable(); err != nil {
				return done, err
			}
		default:
			return done, &net.OpError{Op: "write", Net: "tcp", Addr: c.remote, Err: os.NewSyscallError("write", err)}
		}
	}
	return done, nil
}

// Read is not for use: the worker's poller reads the socket.
func (c *fdConn) Read([]byte) (int, error) { return 0, errReadsByPoller }

// waitWritable blocks until the socket has room.
func (c *fdConn) waitWritable() error {
	fds := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLOUT}}
	for {
		_, err := unix.Poll(fds, -1)
		if err == nil || !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

func (c *fdConn) Close() error {
	err := net.ErrClosed
	c.once.Do(func() { err = unix.Close(c.fd) })
	return err
}

func (c *fdConn) LocalAddr() net.Addr  { return c.local }
func (c *fdConn) RemoteAddr() net.Addr { return c.remote }

func (c *fdConn) SetDeadline(time.Time) error      { return errNoDeadlines }
func (c *fdConn) SetReadDeadline(time.Time) error  { return errNoDeadlines }
func (c *fdConn) SetWriteDeadline(time.Time) error { return errNoDeadlines }
