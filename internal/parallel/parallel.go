// Package parallel runs a benchmark's operations over several goroutines, as
// testing.B.RunParallel does, except for where each goroutine counts its
// operations.
//
// RunParallel counts them in a testing.PB, a 32-byte heap object written on
// every operation. In some runs two goroutines' PBs share a cache line, and
// an operation of a few nanoseconds then measures 1.5–3× slower than in the
// next run of the same binary: perf puts most of such a run's harness time on
// PB's counter. A [Worker] has a cache line of its own.
package parallel

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// Run runs b.N operations over goroutines goroutines; zero or less means
// GOMAXPROCS, as for RunParallel. body runs once per goroutine and calls
// [Worker.Next] before each operation. Errors are reported with b.Error, not
// b.Fatal, from body's goroutine.
func Run(b *testing.B, goroutines int, body func(w *Worker)) {
	if goroutines <= 0 {
		goroutines = runtime.GOMAXPROCS(0)
	}
	var taken atomic.Int64
	total := int64(b.N)
	grain := max(1, min(total/int64(goroutines*64), 10000))
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			body(&Worker{taken: &taken, total: total, grain: grain})
		})
	}
	wg.Wait()
}

// Worker hands out one goroutine's operations, a grain at a time.
type Worker struct {
	taken  *atomic.Int64 // operations handed out to all workers
	total  int64
	grain  int64
	n, end int64 // this worker's grain: operations n to end-1 are left
	_      [128 - 5*8]byte
}

// Next reports whether the goroutine has another operation to run.
func (w *Worker) Next() bool {
	if w.n == w.end && !w.refill() {
		return false
	}
	w.n++
	return true
}

func (w *Worker) refill() bool {
	w.end = w.taken.Add(w.grain)
	w.n = w.end - w.grain
	w.end = min(w.end, w.total)
	return w.n < w.total
}
