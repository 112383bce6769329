package httpmw

import (
	"net/http"
	"net/textproto"
	"slices"
	"strings"

	"github.com/bulwark-go/bulwark/breaker"
)

// Option configures the server middleware: [Breaker], [Bulkhead], [RateLimit]
// and [Idempotency]. Each option says which middleware it applies to; the
// others ignore it, so one list of options can be shared.
type Option func(*srvConfig)

// srvConfig is the union of the server middleware's settings.
type srvConfig struct {
	errorWriter func(http.ResponseWriter, *http.Request, Problem)

	// Breaker.
	classifier func(status int) breaker.Outcome

	// RateLimit.
	key              KeyFunc
	rateLimitHeaders bool

	// Idempotency.
	scope        func(*http.Request) (string, error)
	scopeWaived  bool
	route        func(*http.Request) string
	methods      []string
	maxBody      int64
	maxResponse  int
	replay       []string
	fingerprints []string
}

func srvNewConfig(opts []Option) *srvConfig {
	c := &srvConfig{
		errorWriter:      WriteProblem,
		classifier:       DefaultStatusClassifier,
		rateLimitHeaders: true,
		methods:          []string{http.MethodPost, http.MethodPatch},
		maxResponse:      DefaultMaxStoredResponse,
		replay:           srvDefaultReplay,
	}
	for _, o := range opts {
		if o != nil {
			o(c)
		}
	}
	return c
}

// WithErrorWriter replaces the function that writes the response of a
// rejected request (all middleware). The middleware sets Retry-After and,
// for [RateLimit], the RateLimit header fields on w before calling f, which
// may change them. The default is [WriteProblem]. A nil f restores it.
func WithErrorWriter(f func(w http.ResponseWriter, r *http.Request, p Problem)) Option {
	return func(c *srvConfig) {
		if f == nil {
			f = WriteProblem
		}
		c.errorWriter = f
	}
}

// WithStatusClassifier sets how [Breaker] counts a response by its status
// code. The default is [DefaultStatusClassifier]. A nil f restores it.
func WithStatusClassifier(f func(status int) breaker.Outcome) Option {
	return func(c *srvConfig) {
		if f == nil {
			f = DefaultStatusClassifier
		}
		c.classifier = f
	}
}

// DefaultStatusClassifier counts a 5xx status as a [breaker.Failure] and any
// other as a [breaker.Success].
func DefaultStatusClassifier(status int) breaker.Outcome {
	if status >= 500 {
		return breaker.Failure
	}
	return breaker.Success
}

// Chain composes middleware, outermost first: Chain(a, b, c)(h) is
// a(b(c(h))), so a request meets a first. Nil middleware is skipped.
//
// A sensible order for a server is
//
//	Chain(RateLimit(l), Bulkhead(bh), Breaker(b))(mux)
//
// the cheapest, per-client refusal first, and the bulkhead before the breaker
// so that requests waiting for a slot hold no breaker permit. [Idempotency]
// goes on the routes it protects, inside the mux (where r.Pattern is set),
// and so inside the others: a rejected request never touches the idempotency
// store, and a replay is served only to admitted requests. A rejection by a
// bulwark middleware inside a Breaker is not counted as a failure.
func Chain(mws ...func(http.Handler) http.Handler) func(http.Handler) http.Handler {
	mws = slices.DeleteFunc(slices.Clone(mws), func(m func(http.Handler) http.Handler) bool { return m == nil })
	return func(h http.Handler) http.Handler {
		for i := len(mws) - 1; i >= 0; i-- {
			h = mws[i](h)
		}
		return h
	}
}

// srvCanonical returns the canonical forms of header names.
func srvCanonical(names []string) []string {
	out := make([]string, 0, len(names))
	for _, n := range names {
		n = textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(n))
		if n != "" && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}
