package bench

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var bg = context.Background()

// ok is the protected call: it succeeds at once, so a benchmark measures
// the cost of the primitive around it.
func ok(context.Context) error { return nil }

// variant is one way of doing a group's work. call does one operation; i
// numbers the operations of the goroutine running it, from a start that no
// other goroutine of the benchmark uses, for variants that spread their work
// over keys.
type variant struct {
	name string
	call func(i int) error
}

// runVariants runs each variant as <variant>/serial and <variant>/parallel,
// allocations reported. parallelism, when positive, is the number of
// goroutines RunParallel should use (rounded up to a multiple of
// GOMAXPROCS); otherwise it uses GOMAXPROCS goroutines.
func runVariants(b *testing.B, vs []variant, parallelism int) {
	b.Helper()
	for _, v := range vs {
		b.Run(v.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if err := v.call(i); err != nil {
					b.Fatal(err)
				}
			}
		})
		// The goroutine counter outlives the calibration runs so that no two
		// goroutines of any run share a range of i.
		var g atomic.Int64
		b.Run(v.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			if parallelism > 0 {
				procs := runtime.GOMAXPROCS(0)
				b.SetParallelism((parallelism + procs - 1) / procs)
			}
			b.RunParallel(func(pb *testing.PB) {
				i := int(g.Add(1)) << 32
				for pb.Next() {
					if err := v.call(i); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
		})
	}
}
