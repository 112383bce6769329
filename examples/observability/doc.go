// Package observability holds what it takes to watch bulwark in production,
// as files to copy, and the test that keeps them true:
//
//   - dashboard.json, a Grafana dashboard over every bulwark metric —
//     breaker state timeline and transitions, failure and slow-call ratios,
//     retry results, attempts per call, budget tokens and waits, bulkhead
//     occupancy, rejections and queue wait, rate-limit decisions and store
//     latency, idempotency results, store latency and lease renewals —
//     templated on the `name` label ($name) and on its data source;
//   - alerts.yml, Prometheus alerting rules: a breaker that stays open,
//     a retry budget exhausted, idempotency store errors and slowness,
//     rate-limit store errors, a bulkhead that keeps rejecting;
//   - prometheus.yml, which scrapes the demo
//     (go run ./examples/demo -hold -metrics-addr 127.0.0.1:9464)
//     and loads alerts.yml;
//   - metrics.md, the table of every metric with its type, labels and label
//     values, generated from the registry (go test ./examples/observability -update).
//
// The test builds every primitive on one registry, gathers what it exposes,
// and fails when the dashboard or a rule uses a metric that does not exist,
// when the dashboard leaves a metric out, or when metrics.md is stale.
package observability
