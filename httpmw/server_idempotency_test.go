package httpmw

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/ratelimit"
)

// srvLedger is a handler with a side effect: each run appends to the ledger.
type srvLedger struct {
	mu   sync.Mutex
	runs []string // the bodies the handler read
}

func (l *srvLedger) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.runs)
}

func (l *srvLedger) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	if err != nil || int64(len(b)) != r.ContentLength {
		http.Error(w, "body mismatch", http.StatusInternalServerError)
		return
	}
	l.mu.Lock()
	l.runs = append(l.runs, string(b))
	n := len(l.runs)
	l.mu.Unlock()
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Location", "/orders/"+strconv.Itoa(n))
	h.Set("Set-Cookie", "session=secret-of-the-first-caller")
	h.Set("X-Internal-Trace", "t-1")
	w.WriteHeader(http.StatusCreated)
	_, _ = fmt.Fprintf(w, `{"order":%d,"body":%q}`, n, b)
}

func srvTestGuard(t *testing.T, opts ...idempotency.Option) *idempotency.Guard {
	t.Helper()
	opts = append([]idempotency.Option{idempotency.WithRegisterer(prometheus.NewPedanticRegistry())}, opts...)
	return idempotency.New("httpmw-test", nil, opts...)
}

func srvKeyHeader(key string) http.Header { return http.Header{"Idempotency-Key": {key}} }

func TestIdempotencyReplay(t *testing.T) {
	ledger := &srvLedger{}
	url, c := srvTestServer(t, Idempotency(srvTestGuard(t), WithoutScope())(ledger))

	resp, body := srvDo(t, c, http.MethodPost, url+"/orders", `{"item":1}`, srvKeyHeader(`"order-1"`))
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Equal(t, `{"order":1,"body":"{\"item\":1}"}`, body)
	require.NotEmpty(t, resp.Header.Get("Set-Cookie"), "the first caller gets its cookie")
	require.Empty(t, resp.Header.Get("Idempotent-Replayed"))

	for _, key := range []string{`"order-1"`, `order-1`, `"order-1";foo=1`} {
		resp2, body2 := srvDo(t, c, http.MethodPost, url+"/orders", `{"item":1}`, srvKeyHeader(key))
		require.Equal(t, http.StatusCreated, resp2.StatusCode)
		require.Equal(t, body, body2)
		require.Equal(t, "true", resp2.Header.Get("Idempotent-Replayed"))
		require.Equal(t, "application/json", resp2.Header.Get("Content-Type"))
		require.Equal(t, "/orders/1", resp2.Header.Get("Location"))
		require.Empty(t, resp2.Header.Values("Set-Cookie"), "Set-Cookie is never replayed")
		require.Empty(t, resp2.Header.Get("X-Internal-Trace"), "only allowlisted fields are replayed")
		require.Equal(t, strconv.Itoa(len(body)), resp2.Header.Get("Content-Length"))
	}
	require.Equal(t, 1, ledger.count(), "the handler ran once")
	require.Equal(t, []string{`{"item":1}`}, ledger.runs, "the handler read the fingerprinted body")
}

func TestIdempotencyStoredResponseHasNoCookie(t *testing.T) {
	var stored []idempotency.Response
	store := &srvRecordingStore{Store: idempotency.NewMemoryStore(idempotency.MemoryConfig{}), completed: &stored}
	g := idempotency.New("httpmw-rec", store)
	url, c := srvTestServer(t, Idempotency(g, WithoutScope(), WithReplayHeaders("Content-Type", "X-Internal-Trace"))(&srvLedger{}))
	resp, _ := srvDo(t, c, http.MethodPost, url, "b", srvKeyHeader("k"))
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Len(t, stored, 1)
	require.Equal(t, []idempotency.Field{
		{Name: "Content-Type", Value: "application/json"},
		{Name: "X-Internal-Trace", Value: "t-1"},
	}, stored[0].Header)
}

type srvRecordingStore struct {
	idempotency.Store
	completed *[]idempotency.Response
}

