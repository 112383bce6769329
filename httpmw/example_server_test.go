package httpmw_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/httpmw"
	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/ratelimit"
)

// A ServeMux behind the rate limit, bulkhead and breaker middleware, with
// idempotency on the route that creates orders.
func ExampleChain() {
	reg := prometheus.NewRegistry() // in a service: the registry /metrics serves
	limiter := ratelimit.NewLocal("api", rate.Every(time.Minute), 3, ratelimit.WithRegisterer(reg))
	bh := bulkhead.New("api", bulkhead.WithLimit(100), bulkhead.WithRegisterer(reg))
	br := breaker.New("api", breaker.WithRegisterer(reg))
	guard := idempotency.New("orders", nil, idempotency.WithRegisterer(reg))

	// The principal a key belongs to; a real service takes it from the
	// authenticated identity.
	account := httpmw.WithScope(func(r *http.Request) (string, error) {
		if a := r.Header.Get("X-Account"); a != "" {
			return a, nil
		}
		return "", errors.New("no account")
	})
	orders := 0
	mux := http.NewServeMux()
	mux.Handle("POST /orders", httpmw.Idempotency(guard, account)(http.HandlerFunc(
		func(w http.ResponseWriter, r *http.Request) {
			orders++
			w.Header().Set("Location", fmt.Sprintf("/orders/%d", orders))
			w.WriteHeader(http.StatusCreated)
		})))
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })

	handler := httpmw.Chain(httpmw.RateLimit(limiter), httpmw.Bulkhead(bh), httpmw.Breaker(br))(mux)

	send := func(method, path, key string) {
		req := httptest.NewRequest(method, path, strings.NewReader(`{"item":42}`))
		req.Header.Set("X-Account", "acct-1")
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		line := fmt.Sprintf("%s %s: %d", method, path, rec.Code)
		for _, name := range []string{"Location", "Idempotent-Replayed", "Retry-After", "RateLimit"} {
			if v := rec.Header().Get(name); v != "" {
				line += fmt.Sprintf(" %s=%s", name, v)
			}
		}
		fmt.Println(line)
	}
	send("POST", "/orders", `"order-7"`)
	send("POST", "/orders", `"order-7"`) // a retry: replayed, not run again
	send("GET", "/health", "")
	send("GET", "/health", "") // the burst of 3 is spent
	fmt.Println("orders created:", orders)
	// Output:
	// POST /orders: 201 Location=/orders/1 RateLimit="default";r=2;t=60
	// POST /orders: 201 Location=/orders/1 Idempotent-Replayed=true RateLimit="default";r=1;t=120
	// GET /health: 200 RateLimit="default";r=0;t=180
	// GET /health: 429 Retry-After=60 RateLimit="default";r=0;t=180
	// orders created: 1
}

// Behind a load balancer in 10.0.0.0/8, the client is the address it reports
// in X-Forwarded-For; a header sent by anyone else is ignored.
func ExampleKeyByIP() {
	key := httpmw.KeyByIP(httpmw.WithTrustedProxies(netip.MustParsePrefix("10.0.0.0/8")))

	viaProxy := httptest.NewRequest("GET", "/", nil)
	viaProxy.RemoteAddr = "10.1.2.3:4711"
	viaProxy.Header.Set("X-Forwarded-For", "198.51.100.7, 10.9.9.9")

	direct := httptest.NewRequest("GET", "/", nil)
	direct.RemoteAddr = "203.0.113.5:5555"
	direct.Header.Set("X-Forwarded-For", "198.51.100.7")

	k1, _ := key(viaProxy)
	k2, _ := key(direct)
	fmt.Println(k1)
	fmt.Println(k2)
	// Output:
	// 198.51.100.7
	// 203.0.113.5
}

// A payment endpoint that charges once per Idempotency-Key: a retry gets the
// stored response, marked as a replay, and the same key with another body is
// refused.
func ExampleIdempotency() {
	guard := idempotency.New("payments", nil) // nil store: in memory
	charges := 0
	pay := httpmw.Idempotency(guard, httpmw.WithScope(func(r *http.Request) (string, error) {
		return r.Header.Get("X-Account"), nil // the authenticated principal, in a real service
	}))(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		charges++
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "charge %d", charges)
	}))

	send := func(body string) {
		req := httptest.NewRequest(http.MethodPost, "/payments", strings.NewReader(body))
		req.Header.Set("X-Account", "acct-1")
		req.Header.Set("Idempotency-Key", `"a1b2c3"`)
		rec := httptest.NewRecorder()
		pay.ServeHTTP(rec, req)
		if rec.Code >= 400 {
			fmt.Println(rec.Code, rec.Header().Get("Content-Type"))
			return
		}
		fmt.Printf("%d %q replayed=%q\n", rec.Code, rec.Body.String(), rec.Header().Get("Idempotent-Replayed"))
	}
	send(`{"amount":10}`)
	send(`{"amount":10}`) // the client retries: replayed
	send(`{"amount":99}`) // same key, another request
	fmt.Println("charges:", charges)
	// Output:
	// 201 "charge 1" replayed=""
	// 201 "charge 1" replayed="true"
	// 422 application/problem+json
	// charges: 1
}
