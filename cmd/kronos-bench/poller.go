package main

import (
	"errors"
	"fmt"
	"net"
	"sync"

	"golang.org/x/sys/unix"
)

// The workers read their connections with epoll, as the server does,
// instead of with a goroutine per connection: waking a goroutine for each
// notification cost the tool almost as much CPU as the server it measured,
// and on a two-core machine the two share the cores. Each worker runs one
// poller per CPU; a device's descriptor, taken out of Go's own poller
// (detach, in fdconn.go), is watched by one of them from its login until
// it is closed or fails.

// A poller waits for input on the connections given to it and hands what
// it reads to each one's session.
type poller struct {
	epfd    int
	mu      sync.Mutex // held while reading, so that unwatch waits for a read in progress
	streams map[int32]*stream
}

// A stream is one watched connection.
type stream struct {
	fd   int
	sess session
	in   []byte // the start of an incomplete message
	got  func(msg []byte, err error)
	done func() // the connection failed or the server closed it
}

func newPoller() (*poller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	p := &poller{epfd: fd, streams: make(map[int32]*stream)}
	go p.loop()
	return p, nil
}

// watch starts reading st.fd; pending is what the session read already.
func (p *poller) watch(st *stream, pending []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(pending) > 0 {
		if !st.feed(pending, false) {
			return errors.New("the connection ended during the login")
		}
	}
	p.streams[int32(st.fd)] = st
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(st.fd)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, st.fd, &ev); err != nil {
		delete(p.streams, int32(st.fd))
		return fmt.Errorf("epoll add: %w", err)
	}
	return nil
}

// unwatch stops reading fd; call it before the connection is closed, so
// that a new connection given the same number is not taken for it.
func (p *poller) unwatch(fd int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.streams[int32(fd)]; ok {
		delete(p.streams, int32(fd))
		unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	}
}

func (p *poller) loop() {
	events := make([]unix.EpollEvent, 256)
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		p.mu.Lock()
		for _, ev := range events[:n] {
			if st := p.streams[ev.Fd]; st != nil {
				p.read(st, buf)
			}
		}
		p.mu.Unlock()
	}
}

// read reads what st's socket holds (level-triggered: what is left wakes
// the poller again) and hands its complete messages to the session.
func (p *poller) read(st *stream, buf []byte) {
	n, err := unix.Read(st.fd, buf)
	switch {
	case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
		return
	case err != nil || n == 0:
		p.end(st)
		return
	}
	if !st.add(buf[:n]) {
		p.end(st)
	}
}

// add takes bytes just read: with the start of a message held from before,
// or alone.
func (st *stream) add(data []byte) bool {
	held := len(st.in) > 0
	if held {
		st.in = append(st.in, data...)
		data = st.in
	}
	return st.feed(data, held)
}

// feed hands the complete messages in data to the session and keeps the
// rest in st.in (data is st.in when held); false: the session ended the
// connection.
func (st *stream) feed(data []byte, held bool) bool {
	used, err := st.sess.consume(data, st.got)
	if err != nil {
		return false
	}
	switch rest := data[used:]; {
	case len(rest) == 0:
		st.in = nil // most reads end between messages: nothing is kept
	case held:
		st.in = st.in[:copy(st.in, rest)]
	default:
		st.in = append([]byte(nil), rest...)
	}
	return true
}

// end stops watching a connection that failed or was closed by the
// server; its device counts as disconnected.
func (p *poller) end(st *stream) {
	delete(p.streams, int32(st.fd))
	unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, st.fd, nil)
	st.done()
}

// pump reads a connection the poller cannot (TLS, whose bytes on the
// socket are not the messages) with a goroutine of its own.
func pump(st *stream, conn net.Conn, pending []byte) {
	if len(pending) > 0 && !st.feed(pending, false) {
		st.done()
		return
	}
	buf := make([]byte, 16<<10)
	for {
		n, err := conn.Read(buf)
		if n > 0 && !st.add(buf[:n]) {
			break
		}
		if err != nil {
			break
		}
	}
	st.done()
}
