// Package httpmw adapts bulwark's primitives to net/http: server middleware
// for each primitive, and [Transport], a client http.RoundTripper that
// composes retry, per-host breakers, a bulkhead and client-side rate
// limiting (see [NewTransport]).
//
// httpmw is a thin adapter. It turns a request into a primitive's call and a
// primitive's answer into a status code; the policies themselves (when a
// breaker opens, how long a lease lasts, which responses are remembered) are
// the primitives' and are configured on them.
//
// # Server middleware
//
// Each middleware has the shape func(http.Handler) http.Handler and is
// composed with [Chain], outermost first:
//
//	h := httpmw.Chain(
//		httpmw.RateLimit(limiter),   // 429 per client, RateLimit header fields
//		httpmw.Bulkhead(bh),         // 503 when too many requests run
//		httpmw.Breaker(br),          // 503 while the handler keeps failing
//	)(mux)
//
// and [Idempotency] is best put on the routes it protects, inside the
// ServeMux, so that it knows the route pattern.
//
//	middleware    rejects with                   problem type
//	Breaker       503 + Retry-After              TypeCircuitOpen
//	Bulkhead      503 + Retry-After              TypeConcurrencyLimit
//	RateLimit     429 + Retry-After              TypeRateLimited
//	              503 (limiter failed)           TypeRateLimitUnavailable
//	              400 (no key)                   TypeBadRequest
//	Idempotency   400, 403, 409 + Retry-After,   TypeIdempotency..., TypeBodyTooLarge
//	              413, 422, 503
//
// Retry-After, where sent, is in whole seconds, rounded up and at least 1.
//
// Rejections are RFC 9457 problem details (application/problem+json) with a
// stable type URI under [ProblemBase], a fixed title, the status and a
// detail written by the middleware: the text of an internal error (a
// store's address, a breaker's name) never reaches the client. The
// [Problem] passed to an error writer carries that error for logging;
// [WithErrorWriter] replaces the writer.
//
// Options are shared: one [Option] list may be given to every middleware,
// and each ignores the options that are not its own.
//
// # The wrapped ResponseWriter
//
// [Breaker] and [Idempotency] hand the handler a wrapped ResponseWriter (the
// others pass it on untouched). The wrapper implements Unwrap, http.Flusher
// with FlushError, http.Hijacker and io.ReaderFrom; each delegates to the
// first writer down the Unwrap chain that has the feature and reports
// http.ErrNotSupported when none has, and deadlines and full duplex are
// reached through Unwrap, so http.NewResponseController works through every
// middleware. The Breaker's wrapper comes from a pool: with RateLimit headers
// off, the breaker, bulkhead and rate limit middleware together allocate
// nothing per request. As net/http already requires, a handler must not use
// its ResponseWriter after it returns.
package httpmw
