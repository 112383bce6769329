// Package breaker implements a circuit breaker: it stops calling a dependency
// that keeps failing, so that the caller fails fast and the dependency gets
// room to recover.
//
// A [Breaker] is closed while calls go well and records each outcome in a
// sliding window — the last N calls, or the calls of the last T in buckets.
// When the failure rate (or the slow-call rate) over the window reaches its
// threshold once a minimum number of calls is in the window, or after K
// consecutive failures, the breaker opens: every call is rejected at once with
// an error that says how long until the breaker will try again. When the open
// duration has passed the breaker is half-open: it admits a bounded number of
// probe calls; enough successes close it, any failure opens it again (for
// longer each time it trips again, with WithGrowingOpenDuration).
//
// Adapters use the two-phase API, which costs no allocation on the closed
// path:
//
//	p, err := b.Allow()
//	if err != nil {
//		return err // rejected: errors.Is(err, breaker.ErrOpen)
//	}
//	err = call()
//	p.Done(err)
//
// and everyone else uses [Breaker.Do], which does the same around a function.
//
// An outcome is counted in the state in which its call was admitted: a call
// admitted while closed that fails after the breaker opened does not count
// against the next half-open period.
package breaker
