package httpmw

import (
	"context"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/ratelimit"
	"github.com/bulwark-go/bulwark/retry"
)

// trCall is what the scripted upstream saw of one request.
type trCall struct {
	method, key, body string
}

// trStep is the upstream's answer to one request.
type trStep func(w http.ResponseWriter, r *http.Request)

// trUpstream is a real loopback HTTP server that answers requests with a
// script, one step per request (the last step repeats), records what it saw
// and counts the TCP connections clients opened.
type trUpstream struct {
	srv      *httptest.Server
	newConns atomic.Int64
	mu       sync.Mutex
	calls    []trCall
	steps    []trStep
}

func trNewUpstream(t *testing.T, steps ...trStep) *trUpstream {
	t.Helper()
	u := &trUpstream{steps: steps}
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(u.serve))
	u.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			u.newConns.Add(1)
		}
	}
	u.srv.Start()
	t.Cleanup(u.srv.Close)
	return u
}

func (u *trUpstream) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	u.mu.Lock()
	i := len(u.calls)
	u.calls = append(u.calls, trCall{method: r.Method, key: r.Header.Get(IdempotencyKeyHeader), body: string(body)})
	step := u.steps[min(i, len(u.steps)-1)]
	u.mu.Unlock()
	step(w, r)
}

func (u *trUpstream) seen() []trCall {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]trCall(nil), u.calls...)
}

// client returns an http.Client whose Transport wraps the server's own
// client transport (closed with the server) in a Transport.
func (u *trUpstream) client(opts ...TransportOption) *http.Client {
	return &http.Client{Transport: NewTransport(u.srv.Client().Transport, opts...)}
}

func trStatus(code int, body string, header ...string) trStep {
	return func(w http.ResponseWriter, _ *http.Request) {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		w.WriteHeader(code)
		_, _ = io.WriteString(w, body)
	}
}

// trReset drops the connection without an answer, after the request was
// read: the client sees a connection error.
func trReset(w http.ResponseWriter, _ *http.Request) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(err)
	}
	_ = conn.Close()
}

// trRecorder collects the retry policy's OnRetry calls.
type trRecorder struct {
	mu     sync.Mutex
	delays []time.Duration
	errs   []error
}

func (r *trRecorder) onRetry(_ int, err error, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.delays = append(r.delays, d)
	r.errs = append(r.errs, err)
}

func (r *trRecorder) get() ([]time.Duration, []error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Duration(nil), r.delays...), append([]error(nil), r.errs...)
}

// trPolicy is a retry policy on a fake clock with a constant 100 ms backoff,
// no budget and the given number of attempts.
func trPolicy(clk clock.Clock, attempts int, rec *trRecorder, opts ...retry.Option) *retry.Policy {
	base := []retry.Option{
		retry.WithClock(clk),
		retry.WithBudget(nil),
		retry.WithMaxAttempts(attempts),
		retry.WithBackOff(func() backoff.BackOff { return backoff.NewConstantBackOff(100 * time.Millisecond) }),
	}
	if rec != nil {
		base = append(base, retry.WithOnRetry(rec.onRetry))
	}
	return retry.New("httpmw_transport_test", append(base, opts...)...)
}

type trResult struct {
	resp *http.Response
	body string
	err  error
}

// trStart sends req on its own goroutine and returns where the result
// arrives, with the response body read in full.
func trStart(c *http.Client, req *http.Request) <-chan trResult {
	ch := make(chan trResult, 1)
	go func() {
		resp, err := c.Do(req)
		res := trResult{resp: resp, err: err}
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			res.body = string(b)
			if rerr != nil {
				res.err = rerr
			}
		}
		ch <- res
	}()
	return ch
}

// trAdvanceExactly waits for the retry's timer and moves the fake clock by
// exactly d, checking that the timer does not fire a moment earlier.
func trAdvanceExactly(t *testing.T, clk *clock.Fake, d time.Duration) {
	t.Helper()
	clk.WaitForTimers(1)
	require.Equal(t, 1, clk.Pending())
	clk.Advance(d - time.Millisecond)
	require.Equal(t, 1, clk.Pending(), "the wait ended before %v", d)
	before := clk.Created()
	clk.Advance(time.Millisecond)
	// The timer fired. The next attempt may already be waiting on a new
	// one: only timers made since may be pending (Pending read first).
	pending := clk.Pending()
	require.LessOrEqual(t, pending, clk.Created()-before, "the wait did not end at %v", d)
}

