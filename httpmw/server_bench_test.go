package httpmw

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/internal/parallel"
	"github.com/bulwark-go/bulwark/ratelimit"
)

// srvBenchWriter is a ResponseWriter that allocates nothing: its header map
// is reused, so after the first request every field the stack sets replaces
// an existing entry.
type srvBenchWriter struct{ h http.Header }

func (w *srvBenchWriter) Header() http.Header         { return w.h }
func (w *srvBenchWriter) WriteHeader(int)             {}
func (w *srvBenchWriter) Write(p []byte) (int, error) { return len(p), nil }

var srvBenchBody = []byte("ok")

func srvBenchHandler(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(srvBenchBody) }

// srvBenchStack is breaker + bulkhead + local limiter, each with its metrics
// registered, around the trivial handler.
func srvBenchStack(headers bool) http.Handler {
	reg := prometheus.NewRegistry()
	l := ratelimit.NewLocal("bench", rate.Limit(1e12), 1<<30, ratelimit.WithRegisterer(reg))
	bh := bulkhead.New("bench", bulkhead.WithLimit(bulkhead.MaxLimit), bulkhead.WithRegisterer(reg))
	b := breaker.New("bench", breaker.WithRegisterer(reg))
	return Chain(RateLimit(l, WithRateLimitHeaders(headers)), Bulkhead(bh), Breaker(b))(http.HandlerFunc(srvBenchHandler))
}

func BenchmarkServer(b *testing.B) {
	for _, v := range []struct {
		name string
		h    http.Handler
	}{
		{"bare", http.HandlerFunc(srvBenchHandler)},
		{"breaker", Breaker(breaker.New("bench", breaker.WithRegisterer(prometheus.NewRegistry())))(http.HandlerFunc(srvBenchHandler))},
		{"bulkhead", Bulkhead(bulkhead.New("bench", bulkhead.WithLimit(bulkhead.MaxLimit),
			bulkhead.WithRegisterer(prometheus.NewRegistry())))(http.HandlerFunc(srvBenchHandler))},
		{"limiter", RateLimit(ratelimit.NewLocal("bench", rate.Limit(1e12), 1<<30, ratelimit.WithRegisterer(prometheus.NewRegistry())),
			WithRateLimitHeaders(false))(http.HandlerFunc(srvBenchHandler))},
		{"breaker+bulkhead+limiter/headers-off", srvBenchStack(false)},
		{"breaker+bulkhead+limiter/headers-on", srvBenchStack(true)},
	} {
		b.Run(v.name, func(b *testing.B) {
			w := &srvBenchWriter{h: http.Header{}}
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.RemoteAddr = "192.0.2.1:1234"
			v.h.ServeHTTP(w, r) // fill the header map
			b.ReportAllocs()
			for b.Loop() {
				v.h.ServeHTTP(w, r)
			}
		})
		b.Run(v.name+"/parallel", func(b *testing.B) {
			var client atomic.Int32
			b.ReportAllocs()
			parallel.Run(b, 0, func(pw *parallel.Worker) {
				// One client per goroutine, as on a server with many.
				w := &srvBenchWriter{h: http.Header{}}
				r := httptest.NewRequest(http.MethodGet, "/", nil)
				r.RemoteAddr = "192.0.2." + strconv.Itoa(int(client.Add(1))) + ":1234"
				v.h.ServeHTTP(w, r)
				for pw.Next() {
					v.h.ServeHTTP(w, r)
				}
			})
		})
	}
}
