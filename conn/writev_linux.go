package conn

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// writev3 writes up to three buffers with one writev. unix.Writev would
// make them escape to the heap, and with them the outItem whose header one
// of them is: one allocation per message and connection on the hottest
// path. The iovecs here live on the stack; the conversion inside the call
// keeps them alive for its duration.
func writev3(fd int, parts [3][]byte) (int, error) {
	var iov [3]unix.Iovec
	n := 0
	for _, p := range parts {
		if len(p) > 0 {
			iov[n].Base = &p[0]
			iov[n].SetLen(len(p))
			n++
		}
	}
	if n == 0 {
		return 0, nil
	}
	r, _, errno := syscall.Syscall(syscall.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(n))
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}