func (s *srvRecordingStore) Complete(ctx context.Context, key idempotency.Key, owner idempotency.Token, resp idempotency.Response, retention time.Duration) error {
	*s.completed = append(*s.completed, resp)
	return s.Store.Complete(ctx, key, owner, resp, retention)
}

func TestIdempotencyConcurrentRepeatIs409(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var runs atomic.Int32
	h := Idempotency(srvTestGuard(t, idempotency.WithLease(20*time.Second)), WithoutScope())(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		runs.Add(1)
		close(entered)
		<-release
		srvOK(w, nil)
	}))
	url, c := srvTestServer(t, h)
	first := make(chan int)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader("x"))
		req.Header.Set("Idempotency-Key", "k")
		resp, err := c.Do(req)
		if err != nil {
			first <- 0
			return
		}
		resp.Body.Close()
		first <- resp.StatusCode
	}()
	<-entered
	resp, body := srvDo(t, c, http.MethodPost, url, "x", srvKeyHeader("k"))
	srvRequireProblem(t, resp, body, http.StatusConflict, TypeIdempotencyInFlight, "idempotency:")
	require.Equal(t, "1", resp.Header.Get("Retry-After"), "ask again in a second, not when the 20 s lease ends")
	require.Equal(t, "true", resp.Header.Get("Idempotent-In-Flight"), "the mark a client retries on")
	close(release)
	require.Equal(t, http.StatusOK, <-first)
	require.Equal(t, int32(1), runs.Load())
}

func TestIdempotencyRejections(t *testing.T) {
	tests := []struct {
		name   string
		opts   []Option
		gopts  []idempotency.Option
		first  *http.Header // sent first, with body "a"
		header http.Header
		body   string
		status int
		typ    string
	}{
		{name: "different body", first: &http.Header{"Idempotency-Key": {"k"}},
			header: srvKeyHeader("k"), body: "b", status: 422, typ: TypeIdempotencyKeyReused},
		{name: "missing when required", gopts: []idempotency.Option{idempotency.WithRequired(true)},
			body: "a", status: 400, typ: TypeIdempotencyKeyMissing},
		{name: "two header lines", header: http.Header{"Idempotency-Key": {"a", "b"}}, body: "a", status: 400, typ: TypeIdempotencyKeyInvalid},
		{name: "empty", header: srvKeyHeader(""), body: "a", status: 400, typ: TypeIdempotencyKeyInvalid},
		{name: "empty sf-string", header: srvKeyHeader(`""`), body: "a", status: 400, typ: TypeIdempotencyKeyInvalid},
		{name: "unterminated sf-string", header: srvKeyHeader(`"abc`), body: "a", status: 400, typ: TypeIdempotencyKeyInvalid},
		{name: "space in sf-string", header: srvKeyHeader(`"a b"`), body: "a", status: 400, typ: TypeIdempotencyKeyInvalid},
		{name: "too long", header: srvKeyHeader(strings.Repeat("k", 256)), body: "a", status: 400, typ: TypeIdempotencyKeyInvalid},
		{name: "body too large", opts: []Option{WithMaxRequestBody(4)},
			header: srvKeyHeader("k"), body: "12345", status: 413, typ: TypeBodyTooLarge},
		{name: "scope error", opts: []Option{WithScope(func(*http.Request) (string, error) {
			return "", errors.New("jwt: token signature invalid for kid=prod-7")
		})}, header: srvKeyHeader("k"), body: "a", status: 403, typ: TypeIdempotencyScope},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := srvTestGuard(t, tt.gopts...)
			ledger := &srvLedger{}
			opts := append([]Option{WithoutScope()}, tt.opts...)
			url, c := srvTestServer(t, Idempotency(g, opts...)(ledger))
			if tt.first != nil {
				resp, _ := srvDo(t, c, http.MethodPost, url, "a", *tt.first)
				require.Equal(t, http.StatusCreated, resp.StatusCode)
			}
			before := ledger.count()
			resp, body := srvDo(t, c, http.MethodPost, url, tt.body, tt.header)
			srvRequireProblem(t, resp, body, tt.status, tt.typ, "idempotency:", "jwt", "prod-7", "store")
			require.Equal(t, before, ledger.count(), "the handler did not run")
		})
	}
}

