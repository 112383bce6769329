package idempotency

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bulwark-go/bulwark/internal/metrics"
)

// guardMetrics holds the label children of one Guard, resolved once.
type guardMetrics struct {
	new, replayed, inFlight, mismatch, missingKey, invalidKey, storeError prometheus.Counter

	renewals prometheus.Counter

	claim, complete, release, extend prometheus.Observer
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
	return guardMetrics{
		new:        requests.WithLabelValues(name, ResultNew.String()),
		replayed:   requests.WithLabelValues(name, ResultReplayed.String()),
		inFlight:   requests.WithLabelValues(name, ResultInFlight.String()),
		mismatch:   requests.WithLabelValues(name, ResultMismatch.String()),
		missingKey: requests.WithLabelValues(name, ResultMissingKey.String()),
		invalidKey: requests.WithLabelValues(name, ResultInvalidKey.String()),
		storeError: requests.WithLabelValues(name, ResultStoreError.String()),
		renewals:   renewals.WithLabelValues(name),
		claim:      store.WithLabelValues(name, "claim"),
		complete:   store.WithLabelValues(name, "complete"),
		release:    store.WithLabelValues(name, "release"),
		extend:     store.WithLabelValues(name, "extend"),
	}
}
