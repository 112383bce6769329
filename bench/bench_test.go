package bench

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"

	"github.com/bulwark-go/bulwark/internal/parallel"
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

// runOpts adjusts runVariants.
type runOpts struct {
	// parallelism, when positive, is the number of goroutines a parallel
	// run uses (rounded up to a multiple of GOMAXPROCS); by default
	// GOMAXPROCS.
	parallelism int
	// rateUnit, when set, reports operations per second under that unit.
	rateUnit string
	// counters are reset before each run and reported per operation.
	counters []counter
}

// counter is an event count that a benchmark reports per operation, such as
// the Redis commands sent.
type counter struct {
	unit string // e.g. "cmds/op"
	n    *atomic.Int64
}

// runVariants runs each variant as <variant>/serial and <variant>/parallel,
// allocations reported.
func runVariants(b *testing.B, vs []variant, o runOpts) {
	b.Helper()
	for _, v := range vs {
		// The counters outlive the runs (-count repeats each sub-benchmark,
		// its calibration repeats its function) so that no i is
		// used twice: serial runs count from 0, each parallel goroutine from
		// a multiple of 2³².
		var serial int
		var g atomic.Int64
		b.Run(v.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			o.reset()
			for ; b.Loop(); serial++ {
				if err := v.call(serial); err != nil {
					b.Fatal(err)
				}
			}
			o.report(b)
		})
		b.Run(v.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			goroutines := runtime.GOMAXPROCS(0)
			if o.parallelism > goroutines {
				goroutines = (o.parallelism + goroutines - 1) / goroutines * goroutines
			}
			o.reset()
			parallel.Run(b, goroutines, func(w *parallel.Worker) {
				i := int(g.Add(1)) << 32
				for w.Next() {
					if err := v.call(i); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
			o.report(b)
		})
	}
}

func (o runOpts) reset() {
	for _, c := range o.counters {
		c.n.Store(0)
	}
}

func (o runOpts) report(b *testing.B) {
	if b.N == 0 {
		return
	}
	if o.rateUnit != "" {
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), o.rateUnit)
	}
	for _, c := range o.counters {
		b.ReportMetric(float64(c.n.Load())/float64(b.N), c.unit)
	}
}