// srvBrokenStore fails every operation, like a store that is down.
type srvBrokenStore struct{}

var errSrvStoreDown = errors.New("dial tcp 10.9.9.9:6379: connect: connection refused")

func (srvBrokenStore) Claim(context.Context, idempotency.Key, idempotency.Fingerprint, time.Duration) (idempotency.ClaimResult, error) {
	return idempotency.ClaimResult{}, errSrvStoreDown
}
func (srvBrokenStore) Complete(context.Context, idempotency.Key, idempotency.Token, idempotency.Response, time.Duration) error {
	return errSrvStoreDown
}
func (srvBrokenStore) Release(context.Context, idempotency.Key, idempotency.Token) error {
	return errSrvStoreDown
}
func (srvBrokenStore) Extend(context.Context, idempotency.Key, idempotency.Token, time.Duration) error {
	return errSrvStoreDown
}

func TestIdempotencyStoreDown(t *testing.T) {
	ledger := &srvLedger{}
	g := idempotency.New("httpmw-broken", srvBrokenStore{})
	url, c := srvTestServer(t, Idempotency(g, WithoutScope())(ledger))
	resp, body := srvDo(t, c, http.MethodPost, url, "a", srvKeyHeader("k"))
	srvRequireProblem(t, resp, body, http.StatusServiceUnavailable, TypeIdempotencyUnavailable, "10.9.9.9", "refused")
	require.Zero(t, ledger.count())

	// Failing open, the request runs unprotected.
	g = idempotency.New("httpmw-broken-open", srvBrokenStore{}, idempotency.WithFailOpen(true))
	url, c = srvTestServer(t, Idempotency(g, WithoutScope())(ledger))
	resp, _ = srvDo(t, c, http.MethodPost, url, "a", srvKeyHeader("k"))
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Equal(t, 1, ledger.count())
}

func TestIdempotencyMissingKeyNotRequiredRunsUnprotected(t *testing.T) {
	ledger := &srvLedger{}
	url, c := srvTestServer(t, Idempotency(srvTestGuard(t), WithoutScope())(ledger))
	for range 2 {
		resp, _ := srvDo(t, c, http.MethodPost, url, "a", nil)
		require.Equal(t, http.StatusCreated, resp.StatusCode)
	}
	require.Equal(t, 2, ledger.count())
}

func TestIdempotencyOtherMethodsPassThrough(t *testing.T) {
	ledger := &srvLedger{}
	url, c := srvTestServer(t, Idempotency(srvTestGuard(t), WithoutScope())(ledger))
	for range 2 {
		resp, _ := srvDo(t, c, http.MethodPut, url, "a", srvKeyHeader("k"))
		require.Equal(t, http.StatusCreated, resp.StatusCode)
		require.Empty(t, resp.Header.Get("Idempotent-Replayed"))
	}
	require.Equal(t, 2, ledger.count())

	url, c = srvTestServer(t, Idempotency(srvTestGuard(t), WithoutScope(), WithIdempotencyMethods(http.MethodPut))(ledger))
	for range 2 {
		srvDo(t, c, http.MethodPut, url, "a", srvKeyHeader("k"))
	}
	require.Equal(t, 3, ledger.count(), "PUT guarded when configured")
}

