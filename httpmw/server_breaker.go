package httpmw

import (
	"context"
	"net/http"

	"github.com/bulwark-go/bulwark/breaker"
)

// Breaker returns middleware that runs each request under b.
//
// When b rejects the request, the middleware answers 503 Service Unavailable
// with Retry-After (the time until b admits a probe, in seconds rounded up,
// at least 1) and a problem of type [TypeCircuitOpen]; the handler does not
// run.
//
// Otherwise the handler runs and its outcome is reported to b from the status
// code it actually sent, through the classifier ([WithStatusClassifier];
// default 5xx is a failure). A handler that writes nothing sent 200. A panic
// is a failure and continues unchanged (the middleware does not recover it),
// http.ErrAbortHandler included. The outcome is [breaker.Ignored] when the
// client went away (the request's context was canceled), when the connection
// was hijacked (its fate is unknown), and when a bulwark middleware inside
// this one rejected the request: shedding load is not a failure of the
// handler.
//
// The handler gets a wrapped ResponseWriter, taken from a pool, that records
// the status. It implements Unwrap, http.Flusher (and FlushError),
// http.Hijacker and io.ReaderFrom; each delegates to the underlying writer and
// reports http.ErrNotSupported when that has no such feature, so
// http.NewResponseController works through it. The wrapper must not be used
// after the handler returns, as the net/http contract already requires.
func Breaker(b *breaker.Breaker, opts ...Option) func(http.Handler) http.Handler {
	if b == nil {
		panic("httpmw: Breaker needs a *breaker.Breaker")
	}
	c := srvNewConfig(opts)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p, err := b.Allow()
			if err != nil {
				c.srvReject(w, r, Problem{
					Type:       TypeCircuitOpen,
					Title:      "Circuit open",
					Status:     http.StatusServiceUnavailable,
					Detail:     "The service is failing and sheds requests until it recovers.",
					RetryAfter: srvRetryAfter(err),
					Err:        err,
				})
				return
			}
			sw := srvGetWriter(w)
			done := false
			defer func() {
				if !done {
					// A panic (or runtime.Goexit) unwinds through here; it
					// keeps going once this returns. The wrapper is not
					// pooled: whoever recovers may still hold it.
					if r.Context().Err() == context.Canceled {
						p.Report(breaker.Ignored)
					} else {
						p.Report(breaker.Failure)
					}
				}
			}()
			next.ServeHTTP(sw, r)
			done = true
			switch {
			case sw.rejected || sw.hijacked || r.Context().Err() == context.Canceled:
				p.Report(breaker.Ignored)
			default:
				p.Report(c.classifier(sw.srvStatus()))
			}
			srvPutWriter(sw)
		})
	}
}
