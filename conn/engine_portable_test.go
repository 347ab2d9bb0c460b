//go:build !linux

package conn

import (
	"strings"
	"testing"
)

func TestEpollNeedsLinux(t *testing.T) {
	_, err := Listen(Options{Listen: "127.0.0.1:0", Engine: EngineEpoll}, newRecorder())
	if err == nil || !strings.Contains(err.Error(), "needs Linux") {
		t.Fatalf("Listen with epoll: %v", err)
	}
	var o Options
	o.setDefaults()
	if o.Engine != EngineGoroutine {
		t.Fatalf("default engine %q", o.Engine)
	}
}