func TestIdempotencyScopesNeverCross(t *testing.T) {
	ledger := &srvLedger{}
	scope := WithScope(func(r *http.Request) (string, error) {
		if u := r.Header.Get("X-User"); u != "" {
			return u, nil
		}
		return "", errors.New("anonymous")
	})
	url, c := srvTestServer(t, Idempotency(srvTestGuard(t), scope)(ledger))
	send := func(user string) (*http.Response, string) {
		return srvDo(t, c, http.MethodPost, url, "same", http.Header{"Idempotency-Key": {"shared-key"}, "X-User": {user}})
	}
	ra, ba := send("alice")
	rb, bb := send("bob")
	require.Equal(t, http.StatusCreated, ra.StatusCode)
	require.Equal(t, http.StatusCreated, rb.StatusCode)
	require.Empty(t, rb.Header.Get("Idempotent-Replayed"), "bob never gets alice's response")
	require.NotEqual(t, ba, bb)
	require.Equal(t, 2, ledger.count())

	ra2, ba2 := send("alice")
	rb2, bb2 := send("bob")
	require.Equal(t, "true", ra2.Header.Get("Idempotent-Replayed"))
	require.Equal(t, "true", rb2.Header.Get("Idempotent-Replayed"))
	require.Equal(t, ba, ba2)
	require.Equal(t, bb, bb2)
	require.Equal(t, 2, ledger.count())
}

// srvCountingHandler answers with the statuses given in turn, counting runs.
func srvScripted(steps ...func(w http.ResponseWriter, r *http.Request)) (http.Handler, *atomic.Int32) {
	var n atomic.Int32
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := int(n.Add(1)) - 1
		steps[min(i, len(steps)-1)](w, r)
	}), &n
}

// TestIdempotencyReleased: a status the guard does not remember leaves the
// key free, so a retry runs the handler again.
func TestIdempotencyReleased(t *testing.T) {
	created := func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, "created")
	}
	h, runs := srvScripted(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "failed", http.StatusInternalServerError)
	}, created)
	url, c := srvTestServer(t, Idempotency(srvTestGuard(t), WithoutScope())(h))
	resp, _ := srvDo(t, c, http.MethodPost, url, "a", srvKeyHeader("k"))
	require.Equal(t, http.StatusInternalServerError, resp.StatusCode)

	resp, body := srvDo(t, c, http.MethodPost, url, "a", srvKeyHeader("k"))
	require.Equal(t, http.StatusCreated, resp.StatusCode, "the key was released: the retry runs")
	require.Equal(t, "created", body)
	require.Empty(t, resp.Header.Get("Idempotent-Replayed"))

	resp, _ = srvDo(t, c, http.MethodPost, url, "a", srvKeyHeader("k"))
	require.Equal(t, "true", resp.Header.Get("Idempotent-Replayed"))
	require.Equal(t, int32(2), runs.Load())
}

