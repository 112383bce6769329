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
//
// TestRedisFaultRateLimiter: four clients send a request every 2ms each
// through httpmw.RateLimit over a redisrate limiter (50ms timeout) whose Redis
// connection is blackholed (a timeout toxic swallows every command) or down
// (the proxy refuses connections) for half a second, then restored, for each
// failure mode. While Redis is away every request is answered exactly as
// configured — FailOpen: 200 with RateLimit r=0;t=0; FailClosed: 503 with the
// rate-limit-unavailable problem, never 429; FallbackLocal: 200 or 429 from
// the local limiter, within its burst plus refill per key — and none takes
// more than the timeout plus scheduling slack. A direct Allow during the fault
// returns the mode's exact decision (ErrUnavailable for FailClosed). After
// the fault Redis decides again (measured: within milliseconds).
//
// TestRedisFaultIdempotency: the same load of fresh Idempotency-Keys through
// httpmw.Idempotency on a redisstore (store timeout 100ms), blackholed or
// down mid-run. Only 201 (ran) and 503 (idempotency-unavailable, did not run)
// are answered; every request made entirely during the fault is refused;
// every handler run has its record in Redis (checked directly, bypassing the
// proxy), so none ran unprotected; no request takes more than claim plus
// complete timeouts; new keys run again right after the fault. Every key is
// then sent again: completed keys replay, keys whose complete was lost in
// the fault are in flight (409) until their lease, keys whose claim reached
// Redis but whose answer did not are in flight too, refused keys run now —
// and no key ever runs twice.
//
// TestPostgresResetMidClaimAndComplete: a pgstore whose single connection
// goes through the proxy, with a fake clock (pgstore.WithClock) so leases run
// out without sleeping; a reset_peer toxic cuts the connection while a claim
// or a complete is on the wire, either before the statement reaches
// PostgreSQL (upstream) or after it ran (downstream). Claim lost: 503, no
// run, no row; the retry runs once. Claim answer lost: 503, no run, the row
// is in flight with an owner nobody holds; retries get 409 until the lease
// ends (checked one second before it) and the first retry after it runs,
// once, then replays. Complete answer lost: the client still gets its 201,
// the row is completed, retries replay even past the lease. Complete lost on
// the way: the response was never stored, so the key stays in flight (409,
// no second run) for the rest of its lease and is free after it — the
// handler then runs a second time, the documented limit of an effect kept
// outside the store. The last subtest closes that gap the pgstore way: claim,
// business write and complete in one transaction (Store.WithTx), with the
// reset before complete or before commit, in both directions; whatever the
// first attempt left, the retry either runs (rolled back) or replays
// (committed) and the ledger table holds the effect exactly once.
//
// TestServerKilledBeforeStoring, on Redis and on PostgreSQL (fake store
// clock): replica A runs the handler and freezes before storing the
// response, its store connection cut and its client gone. Replica B answers
// 409 while A's lease lasts; once the clock passes the lease, the retry runs
// on B and B's response is stored. When A comes back and writes its
// response, the store rejects it with ErrLeaseLost (fencing by owner token),
// and both replicas replay B's response.
//
// TestExactlyOnceLedger, with Redis and again with PostgreSQL as the shared
// store: eight clients make 25 logical requests each through one
// httpmw.Transport (retries with an Idempotency-Key per logical request,
// its default retryable answers, no budget) whose base sends each attempt to
// the next of two replicas — httptest servers with their own Guard and
// httpmw.Idempotency, keys scoped per client — over a fresh connection
// through a toxiproxy that resets 10% of connections before the request
// arrives, 10% after the handler ran, and cuts 5% after 64 bytes of the
// response. The server-side ledger holds every logical request exactly once,
// every client received the response of its own request, and each answer,
// first-hand or replayed, is the response of the run the ledger recorded.
//
// TestGRPCUpstreamOutageAndRecovery: scenario 1 over gRPC. A client with
// grpcmw.UnaryClientInterceptor (retry under a budget of 10 tokens, ratio
// 0.1; the same breaker as above) and grpc.WithDisableRetry calls a
// grpc.Server (interop TestService) through the proxy, which for a second
// refuses connections or, in the second subtest, cuts every connection at
// its first byte. The breaker opens at the 10th failed attempt; every call
// fails with Unavailable, and those the breaker refuses make one attempt
// (no retry wait) and return at once (measured: microseconds); no call
// reaches the server and no attempt leaves the client while the breaker is
// open; upstream attempts stay within (1+ratio)×calls + maxTokens/2 and retries within maxTokens/2;
// once the fault clears the breaker probes, closes, and calls succeed. The
// client reconnects with a 10–50ms backoff instead of grpc-go's default.
//
// TestGRPCExactlyOnceLedger, with Redis and again with PostgreSQL: six
// clients make 20 logical unary calls each through grpcmw's client retry
// with WithIdempotencyKeys (Unavailable, ResourceExhausted and the in-flight
// Aborted retried, no budget, hints waited in full). A picker interceptor
// sends each attempt to the next of two replicas, starting on alternate ones per
// call; each replica is a grpc.Server with grpcmw's WithIdempotency over a
// Guard (lease 1s) on the shared store, behind its own proxy whose
// connections are all cut after 1 KiB of responses. An interceptor outside
// grpcmw's drops the response of the first attempt of a quarter of the calls
// after the handler ran and the result was stored. The ledger holds every
// call exactly once, every client got its own call's response (the payload
// echoes the request id), and each answer names the replica the ledger
// recorded; every dropped response was answered by a replay. A cut that
// cancels a call while its claim is on the wire can leave the key in flight
// until the lease ends (Aborted to the retries; seen with PostgreSQL), and
// the retries then take it over. The cut is a toxic of this package
// (bulwark_cut) that keeps draining after it closes, because toxiproxy's
// limit_data and reset_peer stop reading and leak a goroutine when a
// server keeps writing on an HTTP/2 connection.
//
// TestLoadEveryMiddleware (skipped by go test -short; CI runs it): an
// open-loop generator offers 600 requests a second for five seconds, from
// eight clients, to a server with every middleware on — RateLimit (40/s,
// burst 20 per client), Bulkhead (8, queue 8, 20ms wait), Breaker (slow
// calls at 60ms, rate 0.5) and Idempotency on a MemoryStore, with POSTs that
// reuse recent keys and a one-second slow spell in the handler. Every
// answer is 2xx or a documented rejection (429 rate-limited, 503
// concurrency-limit or circuit-open, 409 idempotency-in-flight when a repeat
// overlaps its first), and the 429 and both kinds of 503 each occur; goroutines return to the baseline once the server is closed
// (goleak.VerifyNone against goleak.IgnoreCurrent); the live heap after a GC
// grows by less than 16 MiB and the heap in use stays under 64 MiB at every
// sample.
//
// TestSecurity: an Idempotency-Key sent by two principals (scope from the
// bearer token; memory and Redis stores) runs once for each, never replays
// the other's response, and a request without a principal gets 403;
// X-Forwarded-For changes nothing for the default KeyByIP, for a peer outside
// WithTrustedProxies and when Forwarded is the header read — only a trusted
// peer's header names the client; a key over 255 bytes (and one of 8 KiB)
// gets 400, a body over WithMaxRequestBody 413, a header block over the
// server's MaxHeaderBytes 431 from net/http, and none of them runs the handler
// or stores anything; store, limiter, key-function, scope, bulkhead and
// breaker failures — real dial errors to a closed port and injected errors
// carrying a secret, in instance names too — answer with a problem document
// whose body and headers contain neither the secret, the address nor the
// driver's words; a stored response keeps Content-Type and Location but no
// Set-Cookie, Authorization, WWW-Authenticate or token, session or API-key
// field, and naming one in WithReplayHeaders panics.
//
// # Fuzz targets
//
// FuzzLocalKeyBound (here): ratelimit.Local never remembers more than
// max(WithMaxKeys, 64) keys and every decision is well formed. With seed
// corpora in their own packages: breaker.FuzzStateMachine (the breaker
// against a reference state machine), redisrate.FuzzGCRAModel (the Lua
// script against an independent token-bucket model, needs Redis),
// idempotency.FuzzMemoryStoreBounds (MemoryStore bounds and the Store
// contract), httpmw.FuzzIdempotencyKeyHeader and httpmw.FuzzRateLimitFields.
// A plain go test runs only their seeds.
package reliability
