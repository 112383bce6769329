package httpmw

import (
	"net/http"
	"sync/atomic"
	"time"

	"github.com/bulwark-go/bulwark/ratelimit"
)

// WithKey sets how [RateLimit] keys a request. The default is KeyByIP(): the
// peer's address, ignoring forwarding headers. A nil f restores it.
func WithKey(f KeyFunc) Option {
	return func(c *srvConfig) {
		if f == nil {
			f = KeyByIP()
		}
		c.key = f
	}
}

// WithRateLimitHeaders turns the RateLimit and RateLimit-Policy header fields
// of [RateLimit] on (the default) or off. Retry-After on a 429 is sent
// either way.
func WithRateLimitHeaders(on bool) Option {
	return func(c *srvConfig) { c.rateLimitHeaders = on }
}

// RateLimit returns middleware that spends one unit of l's quota for each
// request, keyed by the [KeyFunc] of [WithKey] (default: the client IP, see
// [KeyByIP]).
//
// A denied request gets 429 Too Many Requests with Retry-After (the
// decision's RetryAfter in seconds rounded up, at least 1) and a problem of
// type [TypeRateLimited]; the handler does not run. A request that cannot be
// keyed gets 400 with [TypeBadRequest]; when l cannot decide (an error, such
// as a shared store that fails closed) the answer is 503 with
// [TypeRateLimitUnavailable]. The error text never reaches the client.
//
// Every response, allowed or denied, carries the header fields of
// draft-ietf-httpapi-ratelimit-headers as RFC 8941 structured fields, unless
// [WithRateLimitHeaders](false):
//
//	RateLimit-Policy: "default";q=100;w=60
//	RateLimit: "default";r=42;t=17
//
// with the policy name, the quota (q), the window in seconds (w, left out for
// an unlimited limiter), the units remaining (r) and the seconds until the
// quota is full again (t), all whole seconds rounded up. The fields are set
// before the handler runs, so the handler may change or remove them. The
// policy field is built once per distinct policy and reused; the RateLimit
// field costs two small allocations per request. The ResponseWriter is
// passed on unwrapped.
func RateLimit(l ratelimit.Limiter, opts ...Option) func(http.Handler) http.Handler {
	if l == nil {
		panic("httpmw: RateLimit needs a ratelimit.Limiter")
	}
	c := srvNewConfig(opts)
	if c.key == nil {
		c.key = KeyByIP()
	}
	m := &srvRateLimit{cfg: c, limiter: l}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if m.srvAdmit(w, r) {
				next.ServeHTTP(w, r)
			}
		})
	}
}

type srvRateLimit struct {
	cfg     *srvConfig
	limiter ratelimit.Limiter
	policy  atomic.Pointer[srvPolicyValue]
}

// srvPolicyValue is a formatted RateLimit-Policy field and what it was
// formatted from.
type srvPolicyValue struct {
	policy string
	limit  int
	window time.Duration
	value  string
}

// srvPolicyField returns the RateLimit-Policy value for d, formatting it
// only when the policy changed since the last call.
func (m *srvRateLimit) srvPolicyField(d *ratelimit.Decision) string {
	if p := m.policy.Load(); p != nil && p.policy == d.Policy && p.limit == d.Limit && p.window == d.Window {
		return p.value
	}
	var buf [64]byte
	p := &srvPolicyValue{
		policy: d.Policy, limit: d.Limit, window: d.Window,
		value: string(srvAppendPolicy(buf[:0], d.Policy, d.Limit, d.Window)),
	}
	m.policy.Store(p)
	return p.value
}

// srvAdmit decides on r; it answers the request itself and returns false
// when the handler must not run.
func (m *srvRateLimit) srvAdmit(w http.ResponseWriter, r *http.Request) bool {
	key, err := m.cfg.key(r)
	if err != nil {
		m.cfg.srvReject(w, r, Problem{
			Type:   TypeBadRequest,
			Title:  "Bad request",
			Status: http.StatusBadRequest,
			Detail: "The request lacks what the rate limit is keyed on.",
			Err:    err,
		})
		return false
	}
	d, err := m.limiter.Allow(r.Context(), key, 1)
	if err != nil {
		if m.cfg.rateLimitHeaders && d.Policy != "" {
			w.Header()[srvHeaderRateLimitPolicy] = []string{m.srvPolicyField(&d)}
		}
		m.cfg.srvReject(w, r, Problem{
			Type:   TypeRateLimitUnavailable,
			Title:  "Rate limit unavailable",
			Status: http.StatusServiceUnavailable,
			Detail: "The rate limit could not be checked.",
			Err:    err,
		})
		return false
	}
	if m.cfg.rateLimitHeaders {
		var buf [64]byte
		vals := make([]string, 2)
		vals[0] = m.srvPolicyField(&d)
		vals[1] = string(srvAppendRateLimit(buf[:0], d.Policy, d.Remaining, d.Reset))
		h := w.Header()
		h[srvHeaderRateLimitPolicy] = vals[0:1:1]
		h[srvHeaderRateLimit] = vals[1:2:2]
	}
	if d.Allowed {
		return true
	}
	m.cfg.srvReject(w, r, Problem{
		Type:       TypeRateLimited,
		Title:      "Too many requests",
		Status:     http.StatusTooManyRequests,
		Detail:     "The request rate exceeds the limit; retry after the time given in Retry-After.",
		RetryAfter: max(d.RetryAfter, time.Second),
		Err:        &ratelimit.LimitedError{Decision: d},
	})
	return false
}