// TestIdempotencyNotReplayable: a response that cannot be stored reaches its
// client whole, and a repeat of its key is told that the request was
// processed instead of running the handler a second time. Before, the key was
// released, and a retry after a lost response ran the effect twice.
func TestIdempotencyNotReplayable(t *testing.T) {
	big := strings.Repeat("0123456789", 10)
	huge := strings.Repeat("0123456789", 400)
	tests := []struct {
		name   string
		opts   []Option
		store  idempotency.Store // nil: the default memory store
		first  func(w http.ResponseWriter, r *http.Request)
		status int
		body   string
	}{
		{name: "streamed", first: func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusCreated)
			_, _ = io.WriteString(w, "part1,")
			_ = http.NewResponseController(w).Flush()
			_, _ = io.WriteString(w, "part2")
		}, status: http.StatusCreated, body: "part1,part2"},
		{name: "over WithMaxStoredResponse", opts: []Option{WithMaxStoredResponse(50)},
			first: func(w http.ResponseWriter, _ *http.Request) {
				_, _ = io.WriteString(w, big[:40])
				_, _ = io.WriteString(w, big[40:])
			}, status: http.StatusOK, body: big},
		{name: "larger than the store holds",
			store: idempotency.NewMemoryStore(idempotency.MemoryConfig{MaxBytes: 1 << 10}),
			first: func(w http.ResponseWriter, _ *http.Request) {
				_, _ = io.WriteString(w, huge)
			}, status: http.StatusOK, body: huge},
		{name: "hijacked", first: func(w http.ResponseWriter, _ *http.Request) {
			conn, buf, err := http.NewResponseController(w).Hijack()
			if err != nil {
				panic(err)
			}
			defer conn.Close()
			_, _ = buf.WriteString("HTTP/1.1 202 Accepted\r\nContent-Length: 4\r\nConnection: close\r\n\r\ntook")
			_ = buf.Flush()
		}, status: http.StatusAccepted, body: "took"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, runs := srvScripted(tt.first, func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(http.StatusTeapot) // must never run
			})
			opts := append([]Option{WithoutScope()}, tt.opts...)
			g := idempotency.New("httpmw-test", tt.store, idempotency.WithRegisterer(prometheus.NewPedanticRegistry()))
			mw := Idempotency(g, opts...)(h)
			served := make(chan struct{}, 3)
			url, c := srvTestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				defer func() { served <- struct{}{} }()
				mw.ServeHTTP(w, r)
			}))
			resp, body := srvDo(t, c, http.MethodPost, url, "a", srvKeyHeader("k"))
			require.Equal(t, tt.status, resp.StatusCode)
			require.Equal(t, tt.body, body, "the client gets all of it")
			require.Empty(t, resp.Header.Get("Idempotent-Replayed"))
			// A hijacked response reaches the client before the handler
			// returns: the repeat waits for what the first one stored.
			<-served

			for range 2 {
				resp, body = srvDo(t, c, http.MethodPost, url, "a", srvKeyHeader("k"))
				require.Equal(t, http.StatusConflict, resp.StatusCode, body)
				require.Equal(t, "true", resp.Header.Get("Idempotent-Replayed"))
				require.Empty(t, resp.Header.Get("Idempotent-In-Flight"), "not an answer to wait for")
				require.Contains(t, body, TypeIdempotencyNotReplayable)
			}
			require.Equal(t, int32(1), runs.Load(), "the handler ran once")
		})
	}
}

func TestIdempotencyPanicReleases(t *testing.T) {
	h, runs := srvScripted(
		func(http.ResponseWriter, *http.Request) { panic("handler bug") },
		func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusCreated) },
	)
	mw := Idempotency(srvTestGuard(t), WithoutScope())(h)
	send := func() *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader("a"))
		req.Header.Set("Idempotency-Key", "k")
		mw.ServeHTTP(rec, req)
		return rec
	}
	require.PanicsWithValue(t, "handler bug", func() { send() })
	require.Equal(t, http.StatusCreated, send().Code, "the key was released")
	require.Equal(t, "true", send().Header().Get("Idempotent-Replayed"))
	require.Equal(t, int32(2), runs.Load())
}

func TestIdempotencyClientGoneStillStores(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	h, runs := srvScripted(func(w http.ResponseWriter, _ *http.Request) {
		cancel() // the client hangs up while the handler runs
		w.WriteHeader(http.StatusCreated)
	})
	mw := Idempotency(srvTestGuard(t), WithoutScope())(h)
	for _, c := range []context.Context{ctx, context.Background()} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequestWithContext(c, http.MethodPost, "/", strings.NewReader("a"))
		req.Header.Set("Idempotency-Key", "k")
		mw.ServeHTTP(rec, req)
		require.Equal(t, http.StatusCreated, rec.Code)
	}
	require.Equal(t, int32(1), runs.Load(), "stored although the first client had gone")
}

func TestIdempotencyInnerRejectionNotStored(t *testing.T) {
	var calls atomic.Int32
	l := srvLimiterFunc(func(context.Context, string, int) (ratelimit.Decision, error) {
		allowed := calls.Add(1) > 1
		return ratelimit.Decision{Allowed: allowed, Policy: "p", Limit: 1, Window: time.Second, RetryAfter: time.Second}, nil
	})
	h, runs := srvScripted(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusCreated) })
	url, c := srvTestServer(t, Chain(Idempotency(srvTestGuard(t), WithoutScope()), RateLimit(l))(h))
	resp, _ := srvDo(t, c, http.MethodPost, url, "a", srvKeyHeader("k"))
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	resp, _ = srvDo(t, c, http.MethodPost, url, "a", srvKeyHeader("k"))
	require.Equal(t, http.StatusCreated, resp.StatusCode, "a 429 from inside is not replayed")
	require.Equal(t, int32(1), runs.Load())
}