func TestTransportScriptedUpstream(t *testing.T) {
	t.Parallel()
	const date = "Thu, 01 Jan 2026 12:00:00 GMT"
	tests := []struct {
		name       string
		method     string
		steps      []trStep
		attempts   int
		opts       []TransportOption
		waits      []time.Duration
		wantStatus int
		wantBody   string
		wantCalls  int
	}{
		{
			name:       "503 twice then 200",
			steps:      []trStep{trStatus(503, "down"), trStatus(503, "down"), trStatus(200, "ok")},
			attempts:   3,
			waits:      []time.Duration{100 * time.Millisecond, 100 * time.Millisecond},
			wantStatus: 200, wantBody: "ok", wantCalls: 3,
		},
		{
			name:       "429 with Retry-After in seconds",
			steps:      []trStep{trStatus(429, "slow down", "Retry-After", "3"), trStatus(200, "ok")},
			attempts:   3,
			waits:      []time.Duration{3 * time.Second},
			wantStatus: 200, wantBody: "ok", wantCalls: 2,
		},
		{
			name: "429 with Retry-After as an HTTP-date, measured against Date",
			steps: []trStep{
				trStatus(429, "slow down", "Date", date, "Retry-After", "Thu, 01 Jan 2026 12:00:04 GMT"),
				trStatus(200, "ok"),
			},
			attempts:   3,
			waits:      []time.Duration{4 * time.Second},
			wantStatus: 200, wantBody: "ok", wantCalls: 2,
		},
		{
			name:       "503 with Retry-After beyond the retry policy's longest hint wait",
			steps:      []trStep{trStatus(503, "later", "Retry-After", "8"), trStatus(200, "ok")},
			attempts:   3,
			opts:       nil, // retry.WithMaxHintWait(5s) below
			wantStatus: 503, wantBody: "later", wantCalls: 1,
		},
		{
			name:       "connection reset then 200",
			steps:      []trStep{trReset, trStatus(200, "ok")},
			attempts:   3,
			waits:      []time.Duration{100 * time.Millisecond},
			wantStatus: 200, wantBody: "ok", wantCalls: 2,
		},
		{
			name:       "502 and 504 are retried",
			steps:      []trStep{trStatus(502, ""), trStatus(504, ""), trStatus(200, "ok")},
			attempts:   3,
			waits:      []time.Duration{100 * time.Millisecond, 100 * time.Millisecond},
			wantStatus: 200, wantBody: "ok", wantCalls: 3,
		},
		{
			name:       "exhausted: the last 503 reaches the caller with its body",
			steps:      []trStep{trStatus(503, "down 1"), trStatus(503, "down 2"), trStatus(503, "down 3")},
			attempts:   3,
			waits:      []time.Duration{100 * time.Millisecond, 100 * time.Millisecond},
			wantStatus: 503, wantBody: "down 3", wantCalls: 3,
		},
		{
			name:       "Retry-After beyond WithMaxRetryAfter is not waited for",
			steps:      []trStep{trStatus(503, "come back tomorrow", "Retry-After", "86400"), trStatus(200, "ok")},
			attempts:   3,
			wantStatus: 503, wantBody: "come back tomorrow", wantCalls: 1,
		},
		{
			name:       "WithMaxRetryAfter(0) leaves the limit to the retry policy, which stops likewise",
			steps:      []trStep{trStatus(503, "tomorrow", "Retry-After", "86400"), trStatus(200, "ok")},
			attempts:   3,
			opts:       []TransportOption{WithMaxRetryAfter(0)},
			wantStatus: 503, wantBody: "tomorrow", wantCalls: 1,
		},
		{
			name:       "Retry-After date beyond the cap is not waited for",
			steps:      []trStep{trStatus(429, "later", "Date", date, "Retry-After", "Fri, 02 Jan 2026 12:00:00 GMT"), trStatus(200, "ok")},
			attempts:   3,
			wantStatus: 429, wantBody: "later", wantCalls: 1,
		},
		{
			name:       "500 is not retryable",
			steps:      []trStep{trStatus(500, "bug"), trStatus(200, "ok")},
			attempts:   3,
			wantStatus: 500, wantBody: "bug", wantCalls: 1,
		},
		{
			name:       "WithRetryableStatus replaces the set",
			steps:      []trStep{trStatus(500, "bug"), trStatus(503, "down"), trStatus(200, "ok")},
			attempts:   3,
			opts:       []TransportOption{WithRetryableStatus(500)},
			waits:      []time.Duration{100 * time.Millisecond},
			wantStatus: 503, wantBody: "down", wantCalls: 2,
		},
		{
			name:       "POST without a key is not retried when automatic keys are off",
			method:     http.MethodPost,
			steps:      []trStep{trStatus(503, "down"), trStatus(200, "ok")},
			attempts:   3,
			opts:       []TransportOption{WithIdempotencyKeys(nil)},
			wantStatus: 503, wantBody: "down", wantCalls: 1,
		},
		{
			name:       "POST gets a key and is retried",
			method:     http.MethodPost,
			steps:      []trStep{trStatus(503, "down"), trStatus(200, "ok")},
			attempts:   3,
			waits:      []time.Duration{100 * time.Millisecond},
			wantStatus: 200, wantBody: "ok", wantCalls: 2,
		},
		{
			name:       "one attempt allowed",
			steps:      []trStep{trStatus(503, "down"), trStatus(200, "ok")},
			attempts:   1,
			wantStatus: 503, wantBody: "down", wantCalls: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			u := trNewUpstream(t, tt.steps...)
			clk := clock.NewFake(time.Time{})
			rec := &trRecorder{}
			p := trPolicy(clk, tt.attempts, rec, retry.WithMaxHintWait(5*time.Second))
			c := u.client(append([]TransportOption{WithRetry(p)}, tt.opts...)...)
			method := tt.method
			if method == "" {
				method = http.MethodGet
			}
			req, err := http.NewRequest(method, u.srv.URL+"/x", strings.NewReader("payload"))
			require.NoError(t, err)
			done := trStart(c, req)
			for _, d := range tt.waits {
				trAdvanceExactly(t, clk, d)
			}
			res := <-done
			require.NoError(t, res.err)
			require.Equal(t, tt.wantStatus, res.resp.StatusCode)
			require.Equal(t, tt.wantBody, res.body)
			calls := u.seen()
			require.Len(t, calls, tt.wantCalls)
			for _, call := range calls {
				require.Equal(t, "payload", call.body, "every attempt sends the whole body")
			}
			delays, _ := rec.get()
			if len(tt.waits) == 0 {
				require.Empty(t, delays)
			} else {
				require.Equal(t, tt.waits, delays)
			}
			require.Zero(t, clk.Pending())
		})
	}
}

func TestTransportStatusErrorSeenByRetryHooks(t *testing.T) {
	t.Parallel()
	u := trNewUpstream(t, trStatus(429, "", "Retry-After", "2"), trStatus(200, "ok"))
	clk := clock.NewFake(time.Time{})
	rec := &trRecorder{}
	c := u.client(WithRetry(trPolicy(clk, 2, rec)))
	req, _ := http.NewRequest(http.MethodGet, u.srv.URL, nil)
	done := trStart(c, req)
	trAdvanceExactly(t, clk, 2*time.Second)
	res := <-done
	require.NoError(t, res.err)
	_, errs := rec.get()
	require.Len(t, errs, 1)
	se, ok := errs[0].(*StatusError)
	require.True(t, ok, "%T", errs[0])
	require.Equal(t, 429, se.StatusCode)
	require.Equal(t, 2*time.Second, se.RetryAfter)
	require.Equal(t, "httpmw: upstream answered 429 Too Many Requests", se.Error())
}

func TestTransportReusesConnections(t *testing.T) {
	t.Parallel()
	// Error pages of a few bytes and of 40 KiB: both are drained, so every
	// retry and every later request runs on the one connection.
	big := strings.Repeat("x", 40<<10)
	for _, body := range []string{"unavailable", big} {
		t.Run(strconv.Itoa(len(body)), func(t *testing.T) {
			t.Parallel()
			var n atomic.Int64
			u := trNewUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				if n.Add(1)%3 != 0 {
					trStatus(503, body)(w, r)
					return
				}
				trStatus(200, "ok")(w, r)
			})
			clk := clock.NewFake(time.Time{})
			c := u.client(WithRetry(trPolicy(clk, 3, nil)))
			for range 4 {
				req, _ := http.NewRequest(http.MethodGet, u.srv.URL, nil)
				done := trStart(c, req)
				trAdvanceExactly(t, clk, 100*time.Millisecond)
				trAdvanceExactly(t, clk, 100*time.Millisecond)
				res := <-done
				require.NoError(t, res.err)
				require.Equal(t, 200, res.resp.StatusCode)
			}
			require.Len(t, u.seen(), 12)
			require.EqualValues(t, 1, u.newConns.Load(), "retries must reuse the connection")
		})
	}
}

