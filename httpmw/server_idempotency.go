package httpmw

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/dunglas/httpsfv"

	"github.com/bulwark-go/bulwark/idempotency"
)

// DefaultMaxStoredResponse is the largest response body, in bytes, that
// [Idempotency] stores for replay unless [WithMaxStoredResponse] says
// otherwise: 1 MiB.
const DefaultMaxStoredResponse = 1 << 20

// srvDefaultReplay are the header fields replayed by default.
var srvDefaultReplay = []string{
	"Content-Type", "Content-Language", "Content-Encoding", "Content-Location",
	"Content-Disposition", "Location", "Etag", "Last-Modified", "Cache-Control",
	"Expires", "Vary", "Link",
}

// srvNeverReplay are header fields that are never stored: credentials and
// session state of the first caller, and fields that net/http or the replay
// itself computes.
var srvNeverReplay = []string{
	"Set-Cookie", "Set-Cookie2", "Cookie", "Authorization", "Proxy-Authorization",
	"Www-Authenticate", "Proxy-Authenticate", "Authentication-Info",
	"Proxy-Authentication-Info", "Content-Length", "Transfer-Encoding",
	"Connection", "Keep-Alive", "Upgrade", "Trailer", "Te", "Date",
	srvHeaderReplayed, srvHeaderInFlight,
}

