package parallel

import (
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Run runs b.N operations, no more and no fewer, whatever b.N and the number
// of goroutines.
func TestRun(t *testing.T) {
	for _, goroutines := range []int{0, 1, 3, 8} {
		for _, n := range []int{1, 2, 7, 64, 1000, 123457} {
			var count atomic.Int64
			Run(&testing.B{N: n}, goroutines, func(w *Worker) {
				for w.Next() {
					count.Add(1)
				}
			})
			if got := count.Load(); got != int64(n) {
				t.Errorf("%d goroutines, b.N = %d: ran %d operations", goroutines, n, got)
			}
		}
	}
}
