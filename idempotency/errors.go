package idempotency

import (
	"errors"
	"fmt"
	"time"

	"github.com/bulwark-go/bulwark"
)

// Errors the protocol returns. Adapters test them with errors.Is; the
// mapping to HTTP and gRPC status is in the package documentation.
var (
	// ErrMissingKey: the request carries no idempotency key although the
	// Guard requires one. The client must add a key: not retryable as is.
	ErrMissingKey = errors.New("idempotency: missing idempotency key")
	// ErrInvalidKey: the key is not 1 to 255 visible ASCII characters.
	ErrInvalidKey = errors.New("idempotency: malformed idempotency key")
	// ErrInFlight: another request with the same key holds the lease.
	// The returned error is an *InFlightError with the time left on the lease.
	ErrInFlight = errors.New("idempotency: a request with this key is in flight")
	// ErrMismatch: the key was first used for a different request
	// (another fingerprint).
	ErrMismatch = errors.New("idempotency: key reused for a different request")
	// ErrStoreUnavailable: the store failed or did not answer in time. The
	// returned error is a *StoreError wrapping the cause.
	ErrStoreUnavailable = errors.New("idempotency: store unavailable")
	// ErrLeaseLost: Complete, Release or Extend was called by an owner whose
	// lease has expired or whose key was claimed by another owner since
	// (fencing). Nothing was changed.
	ErrLeaseLost = errors.New("idempotency: lease lost")
	// ErrBodyTooLarge: the body passed to ReadFingerprint exceeds the limit.
	ErrBodyTooLarge = errors.New("idempotency: request body too large")
	// ErrStoreFull: the memory store is full of live records and none can
	// be evicted (see MemoryStore).
	ErrStoreFull = errors.New("idempotency: memory store full")
	// ErrResponseTooLarge: the response is larger than the store can ever
	// hold, however empty (for MemoryStore, EntryOverhead plus the
	// response's encoding exceed MaxBytes). Lease.Complete then stores
	// NotReplayable(status) instead, so that a retry is told the request was
	// processed rather than running it again.
	ErrResponseTooLarge = errors.New("idempotency: response too large to store")
)

// InFlightPoll is the longest retry hint of an [*InFlightError]: how soon a
// client is told to ask again while the key's first request still runs.
//
// The lease says when a crashed holder's key frees at the latest, not when a
// live holder will finish: a holder renews its lease for as long as it runs,
// so the time left on it stays near the full lease (30 s by default), and
// most requests finish in well under a second. A client that waited out the
// lease would wait for nothing, and one that caps its waits (an HTTP
// transport's longest Retry-After, say) would give up instead of picking up
// the stored result a moment later. One second is also the shortest wait
// but zero that an HTTP Retry-After can express.
const InFlightPoll = time.Second

// InFlightError is the error Begin returns when another request holds the
// key. It is ErrInFlight for errors.Is and carries a retry-after hint.
type InFlightError struct {
	// RetryAfter is the time until the current lease ends: the latest moment
	// a retry can still get this answer, unless the holder renews its lease.
	RetryAfter time.Duration
}

func (e *InFlightError) Error() string {
	return fmt.Sprintf("%v (lease ends in %v)", ErrInFlight, e.RetryAfter)
}

// Is reports whether target is ErrInFlight.
func (e *InFlightError) Is(target error) bool { return target == ErrInFlight }

// RetryHint tells a client to ask again after RetryAfter or [InFlightPoll],
// whichever is sooner.
func (e *InFlightError) RetryHint() bulwark.Hint {
	return bulwark.Hint{RetryAfter: min(e.RetryAfter, InFlightPoll)}
}

// StoreError is the error the Guard returns when a store operation fails. It
// is ErrStoreUnavailable for errors.Is and unwraps to the cause (a network
// error, context.DeadlineExceeded, ErrStoreFull, ErrResponseTooLarge, ...).
type StoreError struct {
	Op  string // "claim", "complete", "release" or "extend"
	Err error
}

func (e *StoreError) Error() string {
	return fmt.Sprintf("%v: %s: %v", ErrStoreUnavailable, e.Op, e.Err)
}

// Unwrap returns the cause.
func (e *StoreError) Unwrap() error { return e.Err }

// Is reports whether target is ErrStoreUnavailable.
func (e *StoreError) Is(target error) bool { return target == ErrStoreUnavailable }
