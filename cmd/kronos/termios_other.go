//go:build !linux

package main

import "golang.org/x/sys/unix"

// ioctlGetTermios reads a terminal's settings (BSD and macOS name).
const ioctlGetTermios = unix.TIOCGETA
