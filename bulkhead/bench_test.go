package bulkhead

import (
	"context"
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bulwark-go/bulwark/internal/parallel"
)

// benchBulkhead has metrics on and a limit no benchmark reaches, so that
// every call takes the uncontended path, as with a semaphore of equal size.
func benchBulkhead() *Bulkhead {
	return New("bench", WithLimit(1<<20), WithRegisterer(prometheus.NewRegistry()))
}

func BenchmarkAcquireRelease(b *testing.B) {
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		bh := benchBulkhead()
		b.ReportAllocs()
		for b.Loop() {
			p, err := bh.Acquire(ctx)
			if err != nil {
				b.Fatal(err)
			}
			p.Release()
		}
	})
	b.Run("parallel", func(b *testing.B) {
		bh := benchBulkhead()
		b.ReportAllocs()
		parallel.Run(b, 0, func(pw *parallel.Worker) {
			for pw.Next() {
				p, err := bh.Acquire(ctx)
				if err != nil {
					b.Fatal(err)
				}
				p.Release()
			}
		})
	})
}

func BenchmarkDo(b *testing.B) {
	ctx := context.Background()
	fn := func(context.Context) error { return nil }
	b.Run("serial", func(b *testing.B) {
		bh := benchBulkhead()
		b.ReportAllocs()
		for b.Loop() {
			if err := bh.Do(ctx, fn); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		bh := benchBulkhead()
		b.ReportAllocs()
		parallel.Run(b, 0, func(pw *parallel.Worker) {
			for pw.Next() {
				if err := bh.Do(ctx, fn); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}

// BenchmarkContended runs more goroutines than slots with a queue: the slow
// path, where callers wait and slots are handed over.
func BenchmarkContended(b *testing.B) {
	ctx := context.Background()
	bh := New("bench", WithLimit(1), WithQueue(1<<16), WithRegisterer(prometheus.NewRegistry()))
	b.ReportAllocs()
	parallel.Run(b, 4*runtime.GOMAXPROCS(0), func(pw *parallel.Worker) {
		for pw.Next() {
			p, err := bh.Acquire(ctx)
			if err != nil {
				b.Fatal(err)
			}
			p.Release()
		}
	})
}

// BenchmarkRejectFull measures turning a call away when every slot is taken
// and there is no queue.
func BenchmarkRejectFull(b *testing.B) {
	ctx := context.Background()
	bh := New("bench", WithLimit(1), WithRegisterer(prometheus.NewRegistry()))
	p, _ := bh.Acquire(ctx)
	defer p.Release()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := bh.Acquire(ctx); err == nil {
			b.Fatal("admitted")
		}
	}
}
