package reliability

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/httpmw"
	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/idempotency/redisstore"
	"github.com/bulwark-go/bulwark/internal/testenv"
	"github.com/bulwark-go/bulwark/ratelimit"
	"github.com/bulwark-go/bulwark/ratelimit/redisrate"
)

// answer is one response, read whole.
type answer struct {
	status int
	header http.Header
	body   string
}

func do(t *testing.T, c *http.Client, req *http.Request) answer {
	t.Helper()
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return answer{resp.StatusCode, resp.Header, string(body)}
}

func post(t *testing.T, url, key, principal, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	require.NoError(t, err)
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	if principal != "" {
		req.Header.Set("Authorization", "Bearer "+principal)
	}
	return req
}

// scopeByBearer names the principal of a request: its bearer token (a real
// service takes it from its own authentication).
func scopeByBearer(r *http.Request) (string, error) {
	p, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || p == "" {
		return "", errors.New("no principal")
	}
	return p, nil
}

// TestSecurity: scenario 9.
func TestSecurity(t *testing.T) {
	client := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(client.CloseIdleConnections)

	t.Run("keys of two principals never cross", func(t *testing.T) {
		stores := map[string]func(t *testing.T) idempotency.Store{
			"memory": func(*testing.T) idempotency.Store { return idempotency.NewMemoryStore(idempotency.MemoryConfig{}) },
			"redis": func(t *testing.T) idempotency.Store {
				rdb := redisClient(t, testenv.RedisAddr(t))
				return redisstore.New(rdb, redisstore.WithPrefix(redisPrefix(t, rdb)))
			},
		}
		for name, open := range stores {
			t.Run(name, func(t *testing.T) {
				runs := map[string]int{}
				var mu sync.Mutex
				g := idempotency.New("scope", open(t))
				srv := httptest.NewServer(httpmw.Idempotency(g, httpmw.WithScope(scopeByBearer))(
					http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
						who, _ := scopeByBearer(r)
						mu.Lock()
						runs[who]++
						mu.Unlock()
						w.WriteHeader(http.StatusCreated)
						_, _ = io.WriteString(w, "order of "+who)
					})))
				t.Cleanup(srv.Close)

				a := do(t, client, post(t, srv.URL, "k1", "alice", "same body"))
				b := do(t, client, post(t, srv.URL, "k1", "bob", "same body"))
				require.Equal(t, "order of alice", a.body)
				require.Equal(t, http.StatusCreated, b.status)
				require.Equal(t, "order of bob", b.body, "bob's request ran, it did not replay alice's")
				require.Empty(t, b.header.Get("Idempotent-Replayed"))
				a2 := do(t, client, post(t, srv.URL, "k1", "alice", "same body"))
				require.Equal(t, "order of alice", a2.body)
				require.Equal(t, "true", a2.header.Get("Idempotent-Replayed"))
				// Another body under bob's key is bob's mismatch, not alice's.
				b2 := do(t, client, post(t, srv.URL, "k1", "bob", "other body"))
				require.Equal(t, http.StatusUnprocessableEntity, b2.status)
				// No principal: refused before the store is touched.
				anon := do(t, client, post(t, srv.URL, "k1", "", "same body"))
				require.Equal(t, http.StatusForbidden, anon.status)
				require.Equal(t, map[string]int{"alice": 1, "bob": 1}, runs)
			})
		}
	})

	t.Run("X-Forwarded-For is not trusted from untrusted peers", func(t *testing.T) {
		ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})
		cases := []struct {
			name    string
			key     httpmw.KeyFunc
			spoofed int // status of a second request with another X-Forwarded-For
		}{
			{"default: forwarding headers ignored", httpmw.KeyByIP(), http.StatusTooManyRequests},
			{"peer outside the trusted ranges", httpmw.KeyByIP(httpmw.WithTrustedProxies(netip.MustParsePrefix("10.0.0.0/8"))), http.StatusTooManyRequests},
			{"Forwarded read instead, X-Forwarded-For ignored", httpmw.KeyByIP(httpmw.WithForwardedHeader(),
				httpmw.WithTrustedProxies(netip.MustParsePrefix("127.0.0.0/8"))), http.StatusTooManyRequests},
			{"peer trusted: the header names the client", httpmw.KeyByIP(httpmw.WithTrustedProxies(netip.MustParsePrefix("127.0.0.0/8"))), http.StatusOK},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				lim := ratelimit.NewLocal("xff", rate.Limit(0.001), 1)
				srv := httptest.NewServer(httpmw.RateLimit(lim, httpmw.WithKey(c.key))(ok))
				t.Cleanup(srv.Close)
				get := func(xff string) int {
					req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
					req.Header.Set("X-Forwarded-For", xff)
					return do(t, client, req).status
				}
				require.Equal(t, http.StatusOK, get("203.0.113.7"))
				require.Equal(t, c.spoofed, get("198.51.100.9"))
				require.Equal(t, c.spoofed, get("198.51.100.10, 203.0.113.8"))
			})
		}
	})

	t.Run("oversized keys, headers and bodies are refused and not stored", func(t *testing.T) {
		store := idempotency.NewMemoryStore(idempotency.MemoryConfig{})
		runs := 0
		g := idempotency.New("big", store)
		h := httpmw.Idempotency(g, httpmw.WithoutScope(), httpmw.WithMaxRequestBody(1024))(
			http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { runs++ }))
		srv := httptest.NewUnstartedServer(h)
		srv.Config.MaxHeaderBytes = 16 << 10
		srv.Start()
		t.Cleanup(srv.Close)

		long := do(t, client, post(t, srv.URL, strings.Repeat("k", idempotency.MaxKeyLen+1), "", "x"))
		require.Equal(t, http.StatusBadRequest, long.status)
		require.Contains(t, long.body, httpmw.TypeIdempotencyKeyInvalid)
		huge := do(t, client, post(t, srv.URL, `"`+strings.Repeat("k", 8<<10)+`"`, "", "x"))
		require.Equal(t, http.StatusBadRequest, huge.status)
		body := do(t, client, post(t, srv.URL, "ok-key", "", strings.Repeat("b", 1025)))
		require.Equal(t, http.StatusRequestEntityTooLarge, body.status)
		require.Contains(t, body.body, httpmw.TypeBodyTooLarge)
		// A header block beyond the server's MaxHeaderBytes never reaches
		// the middleware: net/http answers 431 itself.
		req := post(t, srv.URL, "ok-key-2", "", "x")
		req.Header.Set("X-Padding", strings.Repeat("p", 64<<10))
		require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, do(t, client, req).status)
		require.Zero(t, runs)
		require.Zero(t, store.Len(), "nothing was stored")
		require.Zero(t, store.Bytes())
	})

	t.Run("no internal error text in any response", func(t *testing.T) {
		const secret = "s3cr3t-10.1.2.3:6379-password"
		addr := closedPort(t)
		rdb := redisClient(t, addr) // nothing listens there: real dial errors, naming the address
		secretErr := errors.New("dial tcp: " + secret)
		bh := bulkhead.New("bulkhead-"+secret, bulkhead.WithLimit(1))
		br := breaker.New("breaker-"+secret, breaker.WithConsecutiveFailures(1), breaker.WithOpenDuration(time.Minute))
		cases := []struct {
			name string
			h    http.Handler
			req  func(url string) *http.Request
			want int
		}{
			{"limiter fails closed", httpmw.RateLimit(redisrate.New("rl-"+secret, rdb, 10, 10,
				redisrate.WithFailureMode(redisrate.FailClosed()), redisrate.WithKeyPrefix(secret)))(noop()),
				getReq, http.StatusServiceUnavailable},
			{"limiter error", httpmw.RateLimit(errLimiter{secretErr})(noop()), getReq, http.StatusServiceUnavailable},
			{"key function error", httpmw.RateLimit(ratelimit.NewLocal("k", 1, 1), httpmw.WithKey(func(*http.Request) (string, error) {
				return "", secretErr
			}))(noop()), getReq, http.StatusBadRequest},
			{"idempotency store down", httpmw.Idempotency(idempotency.New("idem-"+secret, redisstore.New(rdb,
				redisstore.WithPrefix(secret)), idempotency.WithStoreTimeout(100*time.Millisecond)), httpmw.WithoutScope())(noop()),
				func(url string) *http.Request { return post(t, url, "k", "", "x") }, http.StatusServiceUnavailable},
			{"idempotency store error", httpmw.Idempotency(idempotency.New("idem", errStore{secretErr}), httpmw.WithoutScope())(noop()),
				func(url string) *http.Request { return post(t, url, "k", "", "x") }, http.StatusServiceUnavailable},
			{"scope error", httpmw.Idempotency(idempotency.New("idem", nil), httpmw.WithScope(func(*http.Request) (string, error) {
				return "", secretErr
			}))(noop()), func(url string) *http.Request { return post(t, url, "k", "", "x") }, http.StatusForbidden},
			{"bulkhead full", httpmw.Bulkhead(bh)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				p, err := bh.Acquire(r.Context()) // the one slot is taken: this inner call is refused...
				if err == nil {
					p.Release()
				}
				httpmw.Bulkhead(bh)(noop()).ServeHTTP(w, r) // ...and so is this request
			})), getReq, http.StatusServiceUnavailable},
			{"breaker open", func() http.Handler {
				p, _ := br.Allow()
				p.Done(secretErr) // one failure opens it
				return httpmw.Breaker(br)(noop())
			}(), getReq, http.StatusServiceUnavailable},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				srv := httptest.NewServer(c.h)
				t.Cleanup(srv.Close)
				a := do(t, client, c.req(srv.URL))
				require.Equal(t, c.want, a.status, a.body)
				require.Contains(t, a.header.Get("Content-Type"), "application/problem+json")
				for _, text := range []string{secret, addr, "dial tcp", "redis", "pgx"} {
					require.NotContains(t, a.body, text)
					for name, vals := range a.header {
						require.NotContains(t, name+": "+strings.Join(vals, ", "), text)
					}
				}
			})
		}
	})

	t.Run("stored responses carry no cookie or credential", func(t *testing.T) {
		store := &capturing{Store: idempotency.NewMemoryStore(idempotency.MemoryConfig{})}
		g := idempotency.New("creds", store)
		srv := httptest.NewServer(httpmw.Idempotency(g, httpmw.WithScope(scopeByBearer))(
			http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				h := w.Header()
				h.Set("Set-Cookie", "session=first-caller")
				h.Set("Authorization", r.Header.Get("Authorization"))
				h.Set("X-Auth-Token", "tok")
				h.Set("X-Session-Id", "sess")
				h.Set("X-Api-Key", "key")
				h.Set("Www-Authenticate", "Bearer")
				h.Set("Content-Type", "application/json")
				h.Set("Location", "/orders/1")
				w.WriteHeader(http.StatusCreated)
				_, _ = io.WriteString(w, `{"id":1}`)
			})))
		t.Cleanup(srv.Close)
		first := do(t, client, post(t, srv.URL, "k", "alice", "x"))
		require.Equal(t, "session=first-caller", first.header.Get("Set-Cookie"), "the first caller gets its own headers")
		replay := do(t, client, post(t, srv.URL, "k", "alice", "x"))
		require.Equal(t, "true", replay.header.Get("Idempotent-Replayed"))
		require.Equal(t, "application/json", replay.header.Get("Content-Type"))
		require.Equal(t, "/orders/1", replay.header.Get("Location"))
		for _, name := range []string{"Set-Cookie", "Authorization", "X-Auth-Token", "X-Session-Id", "X-Api-Key", "Www-Authenticate"} {
			require.Empty(t, replay.header.Get(name), name)
		}
		stored := store.last()
		require.NotEmpty(t, stored)
		for _, f := range stored {
			require.Contains(t, []string{"Content-Type", "Location"}, f.Name, "stored field %s", f.Name)
			require.NotContains(t, f.Value, "alice")
		}
		require.Panics(t, func() { httpmw.Idempotency(g, httpmw.WithoutScope(), httpmw.WithReplayHeaders("Set-Cookie")) })
		require.Panics(t, func() { httpmw.Idempotency(g, httpmw.WithoutScope(), httpmw.WithReplayHeaders("X-Upstream-Token")) })
	})
}

