//go:build !linux

package conn

import "golang.org/x/sys/unix"

// writev3 writes up to three buffers with one writev (see writev_linux.go).
func writev3(fd int, parts [3][]byte) (int, error) {
	return unix.Writev(fd, parts[:])
}
