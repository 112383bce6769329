package retry

import (
	"context"
	"testing"

	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bulwark-go/bulwark/internal/parallel"
)

func benchPolicy() *Policy {
	return New("bench", WithRegisterer(prometheus.NewRegistry()))
}

func okCall(context.Context) error { return nil }

// BenchmarkDoFirstTry: a call that succeeds on its first attempt through Do,
// metrics registered, default budget.
func BenchmarkDoFirstTry(b *testing.B) {
	p := benchPolicy()
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if p.Do(ctx, okCall) != nil {
				b.Fatal("failed")
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		parallel.Run(b, 0, func(pw *parallel.Worker) {
			for pw.Next() {
				if p.Do(ctx, okCall) != nil {
					b.Fatal("failed")
				}
			}
		})
	})
}

func loopOnce(p *Policy, ctx context.Context) error {
	var l Loop
	p.BeginIn(ctx, &l, 0)
	for {
		actx, cancel := l.Context()
		err := okCall(actx)
		cancel()
		if !l.Next(err) {
			return l.Err()
		}
	}
}

// BenchmarkLoopFirstTry: the same call driven through BeginIn/Loop, as the
// HTTP and gRPC adapters do.
func BenchmarkLoopFirstTry(b *testing.B) {
	p := benchPolicy()
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if loopOnce(p, ctx) != nil {
				b.Fatal("failed")
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		parallel.Run(b, 0, func(pw *parallel.Worker) {
			for pw.Next() {
				if loopOnce(p, ctx) != nil {
					b.Fatal("failed")
				}
			}
		})
	})
}

// BenchmarkBackoffRetryFirstTry is the reference: cenkalti's backoff.Retry
// with a fresh ExponentialBackOff per call, succeeding at once.
func BenchmarkBackoffRetryFirstTry(b *testing.B) {
	op := func() error { return nil }
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if backoff.Retry(op, backoff.NewExponentialBackOff()) != nil {
				b.Fatal("failed")
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		parallel.Run(b, 0, func(pw *parallel.Worker) {
			for pw.Next() {
				if backoff.Retry(op, backoff.NewExponentialBackOff()) != nil {
					b.Fatal("failed")
				}
			}
		})
	})
}