func noop() http.Handler { return http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}) }

func getReq(url string) *http.Request {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	return req
}

// closedPort returns an address on which nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// errLimiter is a limiter that cannot decide.
type errLimiter struct{ err error }

func (l errLimiter) Allow(context.Context, string, int) (ratelimit.Decision, error) {
	return ratelimit.Decision{Policy: "p", Limit: 1}, l.err
}

// errStore is a store whose every operation fails.
type errStore struct{ err error }

func (s errStore) Claim(context.Context, idempotency.Key, idempotency.Fingerprint, time.Duration) (idempotency.ClaimResult, error) {
	return idempotency.ClaimResult{}, s.err
}
func (s errStore) Complete(context.Context, idempotency.Key, idempotency.Token, idempotency.Response, time.Duration) error {
	return s.err
}
func (s errStore) Release(context.Context, idempotency.Key, idempotency.Token) error { return s.err }
func (s errStore) Extend(context.Context, idempotency.Key, idempotency.Token, time.Duration) error {
	return s.err
}

// capturing passes calls to a store and keeps the header fields of the last
// response stored.
type capturing struct {
	idempotency.Store
	mu     sync.Mutex
	fields []idempotency.Field
}

func (c *capturing) Complete(ctx context.Context, key idempotency.Key, owner idempotency.Token, resp idempotency.Response, retention time.Duration) error {
	c.mu.Lock()
	c.fields = append([]idempotency.Field(nil), resp.Header...)
	c.mu.Unlock()
	return c.Store.Complete(ctx, key, owner, resp, retention)
}

func (c *capturing) last() []idempotency.Field {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fields
}
