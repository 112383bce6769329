package bench

import (
	"context"
	"testing"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
)

// Breaker: permit + success on a closed breaker, the adapters' hot path.

func BenchmarkBreaker(b *testing.B) {
	ctx := context.Background()
	ok := func(context.Context) error { return nil }
	variants := []struct {
		name string
		call func() error
	}{
		{"bare", func() error { return ok(ctx) }},
		{"bulwark-two-phase", func() func() error {
			br := breaker.New("bench", breaker.WithRegisterer(prometheus.NewRegistry()))
			return func() error {
				p, err := br.Allow()
				if err != nil {
					return err
				}
				err = ok(ctx)
				p.Done(err)
				return err
			}
		}()},
		{"bulwark-Do", func() func() error {
			br := breaker.New("bench", breaker.WithRegisterer(prometheus.NewRegistry()))
			return func() error { return br.Do(ctx, ok) }
		}()},
		{"gobreaker-Execute", func() func() error {
			cb := gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{Name: "bench"})
			return func() error {
				_, err := cb.Execute(func() (struct{}, error) { return struct{}{}, ok(ctx) })
				return err
			}
		}()},
		{"gobreaker-two-step", func() func() error {
			cb := gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{Name: "bench"})
			return func() error {
				done, err := cb.Allow()
				if err != nil {
					return err
				}
				err = ok(ctx)
				done(err)
				return err
			}
		}()},
	}
	for _, v := range variants {
		b.Run(v.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := v.call(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(v.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := v.call(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