func TestTransportCallerCancelStopsRetrying(t *testing.T) {
	t.Parallel()
	u := trNewUpstream(t, trStatus(503, "down", "Retry-After", "5"))
	clk := clock.NewFake(time.Time{})
	c := u.client(WithRetry(trPolicy(clk, 5, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u.srv.URL, nil)
	done := trStart(c, req)
	clk.WaitForTimers(1) // the first attempt failed; the transport waits 5 s
	cancel()
	res := <-done
	require.ErrorIs(t, res.err, context.Canceled)
	var re *retry.Error
	require.ErrorAs(t, res.err, &re)
	require.Equal(t, retry.Canceled, re.Reason)
	require.Equal(t, 1, re.Attempts)
	var se *StatusError
	require.ErrorAs(t, res.err, &se, "the last attempt's status is in the error")
	require.Equal(t, 503, se.StatusCode)
	require.Len(t, u.seen(), 1)
}

func TestTransportCanceledContextIsNotRetried(t *testing.T) {
	t.Parallel()
	started := make(chan struct{}, 1)
	u := trNewUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-r.Context().Done() // the client hung up
	})
	clk := clock.NewFake(time.Time{})
	c := u.client(WithRetry(trPolicy(clk, 5, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u.srv.URL, nil)
	done := trStart(c, req)
	<-started
	cancel()
	res := <-done
	require.ErrorIs(t, res.err, context.Canceled)
	require.Len(t, u.seen(), 1)
	require.Zero(t, clk.Created(), "no wait was even started")
}

// trDropFirstResponse runs next for every request, but for the first one it
// throws the response away after the handler ran and drops the connection:
// the client's request took effect and the client never hears of it.
func trDropFirstResponse(next http.Handler) http.Handler {
	var dropped atomic.Bool
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if dropped.Swap(true) {
			next.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(httptest.NewRecorder(), r)
		trReset(w, r)
	})
}

func TestTransportExactlyOncePOST(t *testing.T) {
	t.Parallel()
	// One body with GetBody (http.NewRequest sets it for a strings.Reader)
	// and one without, which the transport buffers to replay.
	bodies := map[string]func() io.Reader{
		"GetBody":  func() io.Reader { return strings.NewReader(`{"amount":42}`) },
		"buffered": func() io.Reader { return io.MultiReader(strings.NewReader(`{"amount":42}`)) },
	}
	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var (
				mu     sync.Mutex
				ledger []string // one entry per effect
				keys   []string // the key of every request that reached the handler chain
			)
			effect := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				mu.Lock()
				ledger = append(ledger, string(b))
				mu.Unlock()
				w.WriteHeader(http.StatusCreated)
				_, _ = io.WriteString(w, "charged")
			})
			g := idempotency.New("httpmw_transport_test", idempotency.NewMemoryStore(idempotency.MemoryConfig{}))
			h := trDropFirstResponse(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				keys = append(keys, r.Header.Get(IdempotencyKeyHeader))
				mu.Unlock()
				Idempotency(g, WithoutScope())(effect).ServeHTTP(w, r)
			}))
			srv := httptest.NewServer(h)
			t.Cleanup(srv.Close)

			clk := clock.NewFake(time.Time{})
			c := &http.Client{Transport: NewTransport(srv.Client().Transport, WithRetry(trPolicy(clk, 3, nil)))}
			req, err := http.NewRequest(http.MethodPost, srv.URL+"/charges", body())
			require.NoError(t, err)
			require.Equal(t, name == "GetBody", req.GetBody != nil)
			done := trStart(c, req)
			trAdvanceExactly(t, clk, 100*time.Millisecond)
			res := <-done
			require.NoError(t, res.err)
			require.Equal(t, http.StatusCreated, res.resp.StatusCode)
			require.Equal(t, "charged", res.body)
			require.Equal(t, "true", res.resp.Header.Get("Idempotent-Replayed"), "the second attempt got the stored response")

			mu.Lock()
			defer mu.Unlock()
			require.Equal(t, []string{`{"amount":42}`}, ledger, "the effect happened exactly once")
			require.Len(t, keys, 2)
			require.Equal(t, keys[0], keys[1], "the key is the same on every attempt")
			require.Regexp(t, `^"[A-Z2-7]{26}"$`, keys[0], "a structured-field string of 128 random bits")
			require.Empty(t, req.Header.Get(IdempotencyKeyHeader), "the caller's request is not modified")
		})
	}
}

func TestTransportKeepsCallersIdempotencyKey(t *testing.T) {
	t.Parallel()
	u := trNewUpstream(t, trStatus(503, ""), trStatus(200, "ok"))
	clk := clock.NewFake(time.Time{})
	generated := 0
	c := u.client(WithRetry(trPolicy(clk, 3, nil)), WithIdempotencyKeys(func() string { generated++; return `"mine"` }))
	for _, key := range []string{`"callers-key"`, ""} {
		req, _ := http.NewRequest(http.MethodPatch, u.srv.URL, strings.NewReader("p"))
		if key != "" {
			req.Header.Set(IdempotencyKeyHeader, key)
		}
		done := trStart(c, req)
		if key != "" {
			trAdvanceExactly(t, clk, 100*time.Millisecond)
		}
		res := <-done
		require.NoError(t, res.err)
	}
	calls := u.seen()
	require.Len(t, calls, 3)
	require.Equal(t, `"callers-key"`, calls[0].key)
	require.Equal(t, `"callers-key"`, calls[1].key)
	require.Equal(t, `"mine"`, calls[2].key, "a custom generator's value is sent as is")
	require.Equal(t, 1, generated, "a key is generated only for a request without one")
}

func TestTransportBodyReadableAfterReturnWithAttemptTimeout(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	u := trNewUpstream(t,
		trStatus(503, "down"),
		func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(200)
			_, _ = io.WriteString(w, "first half, ")
			_ = http.NewResponseController(w).Flush()
			<-gate // the rest comes after RoundTrip has returned
			_, _ = io.WriteString(w, "second half")
		})
	clk := clock.NewFake(time.Time{})
	// A generous attempt timeout: the point is that returning the response
	// must not cancel the attempt's context, as a deferred cancel would.
	c := u.client(WithRetry(trPolicy(clk, 3, nil, retry.WithAttemptTimeout(time.Minute))))
	req, _ := http.NewRequest(http.MethodGet, u.srv.URL, nil)
	type out struct {
		resp *http.Response
		err  error
	}
	ch := make(chan out, 1)
	go func() {
		resp, err := c.Do(req)
		ch <- out{resp, err}
	}()
	trAdvanceExactly(t, clk, 100*time.Millisecond)
	o := <-ch
	require.NoError(t, o.err)
	close(gate)
	b, err := io.ReadAll(o.resp.Body)
	require.NoError(t, err)
	require.Equal(t, "first half, second half", string(b))
	require.NoError(t, o.resp.Body.Close())
	require.EqualValues(t, 1, u.newConns.Load())
}

