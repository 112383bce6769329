package httpmw

import (
	"net/http"

	"github.com/bulwark-go/bulwark/bulkhead"
)

// Bulkhead returns middleware that runs each request holding a slot of bh.
//
// When bh is full, or a wait in its queue times out, the middleware answers
// 503 Service Unavailable with Retry-After (bh's retry-after hint in seconds
// rounded up, at least 1) and a problem of type [TypeConcurrencyLimit]; the
// handler does not run. When the request's context ends while it waits, the
// client is usually gone; the middleware still answers 503 with the same
// problem type (without Retry-After), which costs little and is right when a
// server-side deadline ended the wait. The slot is released when the handler
// returns or panics. The ResponseWriter is passed on unwrapped.
func Bulkhead(bh *bulkhead.Bulkhead, opts ...Option) func(http.Handler) http.Handler {
	if bh == nil {
		panic("httpmw: Bulkhead needs a *bulkhead.Bulkhead")
	}
	c := srvNewConfig(opts)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p, err := bh.Acquire(r.Context())
			if err != nil {
				pr := Problem{
					Type:   TypeConcurrencyLimit,
					Title:  "Concurrency limit reached",
					Status: http.StatusServiceUnavailable,
					Detail: "The service is at its limit of concurrent requests.",
					Err:    err,
				}
				if r.Context().Err() == nil {
					pr.RetryAfter = srvRetryAfter(err)
				} else {
					pr.Detail = "The request ended while it waited for a slot."
				}
				c.srvReject(w, r, pr)
				return
			}
			defer p.Release()
			next.ServeHTTP(w, r)
		})
	}
}
