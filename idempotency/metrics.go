package idempotency

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bulwark-go/bulwark/internal/metrics"
)

// guardMetrics holds the label children of one Guard, resolved once.
type guardMetrics struct {
	new, replayed, inFlight, mismatch, missingKey, invalidKey, storeError prometheus.Counter

	renewals, leaseLost prometheus.Counter

	claim, complete, release, extend opMetrics
}

// opMetrics are one store operation's latency and failures.
type opMetrics struct {
	latency prometheus.Observer
	errors  prometheus.Counter
}

func newGuardMetrics(reg prometheus.Registerer, name string) guardMetrics {
	requests := metrics.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bulwark_idempotency_requests_total",
		Help: "Requests seen by an idempotency guard, by result: new (claimed, handler runs), replayed, in_flight, mismatch, missing_key, invalid_key, store_error.",
	}, []string{"name", "result"}))
	renewals := metrics.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bulwark_idempotency_lease_renewals_total",
		Help: "Leases extended while a request was still running.",
	}, []string{"name"}))
	store := metrics.Register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "bulwark_idempotency_store_seconds",
		Help:    "Latency of idempotency store operations, successful or not, by operation.",
		Buckets: metrics.DurationBuckets,
	}, []string{"name", "op"}))
	storeErrors := metrics.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bulwark_idempotency_store_errors_total",
		Help: "Idempotency store operations that failed or timed out, by operation. A failed complete or release after the handler ran leaves the key locked until its lease ends.",
	}, []string{"name", "op"}))
	leaseLost := metrics.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bulwark_idempotency_leases_lost_total",
		Help: "Completions, releases and renewals refused because the lease had expired or passed to another request (fencing).",
	}, []string{"name"}))
	op := func(name, op string) opMetrics {
		return opMetrics{latency: store.WithLabelValues(name, op), errors: storeErrors.WithLabelValues(name, op)}
	}
	return guardMetrics{
		new:        requests.WithLabelValues(name, ResultNew.String()),
		replayed:   requests.WithLabelValues(name, ResultReplayed.String()),
		inFlight:   requests.WithLabelValues(name, ResultInFlight.String()),
		mismatch:   requests.WithLabelValues(name, ResultMismatch.String()),
		missingKey: requests.WithLabelValues(name, ResultMissingKey.String()),
		invalidKey: requests.WithLabelValues(name, ResultInvalidKey.String()),
		storeError: requests.WithLabelValues(name, ResultStoreError.String()),
		renewals:   renewals.WithLabelValues(name),
		leaseLost:  leaseLost.WithLabelValues(name),
		claim:      op(name, "claim"),
		complete:   op(name, "complete"),
		release:    op(name, "release"),
		extend:     op(name, "extend"),
	}
}
