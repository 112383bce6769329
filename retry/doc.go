// Package retry retries failed calls with exponential backoff and jitter,
// honours server hints, bounds each attempt and the whole call in time, and
// draws retries from a shared budget so that retries cannot turn an
// upstream's outage into a retry storm.
//
// Counting: "attempts" always means calls of the function in total, the first
// included. [WithMaxAttempts](3), the default, calls at most three times: one
// call and up to two retries.
//
// A [Policy] built by [New] is a [github.com/bulwark-go/bulwark.Policy]:
// compose it outside a breaker or a bulkhead with bulwark.Chain so that every
// attempt asks them for a permit and their rejections (which carry a
// retry-after hint) pace the retries. Adapters drive the attempts themselves
// through [Policy.BeginIn] and [Loop], which allocate nothing for a call that
// succeeds at once; on the hottest paths they run the first attempt before
// any Loop and record its success with [Policy.FirstTrySucceeded].
//
// What is retried: see [Retryable]. The caller's own cancellation or deadline
// always ends the call at once; a per-attempt timeout ([WithAttemptTimeout])
// does not. When a failed attempt's error carries a
// [github.com/bulwark-go/bulwark.Hint] with RetryAfter, the next wait is the
// hint instead of the schedule's delay; when the hint asks for more than
// [WithMaxHintWait] (10 s by default), or a wait would end past the caller's
// deadline or the elapsed cap, the policy stops at once instead of retrying
// too early or sleeping into the deadline.
//
// Metrics, registered with [WithRegisterer] and labelled with the policy's
// name: bulwark_retry_attempts_total, bulwark_retry_calls_total{result} with
// result first_try, after_retry, exhausted, not_retryable, budget_exhausted or
// canceled, the histogram bulwark_retry_wait_seconds of the waits before
// retries, and the gauge bulwark_retry_budget_tokens of the tokens left in the
// policy's budget (none for a policy without one). Policies that share a name
// on one registry share its series: their counts and waits add up, and the
// gauge is the sum of their budgets' tokens, a budget shared by several of
// them counted once. The collectors hold policies weakly: a policy nobody
// uses any more (one replaced on a configuration reload, say) is garbage
// collected with its budget and leaves the gauge.
package retry
