package conn

import (
	"testing"
	"unsafe"
)

// An idle connection's memory is mostly its Conn (docs/benchmarks.md,
// "Memory per connection"); a field that pushes it into the next
// allocation class costs every connection 32 bytes or more.
func TestConnFitsItsSizeClass(t *testing.T) {
	const sizeClass = 320 // a runtime malloc size class
	if size := unsafe.Sizeof(Conn{}); size > sizeClass {
		t.Fatalf("a Conn is %d bytes, over the %d-byte size class: reorder or move out a rarely used field", size, sizeClass)
	}
}
