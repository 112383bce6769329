package bulkhead

import (
	"errors"
	"strconv"
	"time"

	"github.com/bulwark-go/bulwark"
)

// Sentinels that rejections match with errors.Is.
var (
	// ErrFull means every slot was taken and the queue was absent or full.
	ErrFull = errors.New("bulkhead: full")
	// ErrTimeout means the caller waited in the queue for the maximum wait
	// without getting a slot.
	ErrTimeout = errors.New("bulkhead: timed out waiting for a slot")
)

// RejectedError is the error of a call the bulkhead refused: it matches
// [ErrFull] or [ErrTimeout] with errors.Is and carries a retry-after hint.
//
// RetryAfter is the bulkhead's maximum wait when it queues callers — a call
// rejected by such a bulkhead had, or would have had, that long to find a
// slot, so trying again sooner is unlikely to help — and
// [DefaultRetryAfter] (100 ms) when it does not queue. Rejections by one
// bulkhead return the same *RejectedError each time, so that rejecting costs
// no allocation; treat it as read-only.
type RejectedError struct {
	Name       string        // the bulkhead's name
	Err        error         // ErrFull or ErrTimeout
	RetryAfter time.Duration // see above
}

// Error says which bulkhead refused the call and why.
func (e *RejectedError) Error() string {
	what := "full"
	if e.Err == ErrTimeout {
		what = "timed out waiting for a slot"
	}
	return "bulkhead " + strconv.Quote(e.Name) + ": " + what
}

// Is reports whether target is the sentinel e matches.
func (e *RejectedError) Is(target error) bool { return target == e.Err }

// RetryHint returns the retry-after hint; it implements [bulwark.Hinter].
func (e *RejectedError) RetryHint() bulwark.Hint {
	return bulwark.Hint{RetryAfter: e.RetryAfter}
}

var _ bulwark.Hinter = (*RejectedError)(nil)
