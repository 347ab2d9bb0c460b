package conn

import (
	"time"

	"golang.org/x/sys/unix"
)

// setSocketOptions: as on Linux (sockopt_linux.go), where macOS names the
// idle time TCP_KEEPALIVE.
func setSocketOptions(fd int, keepAlive time.Duration) {
	secs := int(keepAlive / time.Second)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPALIVE, secs)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, max(secs/3, 1))
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 3)
}
