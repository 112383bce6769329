// Package grpcmw adapts the bulwark primitives to gRPC: unary and stream
// interceptors for servers and clients.
//
// It is a thin adapter. Each interceptor asks the primitives for a permit and
// translates their refusals into gRPC status codes, details and trailers; the
// decisions (when to retry, when a breaker opens, what a key replays) stay in
// the primitives, and the idempotency protocol is the one the HTTP adapter
// uses, [idempotency.Guard].
//
// Server side, [UnaryServerInterceptor] and [StreamServerInterceptor] apply a
// rate limit, a bulkhead, a circuit breaker and (unary only) idempotency keys,
// in that order. Refusals are answered before any header is sent, so that the
// response is trailers-only, with RetryInfo (and for the rate limit
// QuotaFailure) details and the grpc-retry-pushback-ms trailer of gRFC A6:
//
//	srv := grpc.NewServer(
//		grpc.ChainUnaryInterceptor(grpcmw.UnaryServerInterceptor(
//			grpcmw.WithRateLimit(limiter, grpcmw.KeyFromMetadata("x-api-key")),
//			grpcmw.WithBulkhead(bh),
//			grpcmw.WithBreaker(br),
//			grpcmw.WithIdempotency(guard),
//			grpcmw.WithIdempotencyScope(callerID), // whose key it is
//		)),
//		grpc.ChainStreamInterceptor(grpcmw.StreamServerInterceptor(...)),
//	)
//
// Pass all options to one interceptor rather than chaining one interceptor
// per primitive: grpc-go's chain allocates a closure per interceptor per call.
//
// Client side, [UnaryClientInterceptor] retries under a [retry.Policy] and
// asks a limiter, a bulkhead and a breaker (per target or per method) before
// every attempt; [StreamClientInterceptor] does the same for streams, retrying
// them only while no response has been delivered (see its documentation for
// the exact rule). Call options ([WithMaxAttempts], [DisableRetry],
// [WithIdempotencyKey], [ReportAttempts]) override the settings per call.
//
// # Built-in retry
//
// grpc-go has a retry of its own, configured by a retryPolicy in the service
// config. Used together with this package's retry, the attempts multiply:
// three attempts each make up to nine. Use one: dial with
// grpc.WithDisableRetry() when you use [WithRetry], or leave retryPolicy out
// of the service config (the default). Pushback and RetryInfo are read by both.
package grpcmw
