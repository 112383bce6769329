package bench

import (
	"testing"
	"time"

	"github.com/bulwark-go/bulwark/retry"
	"github.com/cenkalti/backoff/v4"
	"github.com/failsafe-go/failsafe-go"
	"github.com/failsafe-go/failsafe-go/retrypolicy"
	"github.com/prometheus/client_golang/prometheus"
)

// Retry: a call that succeeds on its first attempt, the common case every
// request pays for. bulwark and failsafe-go allow 3 attempts with exponential
// backoff; backoff.Retry gets a fresh default exponential schedule per call,
// as it must (a BackOff is not safe for concurrent use), and its plain form,
// without WithMaxRetries, which would add an allocation. Reference:
// backoff-Retry.

func BenchmarkRetry(b *testing.B) {
	variants := []variant{
		{"bare", func(int) error { return ok(bg) }},
		{"bulwark-Loop", func() func(int) error {
			p := retry.New("bench", retry.WithRegisterer(prometheus.NewRegistry()))
			return func(int) error {
				l := p.Begin(bg)
				for {
					actx, cancel := l.Context()
					err := ok(actx)
					cancel()
					if !l.Next(err) {
						return l.Err()
					}
				}
			}
		}()},
		{"bulwark-Do", func() func(int) error {
			p := retry.New("bench", retry.WithRegisterer(prometheus.NewRegistry()))
			return func(int) error { return p.Do(bg, ok) }
		}()},
		{"backoff-Retry", func(int) error {
			return backoff.Retry(func() error { return ok(bg) }, backoff.NewExponentialBackOff())
		}},
		{"failsafe-Run", func() func(int) error {
			ex := failsafe.With[any](retrypolicy.NewBuilder[any]().
				WithMaxAttempts(3).
				WithBackoff(100*time.Millisecond, 10*time.Second).
				Build())
			return func(int) error { return ex.Run(func() error { return ok(bg) }) }
		}()},
	}
	runVariants(b, variants, runOpts{})
}