// srvSensitive reports whether a canonical header name must never be
// replayed: listed in srvNeverReplay, or naming a cookie, credential, token,
// secret or session.
func srvSensitive(name string) bool {
	if slices.Contains(srvNeverReplay, name) {
		return true
	}
	l := strings.ToLower(name)
	for _, s := range []string{"cookie", "auth", "token", "secret", "session", "api-key", "apikey", "password"} {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

// WithScope sets the function that names the principal (an account, a
// tenant, an API key id) an idempotency key belongs to, for [Idempotency]:
// the same key from two scopes never shares a response. An error answers 403
// with [TypeIdempotencyScope]. [Idempotency] requires WithScope or
// [WithoutScope].
func WithScope(f func(r *http.Request) (string, error)) Option {
	return func(c *srvConfig) { c.scope = f; c.scopeWaived = false }
}

// WithoutScope waives [WithScope] for [Idempotency]: all callers share one
// key space, so a caller who learns or guesses another's key gets that
// caller's response. Use it only when the service has a single principal or
// keys are unguessable and private.
func WithoutScope() Option {
	return func(c *srvConfig) { c.scope = nil; c.scopeWaived = true }
}

// WithRoute sets how [Idempotency] names the operation a key applies to.
// The default is r.Pattern when a ServeMux has set it (the middleware then
// sits inside the mux: wrap each route's handler, not the mux), and
// r.URL.Path otherwise. The route is part of the key's identity, and the
// request's target (path and query) is part of its fingerprint. So under a
// pattern such as "POST /orders/{id}" one key sent to /orders/1 and then to
// /orders/2 is a mismatch (422); with r.URL.Path as the route they are two
// independent keys and both run. The r.URL.Path fallback has one value per
// resource (high cardinality); that is safe because the route is only hashed
// into the stored key, never used as a metric label, but a custom route
// function should still return a small set of names, such as patterns.
func WithRoute(f func(r *http.Request) string) Option {
	return func(c *srvConfig) { c.route = f }
}

// WithIdempotencyMethods sets the methods [Idempotency] guards; requests
// with other methods pass through. Default: POST and PATCH.
func WithIdempotencyMethods(methods ...string) Option {
	return func(c *srvConfig) { c.methods = slices.Clone(methods) }
}

// WithMaxRequestBody bounds the request body [Idempotency] reads to
// fingerprint it; a longer body is answered with 413 and [TypeBodyTooLarge].
// Zero or less means idempotency.DefaultMaxBody (1 MiB).
func WithMaxRequestBody(n int64) Option {
	return func(c *srvConfig) { c.maxBody = n }
}

// WithMaxStoredResponse bounds the response body [Idempotency] stores for
// replay; see [Idempotency] for what happens to a larger response. Zero or
// less means [DefaultMaxStoredResponse].
func WithMaxStoredResponse(n int) Option {
	return func(c *srvConfig) {
		if n <= 0 {
			n = DefaultMaxStoredResponse
		}
		c.maxResponse = n
	}
}

// WithReplayHeaders replaces the header fields [Idempotency] stores with a
// response and replays. The default list is Content-Type, Content-Language,
// Content-Encoding, Content-Location, Content-Disposition, Location, ETag,
// Last-Modified, Cache-Control, Expires, Vary and Link. Fields carrying the
// first caller's credentials or session can never be replayed: Set-Cookie,
// Authorization, WWW-Authenticate and the like, and any name containing
// "cookie", "auth", "token", "secret", "session", "api-key", "apikey" or
// "password"; neither can the fields net/http computes (Content-Length,
// Transfer-Encoding, Date, ...). Naming one panics at construction. The list
// also picks the trailers stored and replayed, as trailers.
func WithReplayHeaders(names ...string) Option {
	return func(c *srvConfig) { c.replay = slices.Clone(names) }
}

// WithFingerprintHeaders names request header fields that [Idempotency]
// hashes into the request's fingerprint along with the method, route and
// body, so that a repeat with other values is a mismatch (422). Default:
// none.
func WithFingerprintHeaders(names ...string) Option {
	return func(c *srvConfig) { c.fingerprints = slices.Clone(names) }
}

// Idempotency returns middleware that makes requests carrying an
// Idempotency-Key take effect once, with g's protocol (see the idempotency
// package for the semantics and the stores).
//
// It guards POST and PATCH requests ([WithIdempotencyMethods]). The key is
// read from the Idempotency-Key header as an RFC 8941 sf-string
// (Idempotency-Key: "8e03978e-40d5"), and a bare value without quotes is
// accepted too. A request with a key has its body read (up to
// [WithMaxRequestBody]) and fingerprinted with its method, route
// ([WithRoute]) and the [WithFingerprintHeaders] fields; the handler then
// reads the same bytes from a fresh body. The key is scoped with the
// [WithScope] function: construction panics unless WithScope or
// [WithoutScope] is given.
//
// Answers, as the idempotency package maps them:
//
//	first request           handler runs; its response is stored
//	repeat after completion stored status, headers and body, plus Idempotent-Replayed: true
//	repeat while running    409 Conflict, Retry-After: 1 (idempotency.InFlightPoll),
//	                        Idempotent-In-Flight: true, TypeIdempotencyInFlight
//	key used for another
//	  request               422 Unprocessable Content, TypeIdempotencyKeyReused
//	key missing (when g
//	  requires one)         400, TypeIdempotencyKeyMissing
//	key malformed           400, TypeIdempotencyKeyInvalid
//	body too large          413 Content Too Large, TypeBodyTooLarge
//	scope function error    403 Forbidden, TypeIdempotencyScope
//	store down, fail closed 503, TypeIdempotencyUnavailable
//	repeat of a response
//	  that was not stored   409 Conflict, Idempotent-Replayed: true,
//	                        TypeIdempotencyNotReplayable
//
// The response is stored with its status, the allowlisted header fields
// ([WithReplayHeaders]; never Set-Cookie) as they stood when the header was
// written, and its body, while it goes to the client unchanged. Whether a
// status is stored is g's choice (idempotency.WithRemember; by default 5xx is
// not stored). A response that cannot be replayed — a body larger than
// [WithMaxStoredResponse] or than the store holds, a handler that flushes
// (streaming), a hijacked connection — goes to the client unchanged, and
// only its status is stored ([idempotency.NotReplayable]): a repeat gets 409
// Conflict, [TypeIdempotencyNotReplayable], marked Idempotent-Replayed: true,
// and the handler does not run twice. The key is released, so that a retry
// runs the handler again, after a status g does not remember, a rejection by
// a bulwark middleware inside this one, and a handler that panics before
// writing anything (the panic continues after the release; one after the
// handler began its response, such as http.ErrAbortHandler, is recorded as
// not replayable when g remembers its status). The status of a hijacked connection is not known, and it is
// recorded as not replayable whatever the handler wrote. The store is
// written with a context that outlives the client, so a client that hangs up
// does not leave its key locked; a failure to store is not reported to the
// client, whose response has already been sent.
//
// The handler gets a wrapped ResponseWriter with the same optional interfaces
// as [Breaker]'s.
func Idempotency(g *idempotency.Guard, opts ...Option) func(http.Handler) http.Handler {
	if g == nil {
		panic("httpmw: Idempotency needs an *idempotency.Guard")
	}
	c := srvNewConfig(opts)
	if c.scope == nil && !c.scopeWaived {
		panic("httpmw: Idempotency needs WithScope(func) naming the principal a key belongs to, " +
			"or WithoutScope() to let all callers share one key space")
	}
	c.replay = srvCanonical(c.replay)
	for _, n := range c.replay {
		if srvSensitive(n) {
			panic(fmt.Sprintf("httpmw: WithReplayHeaders: %q is never replayed", n))
		}
	}
	c.fingerprints = srvCanonical(c.fingerprints)
	if c.route == nil {
		c.route = srvDefaultRoute
	}
	m := &srvIdempotency{cfg: c, guard: g}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			m.srvServe(next, w, r)
		})
	}
}