func TestTransportAttemptTimeoutRetriesSlowUpstream(t *testing.T) {
	t.Parallel()
	u := trNewUpstream(t,
		func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }, // hangs until the client gives up
		trStatus(200, "ok"))
	clk := clock.NewFake(time.Time{})
	rec := &trRecorder{}
	// The attempt timeout runs on the real clock (a context deadline).
	c := u.client(WithRetry(trPolicy(clk, 3, rec, retry.WithAttemptTimeout(50*time.Millisecond))))
	req, _ := http.NewRequest(http.MethodGet, u.srv.URL, nil)
	done := trStart(c, req)
	trAdvanceExactly(t, clk, 100*time.Millisecond)
	res := <-done
	require.NoError(t, res.err)
	require.Equal(t, "ok", res.body)
	_, errs := rec.get()
	require.Len(t, errs, 1)
	require.ErrorIs(t, errs[0], context.DeadlineExceeded)
	require.Len(t, u.seen(), 2)
}

// trRT is an in-memory base RoundTripper.
type trRT func(*http.Request) (*http.Response, error)

func (f trRT) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func trResponse(r *http.Request, code int, body string) *http.Response {
	return &http.Response{
		StatusCode: code, Status: strconv.Itoa(code) + " " + http.StatusText(code),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{}, Body: io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)), Request: r,
	}
}

func TestTransportBreakerOpensAndRejectsFast(t *testing.T) {
	t.Parallel()
	u := trNewUpstream(t, trStatus(500, "bug"), trStatus(500, "bug"), trStatus(500, "bug"), trStatus(200, "ok"))
	clk := clock.NewFake(time.Time{})
	var hosts []string
	newBreaker := func(host string) *breaker.Breaker {
		hosts = append(hosts, host)
		return breaker.New("upstream", breaker.WithConsecutiveFailures(3), breaker.WithOpenDuration(30*time.Second),
			breaker.WithJitter(0), breaker.WithHalfOpen(1, 1), breaker.WithClock(clk))
	}
	rec := &trRecorder{}
	c := u.client(WithRetry(trPolicy(clk, 3, rec)), WithBreakers(newBreaker, 0))
	get := func() trResult {
		req, _ := http.NewRequest(http.MethodGet, u.srv.URL+"/x", nil)
		return <-trStart(c, req)
	}
	for range 3 {
		res := get()
		require.NoError(t, res.err)
		require.Equal(t, 500, res.resp.StatusCode)
	}
	// Open: rejected without reaching the upstream, and not retried, since
	// the breaker's 30 s exceed the 10 s WithMaxRetryAfter.
	res := get()
	require.ErrorIs(t, res.err, breaker.ErrOpen)
	var re *retry.Error
	require.ErrorAs(t, res.err, &re)
	require.Equal(t, 1, re.Attempts)
	require.Len(t, u.seen(), 3)
	require.Equal(t, []string{"http://" + u.srv.Listener.Addr().String()}, hosts, "one breaker for the host, named scheme://host:port")
	delays, _ := rec.get()
	require.Empty(t, delays)

	// Within the cap, the breaker's hint paces the retry: the attempt waits
	// for the half-open probe instead of failing.
	clk.Advance(25 * time.Second)
	done := trStart(c, func() *http.Request { r, _ := http.NewRequest(http.MethodGet, u.srv.URL+"/x", nil); return r }())
	trAdvanceExactly(t, clk, 5*time.Second)
	res = <-done
	require.NoError(t, res.err)
	require.Equal(t, "ok", res.body)
	require.Len(t, u.seen(), 4)
}

func TestTransportBreakerWithoutRetry(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	status := 500
	base := trRT(func(r *http.Request) (*http.Response, error) {
		calls.Add(1)
		return trResponse(r, status, ""), nil
	})
	b := breaker.New("x", breaker.WithConsecutiveFailures(2), breaker.WithClock(clock.NewFake(time.Time{})))
	tr := NewTransport(base, WithBreakers(func(string) *breaker.Breaker { return b }, 0))
	send := func() (*http.Response, error) {
		req, _ := http.NewRequest(http.MethodGet, "http://upstream.test/", nil)
		return tr.RoundTrip(req)
	}
	// 429 is ignored: it never opens the breaker.
	status = 429
	for range 5 {
		resp, err := send()
		require.NoError(t, err)
		require.Equal(t, 429, resp.StatusCode)
	}
	require.Equal(t, breaker.Closed, b.State())
	status = 503
	for range 2 {
		_, err := send()
		require.NoError(t, err)
	}
	require.Equal(t, breaker.Open, b.State())
	_, err := send()
	require.ErrorIs(t, err, breaker.ErrOpen)
	require.EqualValues(t, 7, calls.Load())
}

func TestTransportBreakerSetIsBounded(t *testing.T) {
	t.Parallel()
	base := trRT(func(r *http.Request) (*http.Response, error) { return trResponse(r, 200, ""), nil })
	var mu sync.Mutex
	made := map[string]int{}
	tr := NewTransport(base, WithBreakers(func(host string) *breaker.Breaker {
		mu.Lock()
		made[host]++
		mu.Unlock()
		return breaker.New("b")
	}, 2))
	urls := []string{
		"http://a.test/", "http://A.TEST:80/x", "https://a.test/", "https://a.test:443/y",
		"http://[::1]:8080/", "http://c.test/",
	}
	var wg sync.WaitGroup
	for range 8 { // many goroutines meet each new host at once
		for _, u := range urls {
			wg.Go(func() {
				req, _ := http.NewRequest(http.MethodGet, u, nil)
				resp, err := tr.RoundTrip(req)
				if err == nil {
					_ = resp.Body.Close()
				}
			})
		}
	}
	wg.Wait()
	require.Equal(t, 2, tr.breakers.len(), "at most maxHosts breakers")
	for k := range *tr.breakers.hosts.Load() {
		require.Contains(t, []string{"http://a.test:80", "https://a.test:443", "http://[::1]:8080", "http://c.test:80"}, k.String())
	}
	require.Nil(t, tr.breakers.get(&url.URL{Scheme: "http", Host: "overflow.test"}), "hosts beyond the bound have no breaker")
	require.Equal(t, trHostKeyOf(&url.URL{Scheme: "HTTP", Host: "A.test"}), trHostKeyOf(&url.URL{Scheme: "http", Host: "a.test:80"}))
}

