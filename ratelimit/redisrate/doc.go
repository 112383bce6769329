// Package redisrate is a rate limiter shared by every replica of a service
// through Redis: the same [ratelimit.Limiter] interface and [ratelimit.Decision]
// as the in-process limiter, with the state in Redis so that a limit holds
// across replicas.
//
// Each decision is one round trip: a single Lua script, run with EVALSHA
// (falling back to EVAL when the server does not know it yet), implements
// GCRA — the generic cell rate algorithm, a token bucket kept as a single
// timestamp — on one key per (limiter name, request key). The script reads
// Redis's own clock (TIME), so the clocks of the replicas do not matter; a
// denied request writes nothing; each key expires when its bucket is full
// again, so idle keys cost no memory. One key per call makes it safe on Redis
// Cluster.
//
// When Redis is down or slow, each decision gives up after a short timeout
// and the configured [FailureMode] decides: [FailOpen] (the default),
// [FailClosed], or [FallbackLocal]. Every decision tries Redis first, so Redis
// decides again from the first request after it is back. A fallback limiter
// is usually smaller than the shared limit; a request that costs more than
// its burst, but not more than the shared limit's, is denied while Redis is
// away (with the RetryAfter Redis would give on a drained bucket), never
// refused with [ratelimit.ErrCostExceedsLimit], which would tell the caller
// that no retry can help.
package redisrate
