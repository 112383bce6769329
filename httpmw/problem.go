package httpmw

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// ProblemBase is the prefix of every problem type URI this package writes.
// The URIs are stable identifiers: clients may compare them as strings.
const ProblemBase = "https://bulwark-go.github.io/problems/"

// Problem type URIs, one per kind of rejection, with the status each is sent
// with.
const (
	// TypeCircuitOpen: 503, the [Breaker] is open (or half-open and
	// running all its probes).
	TypeCircuitOpen = ProblemBase + "circuit-open"
	// TypeConcurrencyLimit: 503, the [Bulkhead] is full, a wait for a slot
	// timed out, or the request ended while it waited.
	TypeConcurrencyLimit = ProblemBase + "concurrency-limit"
	// TypeRateLimited: 429, the [RateLimit] denied the request.
	TypeRateLimited = ProblemBase + "rate-limited"
	// TypeRateLimitUnavailable: 503, the rate limiter could not decide
	// (a shared store that is down and fails closed, say).
	TypeRateLimitUnavailable = ProblemBase + "rate-limit-unavailable"
	// TypeBadRequest: 400, the request lacks what a middleware needs: the
	// rate-limit key could not be extracted, or the body could not be read.
	TypeBadRequest = ProblemBase + "bad-request"
	// TypeIdempotencyKeyMissing: 400, the [Idempotency] middleware requires
	// an Idempotency-Key and the request has none.
	TypeIdempotencyKeyMissing = ProblemBase + "idempotency-key-missing"
	// TypeIdempotencyKeyInvalid: 400, the Idempotency-Key is malformed.
	TypeIdempotencyKeyInvalid = ProblemBase + "idempotency-key-invalid"
	// TypeIdempotencyInFlight: 409, a request with the same key is still
	// running; Retry-After says when to ask again, and the response is
	// marked Idempotent-In-Flight: true.
	TypeIdempotencyInFlight = ProblemBase + "idempotency-in-flight"
	// TypeIdempotencyNotReplayable: 409, a request with this key was
	// already processed, but its response could not be stored (too large,
	// streamed, or hijacked): it is not sent again, and the request does not
	// run again. The response is marked Idempotent-Replayed: true.
	TypeIdempotencyNotReplayable = ProblemBase + "idempotency-not-replayable"
	// TypeIdempotencyKeyReused: 422, the key was first used for a different
	// request (another body, method or route).
	TypeIdempotencyKeyReused = ProblemBase + "idempotency-key-reused"
	// TypeIdempotencyScope: 403, the scope function found no principal to
	// scope the key to.
	TypeIdempotencyScope = ProblemBase + "idempotency-scope"
	// TypeIdempotencyUnavailable: 503, the idempotency store failed and the
	// guard fails closed.
	TypeIdempotencyUnavailable = ProblemBase + "idempotency-unavailable"
	// TypeBodyTooLarge: 413, the request body exceeds the limit the
	// [Idempotency] middleware reads and fingerprints.
	TypeBodyTooLarge = ProblemBase + "body-too-large"
)

// Problem is an RFC 9457 problem detail: what a middleware tells a client it
// refused. Type, Title, Status and Detail are meant for the client and never
// contain the text of an internal error; Err and RetryAfter are for a custom
// error writer (see [WithErrorWriter]) that wants to log or shape its own
// response.
type Problem struct {
	// Type is one of the Type... URIs.
	Type string `json:"type"`
	// Title is a short, fixed summary of the Type.
	Title string `json:"title"`
	// Status is the HTTP status code.
	Status int `json:"status"`
	// Detail explains this occurrence, in words chosen by the middleware.
	Detail string `json:"detail,omitempty"`
	// RetryAfter is the wait the middleware advertised in Retry-After
	// (already set on the response); zero when none.
	RetryAfter time.Duration `json:"-"`
	// Err is the error behind the rejection, for logging. It is never
	// written to the client by [WriteProblem].
	Err error `json:"-"`
}

// WriteProblem is the default error writer: it writes p as
// application/problem+json with the status p.Status, and
// Cache-Control: no-store so that no cache keeps a rejection.
func WriteProblem(w http.ResponseWriter, _ *http.Request, p Problem) {
	body, err := json.Marshal(p)
	if err != nil {
		// A Problem holds only strings and an int: Marshal cannot fail.
		body = nil
	}
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Del("Content-Encoding")
	w.WriteHeader(p.Status)
	_, _ = w.Write(body)
}

// srvReject marks every wrapper of ours down w's Unwrap chain as rejected by
// a bulwark middleware (so that an outer Breaker does not count the rejection
// as a handler failure, nor an outer Idempotency store it), sets
// Retry-After when retryAfter is positive and hands p to the error writer.
func (c *srvConfig) srvReject(w http.ResponseWriter, r *http.Request, p Problem) {
	for rw := w; rw != nil; {
		if sw, ok := rw.(*srvWriter); ok {
			sw.rejected = true
		}
		u, ok := rw.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			break
		}
		rw = u.Unwrap()
	}
	if p.Title == "" {
		p.Title = http.StatusText(p.Status)
	}
	if p.RetryAfter > 0 {
		w.Header().Set("Retry-After", FormatRetryAfter(p.RetryAfter))
	}
	c.errorWriter(w, r, p)
}
