package bench

import (
	"context"
	"runtime"
	"sync"
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
			runParallel(b, goroutines, func(w *worker) {
				i := int(g.Add(1)) << 32
				for w.next() {
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

// runParallel runs b.N operations over goroutines goroutines, as
// testing.B.RunParallel does, except for where each goroutine counts its
// operations. RunParallel counts them in a testing.PB, a 32-byte heap object
// written on every operation; in some runs two goroutines' PBs share a cache
// line, and an operation of a few nanoseconds then measures 1.5–3× slower
// than in the next run of the same binary. A worker has a cache line of its
// own. body runs once per goroutine and calls w.next before each operation.
func runParallel(b *testing.B, goroutines int, body func(w *worker)) {
	var taken atomic.Int64
	total := int64(b.N)
	grain := max(1, min(total/int64(goroutines*64), 10000))
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			body(&worker{taken: &taken, total: total, grain: grain})
		})
	}
	wg.Wait()
}

// worker hands out one goroutine's operations, a grain at a time.
type worker struct {
	taken  *atomic.Int64 // operations handed out to all workers
	total  int64
	grain  int64
	n, end int64 // this worker's grain: operations n to end-1 are left
	_      [128 - 5*8]byte
}

// next reports whether the goroutine has another operation to run.
func (w *worker) next() bool {
	if w.n == w.end && !w.refill() {
		return false
	}
	w.n++
	return true
}

func (w *worker) refill() bool {
	w.end = w.taken.Add(w.grain)
	w.n = w.end - w.grain
	w.end = min(w.end, w.total)
	return w.n < w.total
}

// TestRunParallel checks that runParallel runs b.N operations, no more and
// no fewer, whatever b.N and the number of goroutines.
func TestRunParallel(t *testing.T) {
	for _, goroutines := range []int{1, 3, 8} {
		for _, n := range []int{1, 2, 7, 64, 1000, 123457} {
			var count atomic.Int64
			runParallel(&testing.B{N: n}, goroutines, func(w *worker) {
				for w.next() {
					count.Add(1)
				}
			})
			if got := count.Load(); got != int64(n) {
				t.Errorf("%d goroutines, b.N = %d: ran %d operations", goroutines, n, got)
			}
		}
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
