package client

import "golang.org/x/sys/unix"

// bindNoPort leaves the local port for connect() to choose
// (IP_BIND_ADDRESS_NO_PORT): bind() would not reuse a port in TIME_WAIT,
// and a load test of tens of thousands of reconnections runs out of them.
func bindNoPort(fd uintptr) {
	_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
}
