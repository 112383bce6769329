package retry

import (
	"strconv"
)

// Reason says why a policy stopped retrying a call that failed.
type Reason uint8

// Reasons a call failed. Each maps to a result label of
// bulwark_retry_calls_total, given in brackets.
const (
	// NotRetryable: the attempt's error is not retryable, or its hint asks
	// for a longer wait than WithMaxHintWait allows (not_retryable).
	NotRetryable Reason = iota + 1
	// Exhausted: the last allowed attempt failed, or the backoff schedule
	// returned backoff.Stop (exhausted).
	Exhausted
	// OutOfTime: the next wait would have ended at or after the context's
	// deadline, or after the elapsed cap, so the policy stopped without
	// waiting (exhausted).
	OutOfTime
	// BudgetExhausted: the retry budget refused the retry (budget_exhausted).
	BudgetExhausted
	// Canceled: the caller's context ended, during an attempt or a wait
	// (canceled).
	Canceled
)

// String returns the reason in words.
func (r Reason) String() string {
	switch r {
	case NotRetryable:
		return "not retryable"
	case Exhausted:
		return "attempts exhausted"
	case OutOfTime:
		return "out of time"
	case BudgetExhausted:
		return "retry budget exhausted"
	case Canceled:
		return "canceled"
	}
	return "Reason(" + strconv.Itoa(int(r)) + ")"
}

// Error is the error of a call that failed under a [Policy]: every failure
// that Do, or a [Loop], returns is an *Error, including a non-retryable error
// on the first attempt, so that callers can always learn how many attempts
// ran. It wraps the last attempt's error, so errors.Is and errors.As reach it
// (and any [bulwark.Hint] it carries), and when Reason is Canceled it also
// wraps the context's error, so errors.Is(err, context.Canceled) or
// context.DeadlineExceeded holds.
//
// When the last attempt's error is itself a *backoff.PermanentError, Err is
// the error it marks, as backoff.Retry does; a PermanentError deeper in the
// error's tree is left in place.
type Error struct {
	// Attempts is the number of attempts that ran, the first call included.
	Attempts int
	// Reason says why retrying stopped.
	Reason Reason
	// Err is the last attempt's error.
	Err error

	ctxErr error
}

// Error describes the reason, the attempts and the last error.
func (e *Error) Error() string {
	s := "retry: " + e.Reason.String() + " after " + strconv.Itoa(e.Attempts) + " attempt"
	if e.Attempts != 1 {
		s += "s"
	}
	if e.ctxErr != nil {
		s += " (" + e.ctxErr.Error() + ")"
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the last attempt's error and, when the caller's context
// ended the call, the context's error.
func (e *Error) Unwrap() []error {
	if e.ctxErr != nil {
		return []error{e.Err, e.ctxErr}
	}
	return []error{e.Err}
}

// Results: the result label values of bulwark_retry_calls_total.
const (
	resFirstTry = iota
	resAfterRetry
	resExhausted
	resNotRetryable
	resBudgetExhausted
	resCanceled
	numResults
)

var resultLabels = [numResults]string{"first_try", "after_retry", "exhausted", "not_retryable", "budget_exhausted", "canceled"}

func (r Reason) result() int {
	switch r {
	case NotRetryable:
		return resNotRetryable
	case BudgetExhausted:
		return resBudgetExhausted
	case Canceled:
		return resCanceled
	}
	return resExhausted
}