func TestTransportBulkheadSlotHeldUntilBodyDone(t *testing.T) {
	t.Parallel()
	base := trRT(func(r *http.Request) (*http.Response, error) { return trResponse(r, 200, "body"), nil })
	bh := bulkhead.New("client", bulkhead.WithLimit(1))
	tr := NewTransport(base, WithBulkhead(bh))
	send := func() (*http.Response, error) {
		req, _ := http.NewRequest(http.MethodGet, "http://upstream.test/", nil)
		return tr.RoundTrip(req)
	}
	resp, err := send()
	require.NoError(t, err)
	require.Equal(t, 1, bh.InFlight(), "the body is not read yet: the slot is held")
	_, err = send()
	require.ErrorIs(t, err, bulkhead.ErrFull)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, 0, bh.InFlight())
	require.NoError(t, resp.Body.Close(), "a second Close releases nothing more")
	require.Equal(t, 0, bh.InFlight())

	resp, err = send()
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, "body", string(b))
	require.Equal(t, 0, bh.InFlight(), "reading to the end releases the slot")
	require.NoError(t, resp.Body.Close())
	require.Equal(t, 0, bh.InFlight())

	// A base error releases the slot at once.
	tr = NewTransport(trRT(func(*http.Request) (*http.Response, error) { return nil, io.ErrUnexpectedEOF }), WithBulkhead(bh))
	req, _ := http.NewRequest(http.MethodGet, "http://upstream.test/", nil)
	_, err = tr.RoundTrip(req)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	require.Equal(t, 0, bh.InFlight())
}

func TestTransportRateLimitWaitsPerAttempt(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(time.Time{})
	var sent atomic.Int64
	base := trRT(func(r *http.Request) (*http.Response, error) {
		if sent.Add(1) == 1 {
			return trResponse(r, 503, ""), nil
		}
		return trResponse(r, 200, ""), nil
	})
	lim := ratelimit.NewLocal("client", rate.Every(time.Second), 1, ratelimit.WithClock(clk))
	var keys []string
	retryClk := clock.NewFake(time.Time{})
	tr := NewTransport(base, WithRetry(trPolicy(retryClk, 3, nil)), WithRateLimit(lim, func(r *http.Request) string {
		keys = append(keys, r.URL.Host)
		return r.URL.Host
	}))
	req, _ := http.NewRequest(http.MethodGet, "http://upstream.test/", nil)
	done := make(chan error, 1)
	go func() {
		resp, err := tr.RoundTrip(req)
		if err == nil {
			_ = resp.Body.Close()
		}
		done <- err
	}()
	// The first attempt takes the only token; after the retry's wait the
	// second attempt waits a second for the next one.
	trAdvanceExactly(t, retryClk, 100*time.Millisecond)
	clk.WaitForTimers(1)
	require.EqualValues(t, 1, sent.Load())
	clk.Advance(time.Second)
	require.NoError(t, <-done)
	require.EqualValues(t, 2, sent.Load())
	require.Equal(t, []string{"upstream.test", "upstream.test"}, keys)

	// The caller's context ends the wait and the request.
	ctx, cancel := context.WithCancel(context.Background())
	body := &trCloseCounter{Reader: strings.NewReader("x")}
	req, _ = http.NewRequestWithContext(ctx, http.MethodPut, "http://upstream.test/", body)
	go func() { _, err := tr.RoundTrip(req); done <- err }()
	clk.WaitForTimers(1)
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	require.EqualValues(t, 2, sent.Load())
	require.EqualValues(t, 1, body.closed.Load(), "the request body is closed even though it was never sent")
}

type trCloseCounter struct {
	io.Reader
	closed atomic.Int64
}

func (c *trCloseCounter) Close() error { c.closed.Add(1); return nil }

func TestTransportNeverModifiesCallersRequest(t *testing.T) {
	t.Parallel()
	var (
		mu   sync.Mutex
		seen []*http.Request
	)
	base := trRT(func(r *http.Request) (*http.Response, error) {
		b, _ := io.ReadAll(r.Body)
		_ = r.Body.Close()
		mu.Lock()
		seen = append(seen, r)
		n := len(seen)
		mu.Unlock()
		if string(b) != "payload" {
			return nil, io.ErrUnexpectedEOF
		}
		if n == 1 {
			return trResponse(r, 503, "down"), nil
		}
		return trResponse(r, 200, "ok"), nil
	})
	clk := clock.NewFake(time.Time{})
	tr := NewTransport(base, WithRetry(trPolicy(clk, 3, nil, retry.WithAttemptTimeout(time.Hour))))
	ctx := context.Background()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://upstream.test/", strings.NewReader("payload"))
	req.Header.Set("X-Caller", "1")
	type out struct {
		resp *http.Response
		err  error
	}
	ch := make(chan out, 1)
	go func() { resp, err := tr.RoundTrip(req); ch <- out{resp, err} }()
	trAdvanceExactly(t, clk, 100*time.Millisecond)
	o := <-ch
	require.NoError(t, o.err)

	require.Equal(t, http.Header{"X-Caller": {"1"}}, req.Header)
	require.Equal(t, ctx, req.Context())
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, seen, 2)
	for _, r := range seen {
		require.NotSame(t, req, r)
		require.Equal(t, "1", r.Header.Get("X-Caller"))
		require.NotEmpty(t, r.Header.Get(IdempotencyKeyHeader))
	}
	require.Equal(t, seen[0].Header.Get(IdempotencyKeyHeader), seen[1].Header.Get(IdempotencyKeyHeader))
	require.ErrorIs(t, seen[0].Context().Err(), context.Canceled, "the discarded attempt's context is released")
	require.NoError(t, seen[1].Context().Err(), "the returned response's attempt context lives until Close")
	require.NoError(t, o.resp.Body.Close())
	require.ErrorIs(t, seen[1].Context().Err(), context.Canceled, "and is released by Close")
}

func TestTransportFirstAttemptSendsRequestAsIs(t *testing.T) {
	t.Parallel()
	var got *http.Request
	base := trRT(func(r *http.Request) (*http.Response, error) { got = r; return trResponse(r, 200, ""), nil })
	b := breaker.New("x")
	tr := NewTransport(base, WithRetry(trPolicy(clock.NewFake(time.Time{}), 3, nil)), WithBreakers(func(string) *breaker.Breaker { return b }, 0))
	req, _ := http.NewRequest(http.MethodGet, "http://upstream.test/", nil)
	resp, err := tr.RoundTrip(req)
	require.NoError(t, err)
	require.Same(t, req, got, "nothing to change: no copy")
	_, wrapped := resp.Body.(*trBody)
	require.False(t, wrapped, "nothing to release: the body is not wrapped")
}

