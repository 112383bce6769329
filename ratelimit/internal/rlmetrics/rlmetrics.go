// Package rlmetrics defines the Prometheus collectors that the local and the
// Redis rate limiters share, so that both register identical collectors and
// can live on one registry.
package rlmetrics

import (
	"sync/atomic"

	"github.com/bulwark-go/bulwark/internal/metrics"
	"github.com/prometheus/client_golang/prometheus"
)

// Indices of the decision kinds in the counts a limiter reports through
// [RegisterDecisions].
const (
	Allowed = iota
	Denied
	Error
	numDecisions
)

// RegisterDecisions registers (or reuses) bulwark_ratelimit_decisions_total
// on reg and reports through it the counts of l, a limiter called name, which
// read adds to dst (indexed by Allowed, Denied and Error). The collector holds
// l weakly; see [metrics.Counters]. A nil reg reports nothing.
func RegisterDecisions[L any](reg prometheus.Registerer, name string, l *L, read func(l *L, dst []uint64)) {
	if reg == nil {
		return
	}
	c := metrics.NewCounters(metrics.Family{
		Name:  "bulwark_ratelimit_decisions_total",
		Help:  "Rate limit decisions by outcome: allowed, denied, or error (the store failed and the failure mode decided).",
		Label: "decision",
		Kinds: []string{"allowed", "denied", "error"},
	})
	metrics.AddInstance(metrics.Register(reg, c), name, l, read)
}

// Counts are the decisions of one limiter, for a limiter that counts them
// in one place. The counters sit on a cache line of their own.
type Counts struct {
	_ [64]byte
	n [numDecisions]atomic.Uint64
	_ [64]byte
}

// Inc counts one decision of kind k (Allowed, Denied or Error).
func (c *Counts) Inc(k int) { c.n[k].Add(1) }

// Load returns the count of kind k.
func (c *Counts) Load(k int) uint64 { return c.n[k].Load() }

// Read adds the counts to dst.
func (c *Counts) Read(dst []uint64) {
	for k := range c.n {
		dst[k] += c.n[k].Load()
	}
}

// NewStoreSeconds registers (or reuses) bulwark_ratelimit_store_seconds on
// reg and resolves the child for name.
func NewStoreSeconds(reg prometheus.Registerer, name string) prometheus.Observer {
	vec := metrics.Register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "bulwark_ratelimit_store_seconds",
		Help:    "Time of one rate limit decision round trip to the shared store, failures included.",
		Buckets: metrics.DurationBuckets,
	}, []string{"name"}))
	return vec.WithLabelValues(name)
}
