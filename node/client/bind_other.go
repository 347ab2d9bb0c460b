//go:build !linux

package client

// bindNoPort does nothing: the option is Linux's. Elsewhere bind() picks
// the port, and a load test that reconnects very often may run out of them.
func bindNoPort(uintptr) {}
