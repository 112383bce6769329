// Package reliability holds bulwark's fault, load and bad-input tests: it has
// no API of its own, only this documentation and test files that drive the
// public packages end to end, over loopback, against the real Redis and
// PostgreSQL servers given by internal/testenv (skipped locally when the
// variables are unset, failed in CI).
//
// Faults are injected with toxiproxy (github.com/Shopify/toxiproxy/v2) run in
// the test process: a proxy on a kernel-chosen port of 127.0.0.1 sits between
// the code under test and an upstream HTTP server, Redis or PostgreSQL, and
// the tests disable it (connections refused, open ones closed) or add toxics
// (latency, timeout = blackhole, reset_peer, limit_data) while requests run.
// The shared servers themselves are never stopped.
//
// # Scenarios and what each asserts
//
// TestUpstreamOutageAndRecovery: a client httpmw.Transport with a retry
// budget (10 tokens, ratio 0.1) and a per-host breaker (count window 20,
// failure rate 0.5, open 150ms, two probes to close) sends a steady stream of
// requests while the proxy to its upstream is down for a second. The breaker
// opens exactly when the window's failure rate reaches the threshold (the
// 10th failure after 20 successes); no call leaves the client while it is
// open; each half-open period sends one probe, and a failed probe reopens it;
// total upstream calls during the outage stay within the retry.Budget bound
// (1+ratio)×requests + maxTokens/2, and the retries within maxTokens/2; once
// the proxy is back the probes succeed and the breaker closes.
//
// TestSlowUpstream: with a latency toxic of 120ms, eight calls that all
// answer 200 open a breaker configured with a 60ms slow-call threshold and a
// slow-call rate of 0.5 (the failure rate had nothing to count), and the next
// call is refused at once without reaching the upstream. With a 2s latency
// and a per-attempt timeout of 80ms, a request makes exactly its three
// attempts, each ended by its own timeout (context.DeadlineExceeded, the
// caller's deadline untouched), gives up after about 3×80ms instead of
// waiting for the response, and the three timeouts open a breaker set to
// trip on three consecutive failures.
package reliability
