// Package rlmetrics defines the Prometheus collectors that the local and the
// Redis rate limiters share, so that both register identical collectors and
// can live on one registry.
package rlmetrics

import (
	"github.com/bulwark-go/bulwark/internal/metrics"
	"github.com/prometheus/client_golang/prometheus"
)

// Decision label values.
const (
	Allowed = "allowed"
	Denied  = "denied"
	Error   = "error"
)

// Decisions holds the resolved counter children of one limiter instance.
type Decisions struct {
	Allowed, Denied, Error prometheus.Counter
}

// NewDecisions registers (or reuses) bulwark_ratelimit_decisions_total on reg
// and resolves the children for name.
func NewDecisions(reg prometheus.Registerer, name string) Decisions {
	vec := metrics.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bulwark_ratelimit_decisions_total",
		Help: "Rate limit decisions by outcome: allowed, denied, or error (the store failed and the failure mode decided).",
	}, []string{"name", "decision"}))
	return Decisions{
		Allowed: vec.WithLabelValues(name, Allowed),
		Denied:  vec.WithLabelValues(name, Denied),
		Error:   vec.WithLabelValues(name, Error),
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