func TestIdempotencyRouteFromPattern(t *testing.T) {
	ledger := &srvLedger{}
	mux := http.NewServeMux()
	mux.Handle("POST /orders/{id}", Idempotency(srvTestGuard(t), WithoutScope())(ledger))
	url, c := srvTestServer(t, mux)
	resp, _ := srvDo(t, c, http.MethodPost, url+"/orders/1", "a", srvKeyHeader("k"))
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	resp, body := srvDo(t, c, http.MethodPost, url+"/orders/2", "a", srvKeyHeader("k"))
	srvRequireProblem(t, resp, body, http.StatusUnprocessableEntity, TypeIdempotencyKeyReused)
	resp, _ = srvDo(t, c, http.MethodPost, url+"/orders/1", "a", srvKeyHeader("k"))
	require.Equal(t, "true", resp.Header.Get("Idempotent-Replayed"))
	require.Equal(t, 1, ledger.count())

	// Without a pattern the path is the route: another path, another key.
	url, c = srvTestServer(t, Idempotency(srvTestGuard(t), WithoutScope())(ledger))
	srvDo(t, c, http.MethodPost, url+"/orders/1", "a", srvKeyHeader("k"))
	resp, _ = srvDo(t, c, http.MethodPost, url+"/orders/2", "a", srvKeyHeader("k"))
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Empty(t, resp.Header.Get("Idempotent-Replayed"))
	require.Equal(t, 3, ledger.count())
}

func TestIdempotencyConstructionPanics(t *testing.T) {
	g := srvTestGuard(t)
	require.PanicsWithValue(t, "httpmw: Idempotency needs WithScope(func) naming the principal a key belongs to, "+
		"or WithoutScope() to let all callers share one key space", func() { Idempotency(g) })
	for _, name := range []string{"set-cookie", "Authorization", "X-Auth-Token", "X-Session-Id", "Content-Length"} {
		require.Panics(t, func() { Idempotency(g, WithoutScope(), WithReplayHeaders("Content-Type", name)) }, name)
	}
	require.NotPanics(t, func() { Idempotency(g, WithScope(func(*http.Request) (string, error) { return "", nil })) })
}

func TestIdempotencyFingerprintHeaders(t *testing.T) {
	ledger := &srvLedger{}
	url, c := srvTestServer(t, Idempotency(srvTestGuard(t), WithoutScope(), WithFingerprintHeaders("content-type"))(ledger))
	resp, _ := srvDo(t, c, http.MethodPost, url, "a", http.Header{"Idempotency-Key": {"k"}, "Content-Type": {"text/plain"}})
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	resp, body := srvDo(t, c, http.MethodPost, url, "a", http.Header{"Idempotency-Key": {"k"}, "Content-Type": {"application/json"}})
	srvRequireProblem(t, resp, body, http.StatusUnprocessableEntity, TypeIdempotencyKeyReused)
}

func TestIdempotencyHeaderOnlyResponse(t *testing.T) {
	h, runs := srvScripted(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Location", "/done") // and nothing written
	})
	url, c := srvTestServer(t, Idempotency(srvTestGuard(t), WithoutScope())(h))
	for i := range 2 {
		resp, body := srvDo(t, c, http.MethodPost, url, "a", srvKeyHeader("k"))
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "/done", resp.Header.Get("Location"))
		require.Empty(t, body)
		require.Equal(t, i == 1, resp.Header.Get("Idempotent-Replayed") == "true")
	}
	require.Equal(t, int32(1), runs.Load())
}

// srvBrokenPipeWriter accepts the header and then fails every write, like
// the connection of a client that hung up while the response went out.
type srvBrokenPipeWriter struct{ srvPlainWriter }

