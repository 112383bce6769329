package bench

import (
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/bulwark-go/bulwark/ratelimit"
	"github.com/failsafe-go/failsafe-go/ratelimiter"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// Limiter: an allowed decision of an in-process limiter keyed by client, over
// a handful of keys, at a rate so high that every decision is allowed.
// Reference: rate-Allow, x/time/rate's Allow on the key's own limiter picked
// by slice index (no key lookup at all), the floor of any keyed limiter built
// on it. rate-Allow+map adds a lookup in a read-only map, rate-Allow+rwmutex-map
// the read lock a map needs once keys can arrive at run time.

const (
	limiterKeys  = 8
	limiterRate  = 1e12
	limiterBurst = 1_000_000_000
)

var errDenied = errors.New("bench: denied")

// allowedErr turns a limiter's answer into the call's error.
func allowedErr(allowed bool) error {
	if !allowed {
		return errDenied
	}
	return nil
}

func limiterKeyNames() []string {
	keys := make([]string, limiterKeys)
	for i := range keys {
		keys[i] = "client-" + strconv.Itoa(i)
	}
	return keys
}

func BenchmarkLimiter(b *testing.B) {
	keys := limiterKeyNames()
	allowed := allowedErr
	variants := []variant{
		{"bare", func(int) error { return ok(bg) }},
		{"bulwark-Local", func() func(int) error {
			l := ratelimit.NewLocal("bench", limiterRate, limiterBurst,
				ratelimit.WithRegisterer(prometheus.NewRegistry()))
			return func(i int) error {
				d, err := l.Allow(bg, keys[i%limiterKeys], 1)
				if err != nil {
					return err
				}
				return allowed(d.Allowed)
			}
		}()},
		{"rate-Allow", func() func(int) error {
			lims := make([]*rate.Limiter, limiterKeys)
			for i := range lims {
				lims[i] = rate.NewLimiter(limiterRate, limiterBurst)
			}
			return func(i int) error { return allowed(lims[i%limiterKeys].Allow()) }
		}()},
		{"rate-Allow+map", func() func(int) error {
			lims := make(map[string]*rate.Limiter, limiterKeys)
			for _, k := range keys {
				lims[k] = rate.NewLimiter(limiterRate, limiterBurst)
			}
			return func(i int) error { return allowed(lims[keys[i%limiterKeys]].Allow()) }
		}()},
		{"rate-Allow+rwmutex-map", func() func(int) error {
			var mu sync.RWMutex
			lims := make(map[string]*rate.Limiter, limiterKeys)
			for _, k := range keys {
				lims[k] = rate.NewLimiter(limiterRate, limiterBurst)
			}
			return func(i int) error {
				mu.RLock()
				l := lims[keys[i%limiterKeys]]
				mu.RUnlock()
				return allowed(l.Allow())
			}
		}()},
		{"failsafe-TryAcquire", func() func(int) error {
			lims := make([]ratelimiter.RateLimiter[any], limiterKeys)
			for i := range lims {
				lims[i] = ratelimiter.NewBursty[any](limiterBurst, time.Millisecond)
			}
			return func(i int) error { return allowed(lims[i%limiterKeys].TryAcquirePermit()) }
		}()},
	}
	runVariants(b, variants, runOpts{})
}
