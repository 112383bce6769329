// Package ratelimit limits the rate of requests per key: the [Limiter]
// interface that the HTTP and gRPC adapters consume, the [Decision] it
// returns (everything needed for Retry-After, the IETF RateLimit and
// RateLimit-Policy header fields, and gRPC RetryInfo), and [Local], an
// in-process keyed token-bucket limiter with bounded memory.
//
// A limiter shared by several replicas lives in the redisrate subpackage and
// implements the same interface.
//
// Server side, an adapter calls Allow with the request's key and answers 429
// (or RESOURCE_EXHAUSTED) when the decision is a denial. Client side,
// [Local.Wait] delays calls instead of refusing them. As a [bulwark.Policy],
// [Local.Do] and [For] refuse with a *[LimitedError] that matches
// [ErrLimited] and carries a retry-after hint.
package ratelimit