func srvDefaultRoute(r *http.Request) string {
	if r.Pattern != "" {
		return r.Pattern
	}
	return r.URL.Path
}

type srvIdempotency struct {
	cfg   *srvConfig
	guard *idempotency.Guard
}

// srvParseIdempotencyKey returns the key of an Idempotency-Key header: ""
// when absent, an sf-string's content, or a bare value as is (which
// idempotency.ValidateKey checks later). ok is false for a header that is
// present but not a key: repeated, empty, or a malformed or non-string
// structured item.
func srvParseIdempotencyKey(vals []string) (key string, ok bool) {
	switch {
	case len(vals) == 0:
		return "", true
	case len(vals) > 1:
		return "", false
	}
	v := strings.TrimSpace(vals[0])
	if v == "" {
		return "", false
	}
	if v[0] != '"' {
		return v, true
	}
	item, err := httpsfv.UnmarshalItem([]string{v})
	if err != nil {
		return "", false
	}
	s, isString := item.Value.(string)
	if !isString || s == "" {
		return "", false
	}
	return s, true
}

func (m *srvIdempotency) srvServe(next http.Handler, w http.ResponseWriter, r *http.Request) {
	c := m.cfg
	if !slices.Contains(c.methods, r.Method) {
		next.ServeHTTP(w, r)
		return
	}
	key, ok := srvParseIdempotencyKey(r.Header[srvHeaderIdempotencyKey])
	if !ok {
		c.srvReject(w, r, Problem{
			Type:   TypeIdempotencyKeyInvalid,
			Title:  "Malformed idempotency key",
			Status: http.StatusBadRequest,
			Detail: "Idempotency-Key must be one structured-field string or token of 1 to 255 visible ASCII characters.",
			Err:    idempotency.ErrInvalidKey,
		})
		return
	}
	req := idempotency.Request{Method: r.Method, Route: c.route(r), Key: key}
	if key != "" {
		var err error
		if c.scope != nil {
			if req.Scope, err = c.scope(r); err != nil {
				c.srvReject(w, r, Problem{
					Type:   TypeIdempotencyScope,
					Title:  "No scope for the idempotency key",
					Status: http.StatusForbidden,
					Detail: "The request has no principal that the idempotency key could belong to.",
					Err:    err,
				})
				return
			}
		}
		var body []byte
		req.Fingerprint, body, err = idempotency.ReadFingerprint(r.Method, req.Route, m.srvFingerprintFields(r), r.Body, c.maxBody, nil)
		if err != nil {
			m.srvBodyError(w, r, err)
			return
		}
		r2 := new(http.Request)
		*r2 = *r
		r2.Body = io.NopCloser(bytes.NewReader(body))
		r2.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		r2.ContentLength = int64(len(body))
		r2.TransferEncoding = nil
		r = r2
	}
	out, err := m.guard.Begin(r.Context(), req)
	if err != nil {
		m.srvBeginError(w, r, err)
		return
	}
	switch {
	case out.Result == idempotency.ResultReplayed && !out.Response.Replayable():
		w.Header().Set(srvHeaderReplayed, "true")
		c.srvReject(w, r, Problem{
			Type:   TypeIdempotencyNotReplayable,
			Title:  "Response not replayable",
			Status: http.StatusConflict,
			Detail: "A request with this idempotency key was already processed; its response was not stored and cannot be sent again.",
		})
		return
	case out.Result == idempotency.ResultReplayed:
		srvReplay(w, out.Response)
		return
	case !out.Run():
		c.srvReject(w, r, Problem{
			Type:   TypeIdempotencyUnavailable,
			Title:  "Idempotency unavailable",
			Status: http.StatusServiceUnavailable,
			Detail: "The idempotency key could not be checked.",
		})
		return
	case out.Lease == nil:
		next.ServeHTTP(w, r)
		return
	}
	sw := &srvWriter{rw: w, capturing: true, capLimit: c.maxResponse, capNames: c.replay}
	ctx := context.WithoutCancel(r.Context())
	lease := out.Lease
	done := false
	defer func() {
		switch {
		case done:
		case sw.status != 0 || sw.hijacked:
			// A panic after the handler began its response, such as
			// http.ErrAbortHandler from a ReverseProxy whose client left
			// mid-stream. Part of it may have reached the client (net/http
			// sends a body that outgrows its buffer without a Flush): the
			// handler ran, and a repeat must not run it again, unless its
			// status is one g does not remember. The panic continues.
			_ = lease.Finish(ctx, idempotency.NotReplayable(sw.srvStatus()))
		default:
			// The handler wrote nothing: let a retry run it.
			_ = lease.Release(ctx)
		}
	}()
	next.ServeHTTP(sw, r)
	done = true
	if sw.status == 0 {
		// Nothing written: net/http sends 200 with the header as it stands.
		sw.srvRecordHeader(http.StatusOK)
	}
	if sw.rejected { // the handler did not run
		_ = lease.Release(ctx)
		return
	}
	if sw.flushed || sw.capOver || sw.hijacked {
		// The handler ran, and a repeat must not run it again.
		_ = lease.Finish(ctx, idempotency.NotReplayable(sw.srvStatus()))
		return
	}
	sw.srvCaptureTrailers()
	_ = lease.Finish(ctx, idempotency.Response{Status: sw.srvStatus(), Header: sw.capHeader, Body: sw.capBody})
}

