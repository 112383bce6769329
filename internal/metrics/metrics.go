// Package metrics registers bulwark's Prometheus collectors so that many
// instances of a primitive share one set of collectors on one registry.
package metrics

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Register registers c on reg and returns the collector to use: c itself, or
// the equal collector that an earlier instance already registered. With a nil
// reg it returns c unregistered, which works but is never exported.
// Any other registration error is a programming mistake (a name registered
// with other labels, say) and panics at construction, never during a call.
func Register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(fmt.Sprintf("bulwark: registering metrics: %v", err))
	}
	return c
}

// DurationBuckets are the histogram buckets, in seconds, for the latencies and
// waits bulwark measures: 100 µs to 30 s.
var DurationBuckets = []float64{.0001, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
