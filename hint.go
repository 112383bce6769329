package bulwark

import (
	"errors"
	"time"
)

// Hint is what an error says about retrying the call that produced it.
// The zero Hint says nothing: retry as the policy sees fit.
type Hint struct {
	// RetryAfter is how long the caller should wait before trying again;
	// zero means no suggestion. A breaker sets it to the time left until it
	// admits a probe, a rate limiter to the time until a token is free, and
	// the HTTP and gRPC adapters map Retry-After and grpc-retry-pushback-ms
	// into it.
	RetryAfter time.Duration
	// NoRetry says that trying the same call again cannot succeed, so a
	// retry policy stops at once.
	NoRetry bool
}

// Hinter is implemented by errors that carry a [Hint]. Every rejection error
// in bulwark (breaker open, bulkhead full, rate limited, ...) implements it.
type Hinter interface {
	error
	RetryHint() Hint
}

// HintOf returns the hint of the first error in err's tree that carries one.
func HintOf(err error) (Hint, bool) {
	if err == nil {
		return Hint{}, false
	}
	h, ok := errors.AsType[Hinter](err)
	if !ok {
		return Hint{}, false
	}
	return h.RetryHint(), true
}

// WithHint returns an error that wraps err and carries h. It returns nil when
// err is nil. Adapters use it to attach what a server said (Retry-After,
// pushback) to the error a call returns.
func WithHint(err error, h Hint) error {
	if err == nil {
		return nil
	}
	return &hintError{err: err, hint: h}
}

// Permanent marks err as not worth retrying: [HintOf] reports NoRetry for it,
// [IsPermanent] reports true for it and for any error that wraps it, and retry
// policies return it after the attempt that produced it. It returns
// nil when err is nil. The retry package also honours backoff.Permanent from
// github.com/cenkalti/backoff/v4.
func Permanent(err error) error {
	return WithHint(err, Hint{NoRetry: true})
}

// IsPermanent reports whether err, or an error it wraps, carries a hint with
// NoRetry set. Unlike [HintOf] it looks past the first hint: it walks err's
// whole tree, as [errors.As] does, so a permanent error stays permanent when
// an adapter wraps it again with a hint of its own (a server's Retry-After,
// say). It does not allocate unless an error in the tree has an As method.
func IsPermanent(err error) bool {
	var target *Hinter // allocated for the first As method met, if any
	return isPermanent(err, &target)
}

// isPermanent is IsPermanent's walk of err's tree; *target is the Hinter
// that As methods fill, shared by the whole walk.
func isPermanent(err error, target **Hinter) bool {
	for err != nil {
		if h, ok := err.(Hinter); ok && h.RetryHint().NoRetry {
			return true
		}
		if x, ok := err.(interface{ As(any) bool }); ok {
			if *target == nil {
				*target = new(Hinter)
			}
			if x.As(*target) && **target != nil && (**target).RetryHint().NoRetry {
				return true
			}
		}
		switch x := err.(type) {
		case interface{ Unwrap() error }:
			err = x.Unwrap()
		case interface{ Unwrap() []error }:
			for _, err := range x.Unwrap() {
				if isPermanent(err, target) {
					return true
				}
			}
			return false
		default:
			return false
		}
	}
	return false
}

type hintError struct {
	err  error
	hint Hint
}

func (e *hintError) Error() string   { return e.err.Error() }
func (e *hintError) Unwrap() error   { return e.err }
func (e *hintError) RetryHint() Hint { return e.hint }