// srvFingerprintFields returns what, besides method, route and body,
// identifies the request: its target (path and query, so that one key sent to
// two resources under one route pattern is a mismatch, not a replay of the
// other's response) and the configured header fields.
func (m *srvIdempotency) srvFingerprintFields(r *http.Request) []idempotency.Field {
	fields := make([]idempotency.Field, 1, 1+len(m.cfg.fingerprints))
	fields[0] = idempotency.Field{Name: ":target", Value: r.URL.RequestURI()}
	for _, name := range m.cfg.fingerprints {
		for _, v := range r.Header[name] {
			fields = append(fields, idempotency.Field{Name: name, Value: v})
		}
	}
	return fields
}

func (m *srvIdempotency) srvBodyError(w http.ResponseWriter, r *http.Request, err error) {
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok || errors.Is(err, idempotency.ErrBodyTooLarge) {
		m.cfg.srvReject(w, r, Problem{
			Type:   TypeBodyTooLarge,
			Title:  "Request body too large",
			Status: http.StatusRequestEntityTooLarge,
			Detail: "The request body exceeds the size this endpoint accepts for idempotent requests.",
			Err:    err,
		})
		return
	}
	m.cfg.srvReject(w, r, Problem{
		Type:   TypeBadRequest,
		Title:  "Bad request",
		Status: http.StatusBadRequest,
		Detail: "The request body could not be read.",
		Err:    err,
	})
}

