//go:build !linux

package conn

import "errors"

// epoll is Linux's: elsewhere only the goroutine engine exists, and it is
// the default (Options.Engine).
const epollAvailable = false

func newEpollEngine(*Server) (engine, error) {
	return nil, errors.New(`conn: the epoll engine needs Linux; use engine "goroutine"`)
}
