package breaker

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bulwark-go/bulwark/internal/parallel"
)

// BenchmarkAllowDone is the adapters' hot path: a permit and a success on a
// closed breaker with metrics registered.
func BenchmarkAllowDone(b *testing.B) {
	br := New("bench", WithRegisterer(prometheus.NewRegistry()))
	b.ReportAllocs()
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			p, err := br.Allow()
			if err != nil {
				b.Fatal(err)
			}
			p.Done(nil)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		parallel.Run(b, 0, func(pw *parallel.Worker) {
			for pw.Next() {
				p, err := br.Allow()
				if err != nil {
					b.Error(err)
					return
				}
				p.Done(nil)
			}
		})
	})
}

func BenchmarkDo(b *testing.B) {
	br := New("bench", WithRegisterer(prometheus.NewRegistry()))
	ctx := context.Background()
	fn := func(context.Context) error { return nil }
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := br.Do(ctx, fn); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		parallel.Run(b, 0, func(pw *parallel.Worker) {
			for pw.Next() {
				_ = br.Do(ctx, fn)
			}
		})
	})
}

// BenchmarkRejectOpen is the cost of failing fast.
func BenchmarkRejectOpen(b *testing.B) {
	br := New("bench", WithRegisterer(prometheus.NewRegistry()))
	br.ForceOpen()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := br.Allow(); err == nil {
			b.Fatal("admitted")
		}
	}
}
