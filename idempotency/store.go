package idempotency

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"time"
)

// Store keeps idempotency records. Every method is atomic on its backend:
// whatever the interleaving of calls from any number of goroutines and
// processes sharing the backend, each key has at most one owner at a time and
// a completed response is never overwritten by a stale owner.
//
// A record is absent, in flight (claimed, with an owner and a lease deadline)
// or completed (with a response and a retention deadline). A record whose
// deadline has passed, by the store's clock, is absent.
//
// Implementations: MemoryStore in this package, redisstore.Store and
// pgstore.Store. The conformance suite in internal/storetest runs against all
// three; a new implementation should pass it too.
type Store interface {
	// Claim takes the key for a new request when the key is absent (or its
	// lease or retention has lapsed): it records fp and a fresh owner token
	// with a lease of the given length and returns Claimed with the token.
	// Otherwise it changes nothing and returns Mismatch when the record's
	// fingerprint differs from fp, Completed with the stored response, or
	// InFlight with the time left on the lease, in that order of precedence.
	Claim(ctx context.Context, key Key, fp Fingerprint, lease time.Duration) (ClaimResult, error)
	// Complete stores resp for retention and ends the lease, if owner still
	// holds an unexpired lease on key; otherwise it returns ErrLeaseLost and
	// changes nothing. A store that bounds its size returns
	// ErrResponseTooLarge, and changes nothing, for a response it could
	// never hold.
	Complete(ctx context.Context, key Key, owner Token, resp Response, retention time.Duration) error
	// Release deletes the record, if owner still holds an unexpired lease on
	// key, so the next claim runs the request again; otherwise it returns
	// ErrLeaseLost and changes nothing.
	Release(ctx context.Context, key Key, owner Token) error
	// Extend sets the lease to end lease from now, if owner still holds an
	// unexpired lease on key; otherwise it returns ErrLeaseLost.
	Extend(ctx context.Context, key Key, owner Token, lease time.Duration) error
}

// ClaimStatus is the answer to a claim.
type ClaimStatus uint8

// The answers to a claim.
const (
	// Claimed: the caller owns the key and runs the request.
	Claimed ClaimStatus = iota + 1
	// InFlight: another owner holds an unexpired lease.
	InFlight
	// Completed: the request ran before; Response holds its result.
	Completed
	// Mismatch: the key is recorded with another fingerprint.
	Mismatch
)

var claimStatusNames = [...]string{"invalid", "claimed", "in_flight", "completed", "mismatch"}

// String returns "claimed", "in_flight", "completed" or "mismatch".
func (s ClaimStatus) String() string {
	if int(s) < len(claimStatusNames) {
		return claimStatusNames[s]
	}
	return claimStatusNames[0]
}

// ClaimResult is what Store.Claim found.
type ClaimResult struct {
	Status ClaimStatus
	// Owner is the fencing token of the new lease (Claimed only).
	Owner Token
	// Response is the stored result (Completed only); read-only.
	Response Response
	// RetryAfter is the time until the current lease ends (InFlight only).
	RetryAfter time.Duration
}

// Token identifies one lease on a key: the owner that claimed it. A new
// token is drawn for every claim, so an owner whose lease lapsed and whose
// key was claimed again holds a token the store no longer accepts.
type Token [16]byte

// NewToken returns a random token from crypto/rand. Stores call it in Claim.
func NewToken() Token {
	var t Token
	_, _ = rand.Read(t[:]) // crypto/rand.Read never fails (it panics instead)
	return t
}

// String returns the token in lowercase hex.
func (t Token) String() string { return hex.EncodeToString(t[:]) }
