// Package tcppipe joins two TCP connections, for the proxies and load
// balancers that tests put between clients and nodes.
package tcppipe

import (
	"io"
	"net"
)

// Join copies both ways between a and b until both directions end, then
// closes both. It copies through a buffer on purpose: io.Copy between two
// TCP sockets would splice through a pipe pair each, and thousands of them
// exhaust a test process's 20,000 descriptors.
func Join(a, b net.Conn) {
	defer a.Close()
	defer b.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(struct{ io.Writer }{b}, struct{ io.Reader }{a})
		closeWrite(b)
		close(done)
	}()
	io.Copy(struct{ io.Writer }{a}, struct{ io.Reader }{b})
	closeWrite(a)
	<-done
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}

// Forward accepts on ln until it is closed and joins each connection to
// the address target names at that moment (a fixed one for a port
// forward, the next backend for a round-robin balancer).
func Forward(ln net.Listener, target func() string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		to := target()
		go func() {
			d, err := net.Dial("tcp", to)
			if err != nil {
				c.Close()
				return
			}
			Join(c, d)
		}()
	}
}
