// Package gctest serves tests that check what happens once an object has
// been garbage collected, such as a metric series leaving the output when
// the instance it reads is gone.
package gctest

import (
	"runtime"
	"testing"
	"weak"
)

// Collect runs the garbage collector until the object wp points to is
// gone, and fails t if it is still there after 100 cycles: something the
// test did not mean to keep still holds it.
func Collect[T any](t testing.TB, wp weak.Pointer[T]) {
	t.Helper()
	for range 100 {
		runtime.GC()
		if wp.Value() == nil {
			return
		}
	}
	t.Fatalf("%T not collected after 100 GCs", wp)
}
