package httpmw

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/dunglas/httpsfv"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"

	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/ratelimit"
)

// srvParseRateLimit parses a RateLimit or RateLimit-Policy field as the
// draft defines it: a structured-field List whose members are sf-strings
// (the policy name) with integer parameters.
func srvParseRateLimit(t *testing.T, h http.Header, name string) (string, map[string]int64) {
	t.Helper()
	vals := h.Values(name)
	require.NotEmpty(t, vals, name)
	list, err := httpsfv.UnmarshalList(vals)
	require.NoError(t, err, name)
	require.Len(t, list, 1)
	item, ok := list[0].(httpsfv.Item)
	require.True(t, ok, "%s member is an item", name)
	policy, ok := item.Value.(string)
	require.True(t, ok, "%s names its policy with an sf-string", name)
	params := map[string]int64{}
	for _, k := range item.Params.Names() {
		v, _ := item.Params.Get(k)
		n, ok := v.(int64)
		require.True(t, ok, "%s parameter %s is an integer", name, k)
		params[k] = n
	}
	return policy, params
}

func srvTestLimiter(t *testing.T, opts ...ratelimit.Option) (*ratelimit.Local, *clock.Fake) {
	t.Helper()
	clk := clock.NewFake(time.Unix(1000, 0))
	opts = append([]ratelimit.Option{ratelimit.WithClock(clk), ratelimit.WithRegisterer(prometheus.NewPedanticRegistry())}, opts...)
	// 10 per minute with a burst of 10: q=10, w=60, one unit every 6 s.
	return ratelimit.NewLocal("httpmw-test", rate.Every(6*time.Second), 10, opts...), clk
}

func TestRateLimitHeadersAndDenial(t *testing.T) {
	l, clk := srvTestLimiter(t)
	url, c := srvTestServer(t, RateLimit(l)(http.HandlerFunc(srvOK)))

	for i := range 10 {
		resp, body := srvDo(t, c, http.MethodGet, url, "", nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "ok", body)
		policy, p := srvParseRateLimit(t, resp.Header, "RateLimit-Policy")
		require.Equal(t, "default", policy)
		require.Equal(t, map[string]int64{"q": 10, "w": 60}, p)
		policy, p = srvParseRateLimit(t, resp.Header, "RateLimit")
		require.Equal(t, "default", policy)
		require.Equal(t, int64(9-i), p["r"])
		require.Equal(t, int64(6*(i+1)), p["t"], "seconds until the quota is full again")
		require.Empty(t, resp.Header.Get("Retry-After"))
	}

	resp, body := srvDo(t, c, http.MethodGet, url, "", nil)
	srvRequireProblem(t, resp, body, http.StatusTooManyRequests, TypeRateLimited, "ratelimit:", "127.0.0.1")
	require.Equal(t, "6", resp.Header.Get("Retry-After"))
	_, p := srvParseRateLimit(t, resp.Header, "RateLimit")
	require.Equal(t, int64(0), p["r"])
	require.Equal(t, int64(60), p["t"])
	_, p = srvParseRateLimit(t, resp.Header, "RateLimit-Policy")
	require.Equal(t, map[string]int64{"q": 10, "w": 60}, p)

	clk.Advance(6 * time.Second)
	resp, _ = srvDo(t, c, http.MethodGet, url, "", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

func TestRateLimitHeadersOff(t *testing.T) {
	l, _ := srvTestLimiter(t)
	h := RateLimit(l, WithRateLimitHeaders(false))(http.HandlerFunc(srvOK))
	for i := range 11 {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
		require.Empty(t, rec.Header().Values("RateLimit"))
		require.Empty(t, rec.Header().Values("RateLimit-Policy"))
		if i == 10 {
			require.Equal(t, http.StatusTooManyRequests, rec.Code)
			require.Equal(t, "6", rec.Header().Get("Retry-After"))
		}
	}
}

func TestRateLimitPolicyNameIsQuoted(t *testing.T) {
	l, _ := srvTestLimiter(t, ratelimit.WithPolicy(`per "key" \ burst`))
	rec := httptest.NewRecorder()
	RateLimit(l)(http.HandlerFunc(srvOK)).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	policy, _ := srvParseRateLimit(t, rec.Header(), "RateLimit-Policy")
	require.Equal(t, `per "key" \ burst`, policy)
	policy, _ = srvParseRateLimit(t, rec.Header(), "RateLimit")
	require.Equal(t, `per "key" \ burst`, policy)
}

func TestRateLimitUnlimitedPolicyHasNoWindow(t *testing.T) {
	l := ratelimit.NewLocal("inf", rate.Inf, 5)
	rec := httptest.NewRecorder()
	RateLimit(l)(http.HandlerFunc(srvOK)).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	_, p := srvParseRateLimit(t, rec.Header(), "RateLimit-Policy")
	require.NotContains(t, p, "w")
}

func TestRateLimitKeyedSeparately(t *testing.T) {
	l, _ := srvTestLimiter(t)
	h := RateLimit(l, WithKey(KeyByHeader("X-API-Key")))(http.HandlerFunc(srvOK))
	send := func(key string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		if key != "" {
			req.Header.Set("X-API-Key", key)
		}
		h.ServeHTTP(rec, req)
		return rec
	}
	for range 10 {
		require.Equal(t, http.StatusOK, send("alice").Code)
	}
	require.Equal(t, http.StatusTooManyRequests, send("alice").Code)
	require.Equal(t, http.StatusOK, send("bob").Code)

	rec := send("")
	srvRequireProblem(t, rec.Result(), rec.Body.String(), http.StatusBadRequest, TypeBadRequest, ErrNoKey.Error())
}

type srvLimiterFunc func(ctx context.Context, key string, cost int) (ratelimit.Decision, error)

func (f srvLimiterFunc) Allow(ctx context.Context, key string, cost int) (ratelimit.Decision, error) {
	return f(ctx, key, cost)
}

func TestRateLimitStoreErrorIs503WithoutDetail(t *testing.T) {
	l := srvLimiterFunc(func(context.Context, string, int) (ratelimit.Decision, error) {
		return ratelimit.Decision{Policy: "shared", Limit: 100, Window: time.Minute},
			errors.New("redis: dial tcp 10.1.2.3:6379: connection refused")
	})
	ran := false
	url, c := srvTestServer(t, RateLimit(l)(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { ran = true })))
	resp, body := srvDo(t, c, http.MethodGet, url, "", nil)
	srvRequireProblem(t, resp, body, http.StatusServiceUnavailable, TypeRateLimitUnavailable, "redis", "10.1.2.3")
	require.False(t, ran)
	policy, p := srvParseRateLimit(t, resp.Header, "RateLimit-Policy")
	require.Equal(t, "shared", policy)
	require.Equal(t, map[string]int64{"q": 100, "w": 60}, p)
}

func TestRateLimitPolicyChangeIsSeen(t *testing.T) {
	limit := 100
	l := srvLimiterFunc(func(context.Context, string, int) (ratelimit.Decision, error) {
		return ratelimit.Decision{Allowed: true, Policy: "p", Limit: limit, Window: time.Minute, Remaining: 1}, nil
	})
	h := RateLimit(l)(http.HandlerFunc(srvOK))
	for _, want := range []int{100, 50} {
		limit = want
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
		_, p := srvParseRateLimit(t, rec.Header(), "RateLimit-Policy")
		require.Equal(t, int64(want), p["q"])
	}
}
