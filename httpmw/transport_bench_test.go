package httpmw

import (
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/internal/parallel"
	"github.com/bulwark-go/bulwark/ratelimit"
	"github.com/bulwark-go/bulwark/retry"
)

// trBenchBase is a base RoundTripper without a network: it answers 200 with
// an empty body, allocating only the response (1 alloc, the floor of every
// case; the "bare" case measures it).
var trBenchBase = trRT(func(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 200, Body: http.NoBody, Request: r}, nil
})

// BenchmarkTransport measures RoundTrip on a first-try success, with metrics
// registered, against trBenchBase. Subtract "bare" for the cost the
// Transport adds.
func BenchmarkTransport(b *testing.B) {
	stacks := []struct {
		name   string
		method string
		tr     func(reg prometheus.Registerer) http.RoundTripper
	}{
		{"bare", http.MethodGet, func(prometheus.Registerer) http.RoundTripper { return trBenchBase }},
		{"retry+breaker", http.MethodGet, func(reg prometheus.Registerer) http.RoundTripper {
			return NewTransport(trBenchBase,
				WithRetry(retry.New("bench", retry.WithRegisterer(reg))),
				WithBreakers(func(host string) *breaker.Breaker { return breaker.New(host, breaker.WithRegisterer(reg)) }, 0))
		}},
		{"retry+breaker+bulkhead+ratelimit", http.MethodGet, func(reg prometheus.Registerer) http.RoundTripper {
			return NewTransport(trBenchBase,
				WithRetry(retry.New("bench", retry.WithRegisterer(reg))),
				WithBreakers(func(host string) *breaker.Breaker { return breaker.New(host, breaker.WithRegisterer(reg)) }, 0),
				WithBulkhead(bulkhead.New("bench", bulkhead.WithLimit(bulkhead.MaxLimit), bulkhead.WithRegisterer(reg))),
				WithRateLimit(ratelimit.NewLocal("bench", rate.Inf, 1, ratelimit.WithRegisterer(reg)), nil))
		}},
		{"retry+breaker/POST_with_generated_key", http.MethodPost, func(reg prometheus.Registerer) http.RoundTripper {
			return NewTransport(trBenchBase,
				WithRetry(retry.New("bench", retry.WithRegisterer(reg))),
				WithBreakers(func(host string) *breaker.Breaker { return breaker.New(host, breaker.WithRegisterer(reg)) }, 0))
		}},
	}
	for _, s := range stacks {
		newReq := func() *http.Request {
			var body *strings.Reader
			if s.method == http.MethodPost {
				body = strings.NewReader(`{"a":1}`)
			}
			var req *http.Request
			var err error
			if body != nil {
				req, err = http.NewRequest(s.method, "http://upstream.test/v1/items", body)
			} else {
				req, err = http.NewRequest(s.method, "http://upstream.test/v1/items", nil)
			}
			if err != nil {
				b.Fatal(err)
			}
			return req
		}
		b.Run(s.name, func(b *testing.B) {
			tr := s.tr(prometheus.NewRegistry())
			req := newReq()
			b.ReportAllocs()
			for b.Loop() {
				resp, err := tr.RoundTrip(req)
				if err != nil {
					b.Fatal(err)
				}
				_ = resp.Body.Close()
			}
		})
		b.Run(s.name+"/parallel", func(b *testing.B) {
			tr := s.tr(prometheus.NewRegistry())
			b.ReportAllocs()
			parallel.Run(b, 0, func(pw *parallel.Worker) {
				req := newReq()
				for pw.Next() {
					resp, err := tr.RoundTrip(req)
					if err != nil {
						b.Error(err)
						return
					}
					_ = resp.Body.Close()
				}
			})
		})
	}
}
