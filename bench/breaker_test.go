package bench

import (
	"testing"
	"time"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/failsafe-go/failsafe-go"
	"github.com/failsafe-go/failsafe-go/circuitbreaker"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
)

// Breaker: permit + success on a closed breaker, the adapters' hot path.
// Each breaker is configured alike where the library allows it: a window of
// the last 100 calls that opens at 50% failures, 30s open.
// Reference: gobreaker-Execute.

func BenchmarkBreaker(b *testing.B) {
	variants := []variant{
		{"bare", func(int) error { return ok(bg) }},
		{"bulwark-two-phase", func() func(int) error {
			br := breaker.New("bench", breaker.WithRegisterer(prometheus.NewRegistry()))
			return func(int) error {
				p, err := br.Allow()
				if err != nil {
					return err
				}
				err = ok(bg)
				p.Done(err)
				return err
			}
		}()},
		{"bulwark-Do", func() func(int) error {
			br := breaker.New("bench", breaker.WithRegisterer(prometheus.NewRegistry()))
			return func(int) error { return br.Do(bg, ok) }
		}()},
		{"gobreaker-Execute", func() func(int) error {
			cb := gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{Name: "bench"})
			return func(int) error {
				_, err := cb.Execute(func() (struct{}, error) { return struct{}{}, ok(bg) })
				return err
			}
		}()},
		{"gobreaker-two-step", func() func(int) error {
			cb := gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{Name: "bench"})
			return func(int) error {
				done, err := cb.Allow()
				if err != nil {
					return err
				}
				err = ok(bg)
				done(err)
				return err
			}
		}()},
		{"failsafe-Run", func() func(int) error {
			ex := failsafe.With[any](newFailsafeBreaker())
			return func(int) error { return ex.Run(func() error { return ok(bg) }) }
		}()},
		{"failsafe-two-step", func() func(int) error {
			cb := newFailsafeBreaker()
			return func(int) error {
				if !cb.TryAcquirePermit() {
					return circuitbreaker.ErrOpen
				}
				err := ok(bg)
				cb.RecordError(err)
				return err
			}
		}()},
	}
	runVariants(b, variants, runOpts{})
}

func newFailsafeBreaker() circuitbreaker.CircuitBreaker[any] {
	return circuitbreaker.NewBuilder[any]().
		WithFailureThresholdRatio(50, 100).
		WithDelay(30 * time.Second).
		Build()
}
