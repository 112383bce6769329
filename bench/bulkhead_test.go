package bench

import (
	"testing"

	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/failsafe-go/failsafe-go"
	fsbulkhead "github.com/failsafe-go/failsafe-go/bulkhead"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
)

// Bulkhead: acquire a slot, run the call, release the slot, with 64 slots so
// that the benchmark's goroutines always find one free (the hot path; waiting
// is another story). Reference: semaphore (x/sync Weighted, weight 1).

const bulkheadLimit = 64

func BenchmarkBulkhead(b *testing.B) {
	variants := []variant{
		{"bare", func(int) error { return ok(bg) }},
		{"bulwark-two-phase", func() func(int) error {
			bh := bulkhead.New("bench", bulkhead.WithLimit(bulkheadLimit),
				bulkhead.WithRegisterer(prometheus.NewRegistry()))
			return func(int) error {
				p, err := bh.Acquire(bg)
				if err != nil {
					return err
				}
				err = ok(bg)
				p.Release()
				return err
			}
		}()},
		{"bulwark-Do", func() func(int) error {
			bh := bulkhead.New("bench", bulkhead.WithLimit(bulkheadLimit),
				bulkhead.WithRegisterer(prometheus.NewRegistry()))
			return func(int) error { return bh.Do(bg, ok) }
		}()},
		{"semaphore", func() func(int) error {
			sem := semaphore.NewWeighted(bulkheadLimit)
			return func(int) error {
				if err := sem.Acquire(bg, 1); err != nil {
					return err
				}
				err := ok(bg)
				sem.Release(1)
				return err
			}
		}()},
		{"failsafe-two-step", func() func(int) error {
			bh := fsbulkhead.New[any](bulkheadLimit)
			return func(int) error {
				if err := bh.AcquirePermit(bg); err != nil {
					return err
				}
				err := ok(bg)
				bh.ReleasePermit()
				return err
			}
		}()},
		{"failsafe-Run", func() func(int) error {
			ex := failsafe.With[any](fsbulkhead.New[any](bulkheadLimit))
			return func(int) error { return ex.Run(func() error { return ok(bg) }) }
		}()},
	}
	runVariants(b, variants, runOpts{})
}
