package httpmw_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/httpmw"
	"github.com/bulwark-go/bulwark/retry"
)

// A client whose requests are retried on 503 (honouring Retry-After), with a
// breaker per upstream host. The POST gets an Idempotency-Key that is the
// same on every attempt.
func ExampleNewTransport() {
	var calls atomic.Int32
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		fmt.Printf("attempt %d: %s key=%t\n", n, r.Method, r.Header.Get("Idempotency-Key") != "")
		if n == 1 {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, "created")
	}))
	defer upstream.Close()

	client := &http.Client{
		Transport: httpmw.NewTransport(nil, // http.DefaultTransport
			httpmw.WithRetry(retry.New("orders",
				retry.WithMaxAttempts(3),
				retry.WithBackOff(func() backoff.BackOff { return backoff.NewConstantBackOff(10 * time.Millisecond) }),
			)),
			httpmw.WithBreakers(func(host string) *breaker.Breaker { return breaker.New(host) }, 16),
			httpmw.WithMaxRetryAfter(5*time.Second),
		),
		Timeout: 10 * time.Second,
	}

	resp, err := client.Post(upstream.URL+"/orders", "application/json", strings.NewReader(`{"sku":"A1"}`))
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, string(body))
	// Output:
	// attempt 1: POST key=true
	// attempt 2: POST key=true
	// 201 created
}

func ExampleParseRetryAfter() {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	for _, v := range []string{"120", "Thu, 01 Jan 2026 12:00:30 GMT", "soon"} {
		d, ok := httpmw.ParseRetryAfter(v, now)
		fmt.Println(d, ok)
	}
	// Output:
	// 2m0s true
	// 30s true
	// 0s false
}