func (*srvBrokenPipeWriter) Write([]byte) (int, error) { return 0, errors.New("write: broken pipe") }

// TestIdempotencyStoresWhatTheHandlerWrote: the client went away before the
// body reached it; the handler's effect happened all the same, so the
// client's retry must replay the whole response the handler wrote, not the
// part (here: none) that the dead connection accepted.
func TestIdempotencyStoresWhatTheHandlerWrote(t *testing.T) {
	h, runs := srvScripted(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"order":`)
		_, _ = io.WriteString(w, `1}`)
	})
	mw := Idempotency(srvTestGuard(t), WithoutScope())(h)
	send := func(w http.ResponseWriter) {
		req := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader("a"))
		req.Header.Set("Idempotency-Key", "k")
		mw.ServeHTTP(w, req)
	}
	send(&srvBrokenPipeWriter{srvPlainWriter{h: http.Header{}}})
	rec := httptest.NewRecorder()
	send(rec)
	require.Equal(t, int32(1), runs.Load())
	require.Equal(t, "true", rec.Header().Get("Idempotent-Replayed"))
	require.Equal(t, http.StatusCreated, rec.Code)
	require.Equal(t, `{"order":1}`, rec.Body.String())
}

// srvFailingBody yields some bytes and then fails, like a client that hung
// up while it sent its body.
type srvFailingBody struct{ sent bool }

func (b *srvFailingBody) Read(p []byte) (int, error) {
	if !b.sent {
		b.sent = true
		return copy(p, "partial"), nil
	}
	return 0, errors.New("read tcp 10.1.2.3:443: connection reset by peer")
}
func (*srvFailingBody) Close() error { return nil }

// TestIdempotencyBodyErrorsClaimNothing: a body that fails mid-read answers
// 400, one over an outer http.MaxBytesReader answers 413; neither runs the
// handler, leaks the error text or claims the key, so the client's retry
// with the whole body runs.
func TestIdempotencyBodyErrorsClaimNothing(t *testing.T) {
	ledger := &srvLedger{}
	mw := Idempotency(srvTestGuard(t), WithoutScope())(ledger)
	for _, tc := range []struct {
		body   func(w http.ResponseWriter) io.ReadCloser
		status int
		typ    string
	}{
		{func(http.ResponseWriter) io.ReadCloser { return &srvFailingBody{} }, http.StatusBadRequest, TypeBadRequest},
		{func(w http.ResponseWriter) io.ReadCloser {
			return http.MaxBytesReader(w, io.NopCloser(strings.NewReader("0123456789")), 4)
		}, http.StatusRequestEntityTooLarge, TypeBodyTooLarge},
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/orders", nil)
		req.Body = tc.body(rec)
		req.Header.Set("Idempotency-Key", "k")
		mw.ServeHTTP(rec, req)
		srvRequireProblem(t, rec.Result(), rec.Body.String(), tc.status, tc.typ, "10.1.2.3", "reset", "idempotency:")
	}
	require.Zero(t, ledger.count())
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader("whole"))
	req.Header.Set("Idempotency-Key", "k")
	mw.ServeHTTP(rec, req)
	require.Equal(t, http.StatusCreated, rec.Code, "the key was never claimed")
	require.Equal(t, []string{"whole"}, ledger.runs)
}

// A response within WithMaxStoredResponse is stored and replayed with the
// default store, though it is larger than one shard's share of the store.
func TestIdempotencyLargeResponseWithinTheBoundIsReplayed(t *testing.T) {
	g := idempotency.New("large", nil, idempotency.WithRegisterer(prometheus.NewPedanticRegistry()))
	var runs atomic.Int32
	big := strings.Repeat("x", 3<<20)
	h := Idempotency(g, WithoutScope(), WithMaxStoredResponse(4<<20))(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		runs.Add(1)
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, big)
	}))
	for i := range 2 {
		req := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader("b"))
		req.Header.Set("Idempotency-Key", "k")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		require.Equal(t, http.StatusCreated, rec.Code, "attempt %d", i+1)
		require.Equal(t, len(big), rec.Body.Len())
	}
	require.Equal(t, int32(1), runs.Load(), "the handler ran once")
}

// TestIdempotencyReplayKeepsTrailers: a handler that sets a trailer (a
// checksum, a final status) after the body sent it to the first caller, but
// the stored response had no trailer and a replay sent none, even with the
// field in WithReplayHeaders: the retry got a different response than the one
// the handler produced. Trailers follow the replay allowlist, as headers do.
func TestIdempotencyReplayKeepsTrailers(t *testing.T) {
	declared := func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, "body")
		w.Header().Set("X-Checksum", "c0ffee")
	}
	// Undeclared trailers reach a client only when net/http chunks the
	// response: here because the body outgrows its 4 KiB buffer.
	long := strings.Repeat("b", 8<<10)
	prefixed := func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, long)
		w.Header().Set(http.TrailerPrefix+"X-Checksum", "c0ffee")
	}
	tests := []struct {
		name     string
		handler  http.HandlerFunc
		body     string
		replay   []string
		replayed string // the trailer the replay carries
	}{
		{"declared", declared, "body", []string{"Content-Type", "X-Checksum"}, "c0ffee"},
		{"under TrailerPrefix", prefixed, long, []string{"Content-Type", "X-Checksum"}, "c0ffee"},
		{"not in the allowlist", declared, "body", []string{"Content-Type"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, runs := srvScripted(tt.handler)
			url, c := srvTestServer(t, Idempotency(srvTestGuard(t), WithoutScope(), WithReplayHeaders(tt.replay...))(h))
			first, _ := srvDo(t, c, http.MethodPost, url, "a", srvKeyHeader("k"))
			require.Equal(t, http.StatusCreated, first.StatusCode)
			require.Equal(t, "c0ffee", first.Trailer.Get("X-Checksum"), "the first caller gets the trailer")

			replay, body := srvDo(t, c, http.MethodPost, url, "a", srvKeyHeader("k"))
			require.Equal(t, "true", replay.Header.Get("Idempotent-Replayed"))
			require.Equal(t, http.StatusCreated, replay.StatusCode)
			require.Equal(t, tt.body, body)
			require.Equal(t, int32(1), runs.Load())
			require.Equal(t, tt.replayed, replay.Trailer.Get("X-Checksum"), "the replay's trailer")
			require.Empty(t, replay.Header.Get("X-Checksum"), "a trailer is not replayed as a header")
		})
	}
}

// TestIdempotencyReplayedTrailerIsNotDoubled: a declared trailer whose field also
// had a value when the header went out (or a response whose header went out
// only when the handler returned) is stored twice, once as a header and once
// under http.TrailerPrefix. srvReplay added the header value, then the
// trailer value to the same key after the body, so net/http sent both as the
// trailer: the replay's trailer was [early late] where the first caller got
// [late].
func TestIdempotencyReplayedTrailerIsNotDoubled(t *testing.T) {
	h, runs := srvScripted(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		w.Header().Set("X-Checksum", "early")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, "body")
		w.Header().Set("X-Checksum", "late")
	})
	url, c := srvTestServer(t, Idempotency(srvTestGuard(t), WithoutScope(), WithReplayHeaders("X-Checksum"))(h))
	first, _ := srvDo(t, c, http.MethodPost, url, "a", srvKeyHeader("k"))
	require.Equal(t, []string{"late"}, first.Trailer.Values("X-Checksum"))

	replay, _ := srvDo(t, c, http.MethodPost, url, "a", srvKeyHeader("k"))
	require.Equal(t, "true", replay.Header.Get("Idempotent-Replayed"))
	require.Equal(t, int32(1), runs.Load())
	require.Equal(t, first.Header.Values("X-Checksum"), replay.Header.Values("X-Checksum"), "the header")
	require.Equal(t, first.Trailer.Values("X-Checksum"), replay.Trailer.Values("X-Checksum"), "the trailer")
}