func TestTransportLongBodyWithoutGetBodyIsSentOnce(t *testing.T) {
	t.Parallel()
	u := trNewUpstream(t, trStatus(503, "down"), trStatus(503, "down"), trStatus(200, "ok"))
	clk := clock.NewFake(time.Time{})
	c := u.client(WithRetry(trPolicy(clk, 3, nil)), WithMaxReplayBody(10))
	long := strings.Repeat("0123456789", 10)
	body := &trCloseCounter{Reader: strings.NewReader(long)}
	req, _ := http.NewRequest(http.MethodPut, u.srv.URL, body)
	res := <-trStart(c, req)
	require.NoError(t, res.err)
	require.Equal(t, 503, res.resp.StatusCode, "not retried")
	require.Equal(t, []trCall{{method: http.MethodPut, body: long}}, u.seen(), "the whole body arrives, prefix and rest")
	require.EqualValues(t, 1, body.closed.Load())

	// A short one is buffered and replayed.
	body = &trCloseCounter{Reader: strings.NewReader("short")}
	req, _ = http.NewRequest(http.MethodPut, u.srv.URL, body)
	done := trStart(c, req)
	trAdvanceExactly(t, clk, 100*time.Millisecond)
	res = <-done
	require.NoError(t, res.err)
	require.Equal(t, "ok", res.body)
	calls := u.seen()
	require.Len(t, calls, 3)
	require.Equal(t, "short", calls[1].body)
	require.Equal(t, "short", calls[2].body)
	require.EqualValues(t, 1, body.closed.Load(), "the original is closed once, after buffering")
}

// The largest limit, "always buffer", buffers and replays the body: the one
// extra byte read to tell a longer body must not overflow the limit.
func TestTransportMaxReplayBodyWithoutBound(t *testing.T) {
	t.Parallel()
	u := trNewUpstream(t, trStatus(503, "down"), trStatus(200, "ok"))
	clk := clock.NewFake(time.Time{})
	c := u.client(WithRetry(trPolicy(clk, 3, nil)), WithMaxReplayBody(math.MaxInt64))
	req, _ := http.NewRequest(http.MethodPut, u.srv.URL, io.NopCloser(strings.NewReader("payload"))) // no GetBody
	done := trStart(c, req)
	trAdvanceExactly(t, clk, 100*time.Millisecond)
	res := <-done
	require.NoError(t, res.err)
	require.Equal(t, "ok", res.body)
	require.Equal(t, []trCall{{method: http.MethodPut, body: "payload"}, {method: http.MethodPut, body: "payload"}}, u.seen())
}

func TestTransportCertificateErrorIsNotRetried(t *testing.T) {
	t.Parallel()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	t.Cleanup(srv.Close)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the failed handshakes
	var attempts atomic.Int64
	untrusting := &http.Transport{}
	t.Cleanup(untrusting.CloseIdleConnections)
	base := trRT(func(r *http.Request) (*http.Response, error) { attempts.Add(1); return untrusting.RoundTrip(r) })
	tr := NewTransport(base, WithRetry(trPolicy(clock.NewFake(time.Time{}), 3, nil)))
	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	_, err := tr.RoundTrip(req)
	var re *retry.Error
	require.ErrorAs(t, err, &re)
	require.Equal(t, retry.NotRetryable, re.Reason)
	require.EqualValues(t, 1, attempts.Load())
}

type trRWC struct {
	io.Reader
	written strings.Builder
}

func (c *trRWC) Write(p []byte) (int, error) { return c.written.Write(p) }
func (c *trRWC) Close() error                { return nil }

func TestTransportKeepsUpgradedBodyWritable(t *testing.T) {
	t.Parallel()
	rwc := &trRWC{Reader: strings.NewReader("")}
	base := trRT(func(r *http.Request) (*http.Response, error) {
		resp := trResponse(r, http.StatusSwitchingProtocols, "")
		resp.Body = rwc
		return resp, nil
	})
	tr := NewTransport(base, WithBulkhead(bulkhead.New("b")))
	req, _ := http.NewRequest(http.MethodGet, "http://upstream.test/", nil)
	resp, err := tr.RoundTrip(req)
	require.NoError(t, err)
	w, ok := resp.Body.(io.ReadWriteCloser)
	require.True(t, ok, "a 101 body stays an io.ReadWriteCloser")
	_, err = io.WriteString(w, "hello")
	require.NoError(t, err)
	require.Equal(t, "hello", rwc.written.String())
	require.NoError(t, w.Close())
}

func TestWithRetryableStatusPanicsOnNonStatus(t *testing.T) {
	t.Parallel()
	require.Panics(t, func() { WithRetryableStatus(99) })
	require.Panics(t, func() { WithRetryableStatus(600) })
}

func TestTransportHonoursServerBreakerRetryAfter(t *testing.T) {
	t.Parallel()
	srvClk := clock.NewFake(time.Time{})
	srvBreaker := breaker.New("server", breaker.WithConsecutiveFailures(2), breaker.WithOpenDuration(3*time.Second),
		breaker.WithJitter(0), breaker.WithHalfOpen(1, 1), breaker.WithClock(srvClk))
	var handled atomic.Int64
	app := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if handled.Add(1) <= 2 {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		_, _ = io.WriteString(w, "recovered")
	})
	srv := httptest.NewServer(Breaker(srvBreaker)(app))
	t.Cleanup(srv.Close)

	clk := clock.NewFake(time.Time{})
	rec := &trRecorder{}
	var cliBreaker *breaker.Breaker
	c := &http.Client{Transport: NewTransport(srv.Client().Transport,
		WithRetry(trPolicy(clk, 3, rec)),
		WithBreakers(func(string) *breaker.Breaker {
			cliBreaker = breaker.New("client", breaker.WithConsecutiveFailures(5), breaker.WithClock(clk))
			return cliBreaker
		}, 0))}
	get := func() <-chan trResult {
		req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
		return trStart(c, req)
	}
	for range 2 { // 500 is not retried; the second one opens the server's breaker
		res := <-get()
		require.NoError(t, res.err)
		require.Equal(t, 500, res.resp.StatusCode)
	}
	require.Equal(t, breaker.Open, srvBreaker.State())

	// The server's breaker answers 503 with Retry-After: 3; the client waits
	// exactly that long and its retry is the server's half-open probe.
	done := get()
	clk.WaitForTimers(1)
	srvClk.Advance(3 * time.Second)
	trAdvanceExactly(t, clk, 3*time.Second)
	res := <-done
	require.NoError(t, res.err)
	require.Equal(t, "recovered", res.body)
	delays, errs := rec.get()
	require.Equal(t, []time.Duration{3 * time.Second}, delays)
	var se *StatusError
	require.ErrorAs(t, errs[0], &se)
	require.Equal(t, http.StatusServiceUnavailable, se.StatusCode)
	require.Equal(t, breaker.Closed, srvBreaker.State())
	require.EqualValues(t, 3, handled.Load(), "the rejected request never reached the handler")
	require.Equal(t, int64(3), cliBreaker.Counts().Failures, "500, 500 and the 503 count against the client's breaker")
}

