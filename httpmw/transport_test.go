package httpmw

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/internal/clock"
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
	clk.Advance(time.Millisecond)
	require.Equal(t, 0, clk.Pending())
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
			name:       "503 with Retry-After capped by the retry policy",
			steps:      []trStep{trStatus(503, "", "Retry-After", "8"), trStatus(200, "ok")},
			attempts:   3,
			opts:       nil,
			waits:      []time.Duration{5 * time.Second}, // retry.WithMaxHintWait(5s) below
			wantStatus: 200, wantBody: "ok", wantCalls: 2,
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
