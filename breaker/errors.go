package breaker

import (
	"errors"
	"fmt"
	"time"

	"github.com/bulwark-go/bulwark"
)

var (
	// ErrOpen matches (with errors.Is) the error of a call rejected because
	// the breaker is open or forced open.
	ErrOpen = errors.New("breaker: open")
	// ErrHalfOpenFull matches the error of a call rejected because the
	// half-open breaker already runs as many probes as it allows.
	ErrHalfOpenFull = errors.New("breaker: half-open, probe limit reached")
)

// OpenError is the error of a rejected call. It matches [ErrOpen] or
// [ErrHalfOpenFull] with errors.Is, and its RetryHint says when the breaker
// will admit a probe.
type OpenError struct {
	// Name is the breaker's name.
	Name string
	// State is the state that rejected the call: Open, ForcedOpen or
	// HalfOpen.
	State State
	// RetryAfter is the time left until the breaker admits a probe; zero
	// when unknown (forced open, or half-open with all probes running).
	RetryAfter time.Duration
}

// Error says which breaker rejected the call, in which state, and, when
// open, how long until it admits a probe.
func (e *OpenError) Error() string {
	switch e.State {
	case HalfOpen:
		return fmt.Sprintf("breaker %q: half-open, probe limit reached", e.Name)
	case ForcedOpen:
		return fmt.Sprintf("breaker %q: forced open", e.Name)
	}
	return fmt.Sprintf("breaker %q: open, retry in %v", e.Name, e.RetryAfter)
}

// Is reports whether target is ErrOpen (for Open and ForcedOpen) or
// ErrHalfOpenFull (for HalfOpen).
func (e *OpenError) Is(target error) bool {
	if e.State == HalfOpen {
		return target == ErrHalfOpenFull
	}
	return target == ErrOpen
}

// RetryHint returns the time until the breaker admits a probe. The hint
// never says NoRetry: a later call may well be admitted.
func (e *OpenError) RetryHint() bulwark.Hint {
	return bulwark.Hint{RetryAfter: e.RetryAfter}
}