func TestTransportConcurrentFlakyUpstream(t *testing.T) {
	t.Parallel()
	// Each logical request (X-Request: id) fails twice, with 503 then 429,
	// and succeeds on its third attempt.
	var (
		mu   sync.Mutex
		seen = map[string]int{}
	)
	u := trNewUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.Header.Get("X-Request")]++
		n := seen[r.Header.Get("X-Request")]
		mu.Unlock()
		switch n {
		case 1:
			trStatus(503, "down")(w, r)
		case 2:
			trStatus(429, "slow", "Retry-After", "0")(w, r)
		default:
			trStatus(200, "ok")(w, r)
		}
	})
	// At most 8 requests in flight, and a pool that keeps 8 idle connections
	// (net/http keeps 2 by default, closing the others when they come back).
	u.srv.Client().Transport.(*http.Transport).MaxIdleConnsPerHost = 8
	bh := bulkhead.New("client", bulkhead.WithLimit(8), bulkhead.WithQueue(64), bulkhead.WithMaxWait(time.Minute))
	p := retry.New("concurrent", retry.WithBudget(nil), retry.WithMaxAttempts(3),
		retry.WithBackOff(func() backoff.BackOff { return &backoff.ZeroBackOff{} }))
	c := u.client(WithRetry(p), WithBulkhead(bh),
		WithBreakers(func(h string) *breaker.Breaker { return breaker.New(h, breaker.WithFailureRate(1, 10000)) }, 0))
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Go(func() {
			for j := range 10 {
				method := http.MethodGet
				if i%2 == 0 {
					method = http.MethodPost
				}
				req, _ := http.NewRequest(method, u.srv.URL, strings.NewReader("x"))
				req.Header.Set("X-Request", strconv.Itoa(i*100+j))
				resp, err := c.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != 200 || string(b) != "ok" {
					t.Errorf("request %d-%d: %d %q", i, j, resp.StatusCode, b)
				}
			}
		})
	}
	wg.Wait()
	require.Len(t, u.seen(), 3*320)
	require.Equal(t, 0, bh.InFlight())
	// A slot is freed when the body reaches its end, a moment before
	// net/http puts the connection back in the pool, so a few more than 8
	// connections can be dialled; without draining it would be hundreds.
	t.Logf("%d requests, %d attempts, %d connections", 320, len(u.seen()), u.newConns.Load())
	require.LessOrEqual(t, u.newConns.Load(), int64(8+32))
}

func TestTransportBuildsOneBreakerPerHost(t *testing.T) {
	var built atomic.Int64
	set := trNewBreakers(func(host string) *breaker.Breaker {
		built.Add(1)
		return breaker.New(host)
	}, 4)
	u, err := url.Parse("http://Example.com/x")
	require.NoError(t, err)
	var wg sync.WaitGroup
	got := make([]*breaker.Breaker, 64)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i] = set.get(u)
		}()
	}
	wg.Wait()
	require.EqualValues(t, 1, built.Load(), "racing requests to a new host must build its breaker once")
	for _, b := range got {
		require.Same(t, got[0], b)
	}
	require.Equal(t, "http://example.com:80", got[0].Name())
}

// TestTransportRetriesInFlightConflict: a POST whose first attempt timed out
// while the server still ran it gets, on its retry, the server's in-flight
// 409. The transport waits the second it asks for and retries again, and the
// caller gets the first request's stored result: the effect happened once.
func TestTransportRetriesInFlightConflict(t *testing.T) {
	t.Parallel()
	entered, release, stored := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var runs atomic.Int32
	effect := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		runs.Add(1)
		close(entered)
		<-release // outlives the client's first attempt
		w.Header().Set("X-Ran", "1")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, "charged")
	})
	g := idempotency.New("httpmw_transport_inflight", idempotency.NewMemoryStore(idempotency.MemoryConfig{}))
	// An error writer of the user's own, which writes no problem document:
	// the in-flight mark is a header the middleware sets whatever the writer.
	plain := WithErrorWriter(func(w http.ResponseWriter, _ *http.Request, p Problem) {
		w.WriteHeader(p.Status)
		_, _ = io.WriteString(w, p.Title)
	})
	guarded := Idempotency(g, WithoutScope(), plain)(effect)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		guarded.ServeHTTP(w, r)
		if w.Header().Get("X-Ran") != "" { // the run that stored its response is over
			close(stored)
		}
	}))
	t.Cleanup(srv.Close)
	var releaseOnce sync.Once
	free := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(free) // before srv.Close, which waits for the handler

	clk := clock.NewFake(time.Time{})
	rec := &trRecorder{}
	retrying := make(chan struct{}, 2)
	c := &http.Client{Transport: NewTransport(srv.Client().Transport,
		WithRetry(trPolicy(clk, 3, nil, retry.WithAttemptTimeout(50*time.Millisecond),
			retry.WithOnRetry(func(n int, err error, d time.Duration) {
				rec.onRetry(n, err, d)
				retrying <- struct{}{}
			}))))}
	req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("42 EUR"))
	done := trStart(c, req)
	<-entered
	<-retrying
	trAdvanceExactly(t, clk, 100*time.Millisecond) // the backoff after the timed-out attempt
	select {
	case <-retrying: // the second attempt got the 409 and waits
	case res := <-done:
		require.NoError(t, res.err)
		t.Fatalf("the in-flight answer was not retried: the caller got %d", res.resp.StatusCode)
	}
	free()
	<-stored
	trAdvanceExactly(t, clk, idempotency.InFlightPoll)
	res := <-done
	require.NoError(t, res.err)
	require.Equal(t, http.StatusCreated, res.resp.StatusCode)
	require.Equal(t, "charged", res.body)
	require.Equal(t, "true", res.resp.Header.Get("Idempotent-Replayed"))
	require.Equal(t, int32(1), runs.Load(), "the effect happened once")

	delays, errs := rec.get()
	require.Equal(t, []time.Duration{100 * time.Millisecond, time.Second}, delays)
	require.ErrorIs(t, errs[0], context.DeadlineExceeded)
	var se *StatusError
	require.ErrorAs(t, errs[1], &se)
	require.Equal(t, http.StatusConflict, se.StatusCode)
}