func (m *srvIdempotency) srvBeginError(w http.ResponseWriter, r *http.Request, err error) {
	p := Problem{Err: err}
	switch {
	case errors.Is(err, idempotency.ErrMissingKey):
		p.Type, p.Status, p.Title = TypeIdempotencyKeyMissing, http.StatusBadRequest, "Idempotency key required"
		p.Detail = "This endpoint requires an Idempotency-Key header."
	case errors.Is(err, idempotency.ErrInvalidKey):
		p.Type, p.Status, p.Title = TypeIdempotencyKeyInvalid, http.StatusBadRequest, "Malformed idempotency key"
		p.Detail = "Idempotency-Key must be 1 to 255 visible ASCII characters."
	case errors.Is(err, idempotency.ErrInFlight):
		p.Type, p.Status, p.Title = TypeIdempotencyInFlight, http.StatusConflict, "Request in progress"
		p.Detail = "A request with this idempotency key is still being processed; retry after the time given in Retry-After."
		p.RetryAfter = srvRetryAfter(err)
		// The mark a client goes by, whatever the error writer: a 409 of
		// the handler's own is its answer, this one is not (see Transport).
		w.Header().Set(srvHeaderInFlight, "true")
	case errors.Is(err, idempotency.ErrMismatch):
		p.Type, p.Status, p.Title = TypeIdempotencyKeyReused, http.StatusUnprocessableEntity, "Idempotency key reused"
		p.Detail = "This idempotency key was used for a different request."
	default:
		p.Type, p.Status, p.Title = TypeIdempotencyUnavailable, http.StatusServiceUnavailable, "Idempotency unavailable"
		p.Detail = "The idempotency key could not be checked."
	}
	m.cfg.srvReject(w, r, p)
}

// srvReplay writes a stored response, marked as a replay. Stored fields
// replace any the middleware in front set under the same name.
func srvReplay(w http.ResponseWriter, resp idempotency.Response) {
	h := w.Header()
	var trailers []idempotency.Field // stored under http.TrailerPrefix
	for _, f := range resp.Header {
		if name, ok := strings.CutPrefix(f.Name, http.TrailerPrefix); ok {
			if !slices.ContainsFunc(trailers, func(t idempotency.Field) bool { return t.Name == name }) {
				h.Add("Trailer", name) // declared, as net/http documents
			}
			trailers = append(trailers, idempotency.Field{Name: name, Value: f.Value})
		}
	}
	for _, f := range resp.Header {
		h.Del(f.Name)
	}
	for _, f := range trailers {
		h.Del(f.Name)
	}
	for _, f := range resp.Header {
		if !strings.HasPrefix(f.Name, http.TrailerPrefix) {
			h.Add(f.Name, f.Value)
		}
	}
	h.Set(srvHeaderReplayed, "true")
	if srvBodyAllowed(resp.Status) && len(trailers) == 0 { // trailers need chunking in HTTP/1.1
		h.Set("Content-Length", strconv.Itoa(len(resp.Body)))
	}
	w.WriteHeader(resp.Status)
	if len(resp.Body) > 0 && srvBodyAllowed(resp.Status) {
		_, _ = w.Write(resp.Body)
	}
	for _, f := range trailers {
		h.Del(f.Name) // a value stored as a header field too went out already
	}
	for _, f := range trailers {
		h.Add(f.Name, f.Value)
	}
}

func srvBodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}
