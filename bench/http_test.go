package bench

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/httpmw"
	"github.com/bulwark-go/bulwark/ratelimit"
	fsbulkhead "github.com/failsafe-go/failsafe-go/bulkhead"
	"github.com/failsafe-go/failsafe-go/circuitbreaker"
	"github.com/failsafe-go/failsafe-go/failsafehttp"
	"github.com/prometheus/client_golang/prometheus"
)

// HTTPHandler: one request through a server-side stack, in process: the
// handler answers 200 with a short body. bulwark's stack is limiter (keyed by
// client IP) + bulkhead + breaker with metrics on, without and with the
// RateLimit header fields; failsafe-go's is its breaker + bulkhead through
// failsafehttp. Reference: failsafe-breaker+bulkhead, compared on the time
// each adds to the bare handler.

var helloBody = []byte("hello\n")

func hello(w http.ResponseWriter, _ *http.Request) {
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(helloBody)
}

// discardWriter is a ResponseWriter that keeps nothing, reused through a
// pool so that the harness itself allocates nothing per request.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(code int)        { w.status = code }

var writers = sync.Pool{New: func() any { return &discardWriter{h: http.Header{}} }}

// serve runs one request through h and checks that it got a 200.
func serve(h http.Handler, r *http.Request) error {
	w := writers.Get().(*discardWriter)
	w.status = 0
	h.ServeHTTP(w, r)
	clear(w.h)
	status := w.status
	writers.Put(w)
	if status != http.StatusOK {
		return &statusError{status}
	}
	return nil
}

type statusError struct{ code int }

func (e *statusError) Error() string { return "bench: status " + http.StatusText(e.code) }

func bulwarkStack(headers bool) http.Handler {
	reg := prometheus.NewRegistry()
	l := ratelimit.NewLocal("bench", limiterRate, limiterBurst, ratelimit.WithRegisterer(reg))
	bh := bulkhead.New("bench", bulkhead.WithLimit(bulkheadLimit), bulkhead.WithRegisterer(reg))
	br := breaker.New("bench", breaker.WithRegisterer(reg))
	return httpmw.Chain(
		httpmw.RateLimit(l, httpmw.WithRateLimitHeaders(headers)),
		httpmw.Bulkhead(bh),
		httpmw.Breaker(br),
	)(http.HandlerFunc(hello))
}

func BenchmarkHTTPHandler(b *testing.B) {
	// One request, only read by the handlers, from one client address.
	r := httptest.NewRequest(http.MethodGet, "http://bench.example/hello", nil)
	handler := func(h http.Handler) func(int) error {
		return func(int) error { return serve(h, r) }
	}
	variants := []variant{
		{"bare", handler(http.HandlerFunc(hello))},
		{"bulwark-stack", handler(bulwarkStack(false))},
		{"bulwark-stack+headers", handler(bulwarkStack(true))},
		{"failsafe-breaker+bulkhead", handler(failsafehttp.NewHandler(http.HandlerFunc(hello),
			circuitbreaker.NewBuilder[*http.Response]().
				WithFailureThresholdRatio(50, 100).
				WithDelay(30*time.Second).
				Build(),
			fsbulkhead.New[*http.Response](bulkheadLimit)))},
	}
	runVariants(b, variants, runOpts{})
}