// TestTransportInFlightConflictNeedsKeyAndMark: only a 409 marked
// Idempotent-In-Flight, to a request with an idempotency key, and not a
// replay, is the in-flight answer.
func TestTransportInFlightConflictNeedsKeyAndMark(t *testing.T) {
	t.Parallel()
	inFlight := trStatus(409, "", "Retry-After", "1", "Idempotent-In-Flight", "true")
	tests := []struct {
		name      string
		method    string
		keyHeader string // the request's key field, if any
		answer    trStep
		opts      []TransportOption
		retried   bool
	}{
		{"keyed", http.MethodPost, IdempotencyKeyHeader, inFlight, nil, true},
		{"X-Idempotency-Key is not the key", http.MethodPost, "X-Idempotency-Key", inFlight, []TransportOption{WithIdempotencyKeys(nil)}, false},
		{"keyed, retryable statuses replaced", http.MethodPost, IdempotencyKeyHeader, inFlight,
			[]TransportOption{WithRetryableStatus()}, true},
		{"not marked", http.MethodPost, IdempotencyKeyHeader, trStatus(409, "", "Retry-After", "1"), nil, false},
		{"a replay", http.MethodPost, IdempotencyKeyHeader, trStatus(409, "", "Retry-After", "1", "Idempotent-In-Flight", "true",
			"Idempotent-Replayed", "true"), nil, false},
		{"no key", http.MethodGet, "", inFlight, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			u := trNewUpstream(t, tt.answer, trStatus(200, "ok"))
			clk := clock.NewFake(time.Time{})
			retrying := make(chan struct{}, 1)
			p := trPolicy(clk, 3, nil, retry.WithOnRetry(func(int, error, time.Duration) { retrying <- struct{}{} }))
			c := u.client(append([]TransportOption{WithRetry(p)}, tt.opts...)...)
			req, _ := http.NewRequest(tt.method, u.srv.URL, nil)
			if tt.keyHeader != "" {
				req.Header.Set(tt.keyHeader, `"k"`)
			}
			done := trStart(c, req)
			var res trResult
			select {
			case <-retrying:
				require.True(t, tt.retried, "a retry followed")
				trAdvanceExactly(t, clk, time.Second)
				res = <-done
			case res = <-done:
			}
			require.NoError(t, res.err)
			if tt.retried {
				require.Equal(t, 200, res.resp.StatusCode)
				require.Len(t, u.seen(), 2)
			} else {
				require.Equal(t, 409, res.resp.StatusCode)
				require.Len(t, u.seen(), 1)
			}
		})
	}
}

// TestTransportHandlerConflictIsTheAnswer: a handler behind Idempotency that
// itself answers 409 Conflict with a Retry-After ("the account is locked,
// come back in 5 s") gives the caller its result. The transport cannot tell
// it from the middleware's in-flight 409 (same status, same header, no
// Idempotent-Replayed), so today it waits the 5 s and sends the request
// again, and the caller gets the stored copy instead: the handler's own
// headers (X-Conflict, Retry-After) are not replayed.
func TestTransportHandlerConflictIsTheAnswer(t *testing.T) {
	t.Parallel()
	var runs atomic.Int32
	handler := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		runs.Add(1)
		w.Header().Set("X-Conflict", "account-locked")
		w.Header().Set("Retry-After", "5")
		w.WriteHeader(http.StatusConflict)
		_, _ = io.WriteString(w, "locked")
	})
	g := idempotency.New("httpmw_transport_handler_conflict", idempotency.NewMemoryStore(idempotency.MemoryConfig{}))
	srv := httptest.NewServer(Idempotency(g, WithoutScope())(handler))
	t.Cleanup(srv.Close)

	clk := clock.NewFake(time.Time{})
	retrying := make(chan struct{}, 3)
	c := &http.Client{Transport: NewTransport(srv.Client().Transport,
		WithRetry(trPolicy(clk, 3, nil, retry.WithOnRetry(func(int, error, time.Duration) { retrying <- struct{}{} }))))}
	req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("pay 10"))
	done := trStart(c, req)
	var res trResult
	select {
	case res = <-done:
	case <-retrying:
		clk.WaitForTimers(1)
		clk.Advance(5 * time.Second)
		res = <-done
		require.NoError(t, res.err)
		t.Fatalf("the handler's own 409 was retried after its Retry-After: the caller got %d %q, Idempotent-Replayed=%q, X-Conflict=%q",
			res.resp.StatusCode, res.body, res.resp.Header.Get("Idempotent-Replayed"), res.resp.Header.Get("X-Conflict"))
	}
	require.NoError(t, res.err)
	require.Equal(t, http.StatusConflict, res.resp.StatusCode)
	require.Equal(t, "account-locked", res.resp.Header.Get("X-Conflict"))
	require.Empty(t, res.resp.Header.Get("Idempotent-Replayed"))
	require.Equal(t, int32(1), runs.Load())
}

// TestTransportXIdempotencyKeyPOSTExactlyOnce: the Transport used to treat a
// POST carrying X-Idempotency-Key as idempotent and retry it, adding no
// Idempotency-Key of its own, but this package's Idempotency middleware reads
// only Idempotency-Key: a POST whose first response was lost ran its effect
// twice. Now the transport adds its Idempotency-Key beside the caller's.
func TestTransportXIdempotencyKeyPOSTExactlyOnce(t *testing.T) {
	t.Parallel()
	var effects atomic.Int32
	effect := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		effects.Add(1)
		w.WriteHeader(http.StatusCreated)
	})
	g := idempotency.New("httpmw_transport_xkey", idempotency.NewMemoryStore(idempotency.MemoryConfig{}))
	srv := httptest.NewServer(trDropFirstResponse(Idempotency(g, WithoutScope())(effect)))
	t.Cleanup(srv.Close)

	clk := clock.NewFake(time.Time{})
	c := &http.Client{Transport: NewTransport(srv.Client().Transport, WithRetry(trPolicy(clk, 3, nil)))}
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/charges", strings.NewReader(`{"amount":42}`))
	require.NoError(t, err)
	req.Header.Set("X-Idempotency-Key", `"charge-1"`)
	done := trStart(c, req)
	trAdvanceExactly(t, clk, 100*time.Millisecond)
	res := <-done
	require.NoError(t, res.err)
	require.Equal(t, http.StatusCreated, res.resp.StatusCode)
	require.Equal(t, int32(1), effects.Load(), "the retried POST took effect exactly once")
}
