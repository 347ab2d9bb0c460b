package conn

import (
	"time"

	"golang.org/x/sys/unix"
)

// setSocketOptions turns Nagle off (replies are small and latency matters)
// and sets keepalive so that a peer that vanished without a FIN is noticed:
// idle time keepAlive, then three probes a third of it apart.
func setSocketOptions(fd int, keepAlive time.Duration) {
	secs := int(keepAlive / time.Second)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, max(secs/3, 1))
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 3)
}
