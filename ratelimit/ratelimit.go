package ratelimit

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/bulwark-go/bulwark"
)

// DefaultPolicy is the policy name a limiter reports when none is configured.
const DefaultPolicy = "default"

// Limiter decides whether a request identified by key, costing cost units of
// quota, may proceed.
//
// Allow returns the decision and a nil error whenever it could decide, whether
// the answer is yes or no: a denial is not an error. A non-nil error means no
// decision could be made (a bad cost, a store that is down and configured to
// fail closed); the returned Decision then still carries the policy (Policy,
// Limit, Window) so that an adapter can describe it. A cost of 0 asks for the
// current state without spending anything; it is not a decision, and the
// decision metrics do not count it. Implementations are safe for
// concurrent use.
type Limiter interface {
	Allow(ctx context.Context, key string, cost int) (Decision, error)
}

// Decision is the outcome of one [Limiter.Allow] call. It carries exactly what
// the HTTP and gRPC adapters need, and nothing that allocates.
//
// For the IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers):
//
//	RateLimit-Policy: "<Policy>";q=<Limit>;w=<Window in seconds>
//	RateLimit:        "<Policy>";r=<Remaining>;t=<Reset in seconds>
//	Retry-After:      <RetryAfter in seconds>            (on 429 only)
//
// Header fields carry whole seconds: adapters round Window, Reset and
// RetryAfter up, never down, so a client that obeys them does not come back
// too early. For gRPC, a denial maps to RESOURCE_EXHAUSTED with
// errdetails.RetryInfo{RetryDelay: RetryAfter} (and, for the client side,
// grpc-retry-pushback-ms = RetryAfter in milliseconds).
//
// A token bucket of rate r per second and burst b (and the equivalent GCRA in
// redisrate) is described as the policy "b units per b/r": Limit is the
// burst, Window the time an empty bucket takes to fill again. Over any Window
// at most 2×Limit can pass (a full bucket plus its refill), and over a long
// period the rate is Limit/Window.
type Decision struct {
	// Allowed reports whether the request may proceed. When it is true the
	// cost has been taken from the quota.
	Allowed bool
	// Policy names the quota policy, the quoted name in both header fields
	// ("default" unless configured).
	Policy string
	// Limit is the quota: how many units the bucket holds when full (q).
	Limit int
	// Window is the time a drained quota takes to fill up again (w). It is
	// zero for an unlimited (rate.Inf) limiter.
	Window time.Duration
	// Remaining is the whole number of units left after this decision (r);
	// never negative.
	Remaining int
	// Reset is the time until the quota is full again (t); zero when it is
	// full.
	Reset time.Duration
	// RetryAfter is the time until a request of the same cost would be
	// allowed; zero when Allowed is true (Retry-After, gRPC RetryInfo).
	RetryAfter time.Duration
}

// ErrLimited is the sentinel for a request refused by a rate limit; every
// *LimitedError matches it with errors.Is.
var ErrLimited = errors.New("ratelimit: rate limited")

// ErrCostExceedsLimit is returned, with a denied Decision, for a cost larger
// than the limiter's burst: such a request could never be allowed. It is a
// configuration or caller mistake, not a denial, so retrying cannot help.
var ErrCostExceedsLimit = errors.New("ratelimit: cost exceeds the limit")

// ErrInvalidCost is returned for a negative cost.
var ErrInvalidCost = errors.New("ratelimit: negative cost")

// LimitedError is the error [Local.Do], [Local.Wait] and policies made with
// [For] return when the rate limit refuses a call. It matches [ErrLimited]
// with errors.Is and carries the Decision, so adapters can set Retry-After
// and the RateLimit header fields from it. It implements [bulwark.Hinter]:
// a retry policy waits RetryAfter before the next attempt (or stops, when
// that is longer than it allows).
type LimitedError struct {
	Decision Decision
	// Err is the reason when it is not the limit itself: Wait sets it to
	// context.DeadlineExceeded when the wait would outlast the deadline.
	Err error
}

// Error describes the refusal and the time to wait.
func (e *LimitedError) Error() string {
	s := "ratelimit: rate limited (policy " + strconv.Quote(e.Decision.Policy) + "), retry after " + e.Decision.RetryAfter.String()
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Is reports whether target is [ErrLimited].
func (e *LimitedError) Is(target error) bool { return target == ErrLimited }

// Unwrap returns Err.
func (e *LimitedError) Unwrap() error { return e.Err }

// RetryHint returns the decision's RetryAfter as a [bulwark.Hint].
func (e *LimitedError) RetryHint() bulwark.Hint {
	return bulwark.Hint{RetryAfter: e.Decision.RetryAfter}
}

// For returns a [bulwark.Policy] that spends one unit of l's quota for key on
// every call: it runs fn when l allows it and otherwise returns a
// *LimitedError without calling fn. An error from l (a store that failed
// closed, say) is returned as is and fn is not called. Use it to put a keyed
// or distributed limiter into a [bulwark.Chain]; the key is fixed, so make one
// policy per key, or call Allow directly when the key comes with the request.
func For(l Limiter, key string) bulwark.Policy {
	return keyed{l: l, key: key}
}

type keyed struct {
	l   Limiter
	key string
}

func (k keyed) Do(ctx context.Context, fn func(context.Context) error) error {
	return do(ctx, k.l, k.key, fn)
}

func do(ctx context.Context, l Limiter, key string, fn func(context.Context) error) error {
	d, err := l.Allow(ctx, key, 1)
	if err != nil {
		return err
	}
	if !d.Allowed {
		return &LimitedError{Decision: d}
	}
	return fn(ctx)
}
