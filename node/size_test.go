package node

import (
	"testing"
	"unsafe"
)

// With its Conn, a session is most of an idle connection's memory; a field
// that pushes it into the next allocation class costs every connection.
func TestSessionFitsItsSizeClass(t *testing.T) {
	const sizeClass = 128 // a runtime malloc size class
	if size := unsafe.Sizeof(session{}); size > sizeClass {
		t.Fatalf("a session is %d bytes, over the %d-byte size class: reorder or move out a rarely used field", size, sizeClass)
	}
}
