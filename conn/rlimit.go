package conn

import "golang.org/x/sys/unix"

// descriptorLimit is the process's soft limit on open descriptors.
func descriptorLimit() (int, bool) {
	var l unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &l); err != nil || l.Cur > 1<<30 {
		return 0, false
	}
	return int(l.Cur), true
}
