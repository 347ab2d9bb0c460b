package node_test

import (
	"testing"

	"github.com/kronos-sync/kronos-server/node"
)

// A login whose id holds a NUL byte is refused before any store call, and
// the connection may log in properly after it.
func TestNULInALoginIdIsRefused(t *testing.T) {
	h := start(t, node.Options{})
	for _, tr := range transports {
		c := h.dial(tr)
		sendRaw(t, c, `{"type":"login","user_id":"a\u0000b"}`)
		expectError(t, c, "login", "user_id must be printable text")
		sendRaw(t, c, `{"type":"login","device_id":"dev\u0000"}`)
		expectError(t, c, "login", "device_id must be printable text")
		if _, err := c.Login("", "", wait); err != nil {
			t.Fatalf("%s: a proper login after the refused ones: %v", tr, err)
		}
	}
}
