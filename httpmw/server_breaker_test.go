package httpmw

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/breaker"
)

func srvTestBreaker(t *testing.T, opts ...breaker.Option) *breaker.Breaker {
	t.Helper()
	base := []breaker.Option{
		breaker.WithConsecutiveFailures(2), breaker.WithJitter(0),
		breaker.WithOpenDuration(10 * time.Second), breaker.WithRegisterer(prometheus.NewPedanticRegistry()),
	}
	return breaker.New("httpmw-test", append(base, opts...)...)
}

func TestBreakerOpensOn5xx(t *testing.T) {
	b := srvTestBreaker(t)
	var calls int
	var mu sync.Mutex
	h := Breaker(b)(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		calls++
		mu.Unlock()
		http.Error(w, "db: connection refused to 10.0.0.7:5432", http.StatusInternalServerError)
	}))
	url, c := srvTestServer(t, h)

	for range 2 {
		resp, _ := srvDo(t, c, http.MethodGet, url, "", nil)
		require.Equal(t, http.StatusInternalServerError, resp.StatusCode)
	}
	require.Equal(t, breaker.Open, b.State())

	resp, body := srvDo(t, c, http.MethodGet, url, "", nil)
	srvRequireProblem(t, resp, body, http.StatusServiceUnavailable, TypeCircuitOpen, "breaker:", "httpmw-test", "10.0.0.7")
	require.Equal(t, "10", resp.Header.Get("Retry-After"))
	mu.Lock()
	require.Equal(t, 2, calls, "an open breaker does not call the handler")
	mu.Unlock()
}

func TestBreakerClassifiesStatus(t *testing.T) {
	tests := []struct {
		name       string
		status     int // 0: the handler writes nothing
		write      bool
		classifier func(int) breaker.Outcome
		failures   int64
		calls      int64
	}{
		{name: "nothing written is 200", status: 0, calls: 1},
		{name: "implicit 200 on Write", status: 0, write: true, calls: 1},
		{name: "404 is a success", status: 404, calls: 1},
		{name: "500 is a failure", status: 500, calls: 1, failures: 1},
		{name: "503 is a failure", status: 503, write: true, calls: 1, failures: 1},
		{name: "custom: 429 is a failure", status: 429, calls: 1, failures: 1,
			classifier: func(s int) breaker.Outcome {
				if s == 429 {
					return breaker.Failure
				}
				return breaker.Success
			}},
		{name: "custom: ignored", status: 500, calls: 0,
			classifier: func(int) breaker.Outcome { return breaker.Ignored }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := srvTestBreaker(t, breaker.WithConsecutiveFailures(100))
			h := Breaker(b, WithStatusClassifier(tt.classifier))(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(http.StatusEarlyHints) // informational: not the final status
				if tt.status != 0 {
					w.WriteHeader(tt.status)
				}
				if tt.write {
					_, _ = w.Write([]byte("x"))
				}
			}))
			h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
			cnt := b.Counts()
			require.Equal(t, tt.calls, cnt.Calls)
			require.Equal(t, tt.failures, cnt.Failures)
		})
	}
}

func TestBreakerPanicIsFailureAndContinues(t *testing.T) {
	for _, v := range []any{"boom", http.ErrAbortHandler, errors.New("x")} {
		b := srvTestBreaker(t, breaker.WithConsecutiveFailures(100))
		h := Breaker(b)(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic(v) }))
		var got any
		func() {
			defer func() { got = recover() }()
			h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
		}()
		require.Equal(t, v, got, "the same value is raised again")
		require.Equal(t, int64(1), b.Counts().Failures)
	}
}

func TestBreakerPanicOverLoopback(t *testing.T) {
	b := srvTestBreaker(t)
	recovered := make(chan any, 2)
	recoverer := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() {
				if v := recover(); v != nil {
					recovered <- v
					http.Error(w, "recovered", http.StatusInternalServerError)
				}
			}()
			next.ServeHTTP(w, r)
		})
	}
	h := Chain(recoverer, Breaker(b))(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("kaboom") }))
	url, c := srvTestServer(t, h)
	for range 2 {
		resp, _ := srvDo(t, c, http.MethodGet, url, "", nil)
		require.Equal(t, http.StatusInternalServerError, resp.StatusCode)
		require.Equal(t, "kaboom", <-recovered)
	}
	require.Equal(t, breaker.Open, b.State(), "panics count as failures")
	resp, body := srvDo(t, c, http.MethodGet, url, "", nil)
	srvRequireProblem(t, resp, body, http.StatusServiceUnavailable, TypeCircuitOpen, "kaboom")
}

func TestBreakerIgnoresClientGone(t *testing.T) {
	b := srvTestBreaker(t)
	ctx, cancel := context.WithCancel(context.Background())
	h := Breaker(b)(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		cancel() // the client hangs up while the handler runs
		w.WriteHeader(http.StatusInternalServerError)
	}))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequestWithContext(ctx, http.MethodGet, "/", nil))
	require.Zero(t, b.Counts().Calls)

	ctx2, cancel2 := context.WithCancel(context.Background())
	hp := Breaker(b)(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		cancel2()
		panic(http.ErrAbortHandler)
	}))
	require.PanicsWithValue(t, http.ErrAbortHandler, func() {
		hp.ServeHTTP(httptest.NewRecorder(), httptest.NewRequestWithContext(ctx2, http.MethodGet, "/", nil))
	})
	require.Zero(t, b.Counts().Calls, "an abort after the client left says nothing about health")
}

func TestBreakerIgnoresInnerRejection(t *testing.T) {
	b := srvTestBreaker(t)
	h := Chain(Breaker(b), Bulkhead(srvFullBulkhead(t)))(http.HandlerFunc(srvOK))
	for range 3 {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
		require.Equal(t, http.StatusServiceUnavailable, rec.Code)
	}
	require.Equal(t, breaker.Closed, b.State())
	require.Zero(t, b.Counts().Calls)

	// Also through someone else's wrapper that implements Unwrap.
	foreign := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(&srvForeignWriter{w}, r)
		})
	}
	h = Chain(Breaker(b), foreign, Bulkhead(srvFullBulkhead(t)))(http.HandlerFunc(srvOK))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	require.Equal(t, http.StatusServiceUnavailable, rec.Code)
	require.Zero(t, b.Counts().Calls)
}

type srvForeignWriter struct{ http.ResponseWriter }

func (f *srvForeignWriter) Unwrap() http.ResponseWriter { return f.ResponseWriter }

func TestBreakerRetryAfterAtLeastOneSecond(t *testing.T) {
	b := srvTestBreaker(t)
	b.ForceOpen() // no hint: the breaker does not know when it will close
	rec := httptest.NewRecorder()
	Breaker(b)(http.HandlerFunc(srvOK)).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	require.Equal(t, http.StatusServiceUnavailable, rec.Code)
	require.Equal(t, "1", rec.Header().Get("Retry-After"))
}

func TestBreakerNilPanics(t *testing.T) {
	require.PanicsWithValue(t, "httpmw: Breaker needs a *breaker.Breaker", func() { Breaker(nil) })
}
