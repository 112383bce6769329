package httpmw

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/bulwark-go/bulwark"
	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/retry"
)

// Defaults of a Transport built without the corresponding option.
const (
	// DefaultMaxRetryAfter is the longest wait a server (Retry-After) or a
	// breaker's hint can ask of a retry; see [WithMaxRetryAfter].
	DefaultMaxRetryAfter = 10 * time.Second
	// DefaultMaxReplayBody is the largest request body without GetBody that
	// the transport buffers so that it can send it again; see
	// [WithMaxReplayBody].
	DefaultMaxReplayBody = 1 << 20
	// DefaultMaxBreakerHosts is the number of hosts that get a breaker of
	// their own when [WithBreakers] is given maxHosts ≤ 0.
	DefaultMaxBreakerHosts = 64
)

// IdempotencyKeyHeader is the request header field of the IETF
// Idempotency-Key draft; a request that carries it may be retried whatever
// its method.
const IdempotencyKeyHeader = "Idempotency-Key"

// ClientLimiter delays a request until a rate limit lets it go.
// [*ratelimit.Local] implements it: its Wait blocks until key's bucket holds a
// token, and fails with ctx's error, or at once with a *ratelimit.LimitedError
// when ctx's deadline comes before the token would.
type ClientLimiter interface {
	Wait(ctx context.Context, key string) error
}

// TransportOption configures a [Transport].
type TransportOption func(*Transport)

// Transport is an [http.RoundTripper] that sends requests through a base
// RoundTripper under a retry policy, a circuit breaker per upstream host, a
// bulkhead and a client-side rate limit. Each is off until its option turns
// it on, so NewTransport(nil) with no options passes every request to
// http.DefaultTransport unchanged.
//
// # Composition
//
// For each request, RoundTrip runs
//
//	retry loop (WithRetry; a single attempt when off or the request is not retryable)
//	  per attempt:
//	    1. rate limit wait (WithRateLimit), on the caller's context
//	    2. bulkhead slot (WithBulkhead), on the caller's context
//	    3. breaker permit of the request's host (WithBreakers)
//	    4. base.RoundTrip, on the attempt's context (retry.WithAttemptTimeout)
//
// The retry loop is outermost so that every attempt asks the limiter, the
// bulkhead and the breaker again, and their rejections — which carry
// retry-after hints — pace the retries (as bulwark.Chain(retry, breaker)
// does). The rate limit is taken per attempt, not per logical request,
// because every attempt is a request the upstream counts. The waits (rate
// limit, bulkhead queue) come before the breaker permit so that the breaker
// measures the upstream's time only and a half-open probe is never spent
// sitting in a queue; the attempt timeout likewise starts after them. The
// bulkhead slot is held until the response body is closed or read to the
// end: until then the request still occupies a connection. The breaker's
// outcome is reported when the response headers arrive. A request that is not
// retryable (see below) runs on the caller's context, without the attempt
// timeout: ending it sooner would bring no retry, only an earlier error.
//
// # Retries
//
// A request is retried when retries are on and it is idempotent: its method
// is GET, HEAD, OPTIONS, TRACE, PUT or DELETE, or it carries an
// Idempotency-Key header, or it is a POST or PATCH to which the transport
// adds an Idempotency-Key (see [WithIdempotencyKeys]; on by default with
// retries). An X-Idempotency-Key header alone does not make a request
// retryable: [Idempotency] does not read it, so a retry could run the effect
// twice; the transport adds an Idempotency-Key beside it, when it adds keys.
// The body must be replayable: through Request.GetBody (set by
// http.NewRequest for in-memory bodies), or buffered by the transport when it
// is at most [WithMaxReplayBody] bytes; a longer body is sent once, without
// retries.
//
// An attempt failed when the base transport returned an error (a reset or
// refused connection, an attempt timeout — but not the caller's context
// ending, and not a TLS certificate error), when a limiter, bulkhead or
// breaker refused it, or when the response status is retryable (429, 502,
// 503, 504 by default; [WithRetryableStatus]), or when a request with an
// idempotency key is told that the first request with that key still runs
// (409 Conflict marked Idempotent-In-Flight: true, as [Idempotency] answers),
// which a retry after a timed-out attempt often is. A retryable status
// becomes a [*StatusError] for the retry policy, carrying the response's
// Retry-After (both forms, see [ParseRetryAfter]) as a [bulwark.Hint], so
// that the next wait is what the server asked for. A hint longer than [WithMaxRetryAfter]
// — from Retry-After or from an open breaker — stops retrying at once rather
// than waiting less than asked (which would fail again) or more than the
// caller accepts. The retry policy decides everything else: attempts,
// backoff, budget, elapsed cap, and it never retries once the caller's
// context has ended.
//
// A discarded response is drained (up to 64 KiB; a body declared longer is
// just closed) and closed before the wait, so its connection returns to the
// pool and the retry reuses it. The drain is bounded in time by the attempt's
// context: give the retry policy an attempt timeout when an upstream may
// stall in the middle of an error page. When the
// retries are over and the last attempt got a response, RoundTrip returns that
// response with its body unread and a nil error, as any transport would: the
// caller sees the 503, not a synthetic error. When the last attempt got no
// response, RoundTrip returns the retry policy's [*retry.Error], which wraps
// the last attempt's error (errors.Is(err, breaker.ErrOpen) and the like
// work through it, and through the *url.Error that http.Client adds).
//
// The response body stays readable after RoundTrip returns: the attempt's
// context (with retry.WithAttemptTimeout) is released only when the body is
// closed or read to the end. Like http.Client.Timeout, the attempt timeout
// keeps running while the body is read.
//
// Each attempt sends a shallow copy of the request with its own context, body
// and, for an added key, its own header; the caller's request is never
// modified. The first attempt of a request that needs none of that is sent as
// is.
//
// # Breakers
//
// With [WithBreakers] every upstream (scheme, host and port) gets a breaker of
// its own, up to a bound; see there. A response counts by status: 5xx is a
// failure; 429 is ignored (the upstream is alive and asks this client to slow
// down, which the rate limit and Retry-After handle; counting it would let a
// quota open the breaker against every caller); any other status is a
// success. A transport error counts through the breaker's classifier, except
// when the caller's own context ended, which is ignored. An open breaker
// rejects an attempt with an error matching breaker.ErrOpen; its hint, the
// time until a probe, paces the retry when it is at most [WithMaxRetryAfter],
// and ends retrying otherwise.
//
// A Transport is safe for concurrent use. Its zero value is not usable: build
// one with [NewTransport].
type Transport struct {
	base          http.RoundTripper
	retry         *retry.Policy
	breakers      *trBreakers
	bulkhead      *bulkhead.Bulkhead
	limiter       ClientLimiter
	limitKey      func(*http.Request) string
	newKey        func() string
	keySet        bool
	status        trStatusSet
	maxRetryAfter time.Duration
	maxReplayBody int64
}

// NewTransport returns a Transport that sends requests through base, or
// http.DefaultTransport when base is nil.
func NewTransport(base http.RoundTripper, opts ...TransportOption) *Transport {
	if base == nil {
		base = http.DefaultTransport
	}
	t := &Transport{
		base:          base,
		maxRetryAfter: DefaultMaxRetryAfter,
		maxReplayBody: DefaultMaxReplayBody,
	}
	t.status.add(http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout)
	for _, o := range opts {
		if o != nil {
			o(t)
		}
	}
	if !t.keySet {
		t.newKey = trNewKey
	}
	if t.limiter != nil && t.limitKey == nil {
		t.limitKey = trHostOf
	}
	return t
}

// WithRetry retries failed attempts under p; see [Transport] for what is
// retried. Nil, the default, turns retries off.
func WithRetry(p *retry.Policy) TransportOption {
	return func(t *Transport) { t.retry = p }
}

// WithBreakers gives every upstream its own circuit breaker, made by
// newBreaker when the transport first sends a request to it. An upstream is a
// scheme, host and port ("https://api.example.com:443", the string passed to
// newBreaker, and a good breaker name: it is the metrics' name label).
// newBreaker may return the same breaker for several hosts, or nil for a host
// that should have none. It is called exactly once per host, without any
// of the transport's locks held (requests to that host that arrive meanwhile
// wait for it), possibly from several goroutines at once for different hosts.
//
// The set is bounded: the first maxHosts upstreams (DefaultMaxBreakerHosts
// when maxHosts ≤ 0) keep their breakers for the transport's life; requests
// to any further host pass without a breaker. Letting them share one breaker
// instead would let one failing host cut off every other host in the
// overflow; forgetting old breakers would reset the state of a host that is
// failing right now. The bound also bounds the breakers' metric series.
// A nil newBreaker turns breakers off, the default.
func WithBreakers(newBreaker func(host string) *breaker.Breaker, maxHosts int) TransportOption {
	return func(t *Transport) {
		if newBreaker == nil {
			t.breakers = nil
			return
		}
		if maxHosts <= 0 {
			maxHosts = DefaultMaxBreakerHosts
		}
		t.breakers = trNewBreakers(newBreaker, maxHosts)
	}
}

// WithBulkhead bounds the requests in flight through the transport with b.
// A request holds its slot from before the breaker permit until its response
// body is closed or read to the end, so a caller that never closes response
// bodies leaks slots, as it leaks connections. Nil, the default, turns it off.
func WithBulkhead(b *bulkhead.Bulkhead) TransportOption {
	return func(t *Transport) { t.bulkhead = b }
}

// WithRateLimit makes every attempt wait for l to let it go, under the key
// that key returns for the request; a nil key uses the request's URL.Host
// (one bucket per upstream). A wait ended by the caller's context fails the
// request with the context's error. Nil l, the default, turns it off.
func WithRateLimit(l ClientLimiter, key func(*http.Request) string) TransportOption {
	return func(t *Transport) {
		t.limiter = l
		t.limitKey = key
	}
}

// WithIdempotencyKeys sets the generator of the Idempotency-Key the transport
// adds to a POST or PATCH that has none, so that it can be retried: newKey is
// called once per request and its result, the header field's whole value,
// is sent unchanged on every attempt (on the attempts' copies of the request,
// never on the caller's). Paired with a server that honours the key (such as
// [Idempotency]), a retried POST takes effect exactly once.
//
// The default, used while retries are on, sends a structured-field string
// (RFC 8941) of 128 random bits from crypto/rand, as the IETF draft
// specifies: Idempotency-Key: "NIKWPZ7XJHCQMOCFXBEJ3GP7SI". Nil turns
// automatic keys off: POST and PATCH are then retried only when the caller
// sets a key.
func WithIdempotencyKeys(newKey func() string) TransportOption {
	return func(t *Transport) {
		t.newKey = newKey
		t.keySet = true
	}
}

// WithRetryableStatus replaces the response status codes that are retried
// (429, 502, 503 and 504 by default). With no codes, no response is retried
// but the in-flight answer to a request with an idempotency key (see
// [Transport]), which is not a result. It panics for a code outside
// 100–599.
func WithRetryableStatus(codes ...int) TransportOption {
	var s trStatusSet
	s.add(codes...)
	return func(t *Transport) { t.status = s }
}

// WithMaxRetryAfter sets the longest wait before a retry that a hint can ask
// for: a Retry-After header of a retryable response, or the time until an
// open breaker admits a probe. A longer hint ends retrying at once (the
// response, or the breaker's error, goes to the caller). The default is
// DefaultMaxRetryAfter; zero or less removes this limit. The retry policy's
// own (retry.WithMaxHintWait, 10 s by default) stops retrying likewise, so
// the lower of the two applies.
func WithMaxRetryAfter(d time.Duration) TransportOption {
	return func(t *Transport) { t.maxRetryAfter = d }
}

// WithMaxReplayBody sets the largest request body without GetBody that the
// transport reads into memory so that it can resend it. A longer body is sent
// once, streamed, and the request is not retried. Zero or less never buffers.
// The default is DefaultMaxReplayBody.
func WithMaxReplayBody(n int64) TransportOption {
	return func(t *Transport) { t.maxReplayBody = n }
}

// StatusError is the error a retryable response status stands for in the
// retry loop: retry hooks and classifiers see it (retry.WithOnRetry,
// retry.WithClassifier), and it is wrapped in the *retry.Error of a request
// whose context ended during the wait that followed. It carries the response's
// Retry-After as its [bulwark.Hint].
type StatusError struct {
	// StatusCode is the response's status code.
	StatusCode int
	// RetryAfter is the delay the response's Retry-After asked for; zero when
	// it had none or an invalid one.
	RetryAfter time.Duration
	noRetry    bool
}

// Error returns "httpmw: upstream answered <code> <text>".
func (e *StatusError) Error() string {
	return "httpmw: upstream answered " + strconv.Itoa(e.StatusCode) + " " + http.StatusText(e.StatusCode)
}

// RetryHint returns RetryAfter as a hint, with NoRetry when it exceeds the
// transport's [WithMaxRetryAfter].
func (e *StatusError) RetryHint() bulwark.Hint {
	return bulwark.Hint{RetryAfter: e.RetryAfter, NoRetry: e.noRetry}
}

// CloseIdleConnections closes the idle connections of the base transport when
// it has such a method, so that http.Client.CloseIdleConnections works
// through a Transport.
func (t *Transport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// RoundTrip implements [http.RoundTripper]; see [Transport] for what it does.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.retry == nil {
		return t.trAttempt(req, nil, req.Body, nil)
	}
	retryable, addKey := t.trRetryableRequest(req)
	if !retryable {
		return t.trAttempt(req, nil, req.Body, nil)
	}

	body := req.Body
	var replay func() (io.ReadCloser, error)
	switch {
	case body == nil || body == http.NoBody:
	case req.GetBody != nil:
		replay = req.GetBody
	default:
		buf, once, err := trBuffer(body, t.maxReplayBody)
		if err != nil {
			return nil, err
		}
		if once != nil {
			return t.trAttempt(req, nil, once, nil)
		}
		replay = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil }
		body, _ = replay()
	}

	var header http.Header
	if addKey {
		header = req.Header.Clone()
		if header == nil {
			header = make(http.Header, 1)
		}
		header[IdempotencyKeyHeader] = []string{t.newKey()}
	}

	var l retry.Loop
	t.retry.BeginIn(req.Context(), &l, 0)
	for {
		resp, err := t.trAttempt(req, &l, body, header)
		var aerr error
		switch {
		case err != nil:
			aerr = t.trClassify(err)
		case t.status.has(resp.StatusCode), trInFlight(resp) && (addKey || trHasKey(req.Header)):
			aerr = t.trStatusError(resp)
		default:
			l.Decide(nil)
			return resp, nil
		}
		if !l.Decide(aerr) {
			if resp != nil {
				return resp, nil
			}
			return nil, l.Err()
		}
		if resp != nil {
			trDiscard(resp)
		}
		if !l.Wait() {
			return nil, l.Err()
		}
		if replay != nil {
			if body, err = replay(); err != nil {
				return nil, fmt.Errorf("httpmw: rewinding the request body for attempt %d: %w", l.Attempt(), err)
			}
		}
	}
}

// trAttempt runs one attempt: the waits, the breaker permit, the base
// transport. l is nil for a request sent once. body and header, when they
// differ from req's, go on a copy of req.
func (t *Transport) trAttempt(req *http.Request, l *retry.Loop, body io.ReadCloser, header http.Header) (*http.Response, error) {
	ctx := req.Context()
	if t.limiter != nil {
		if err := t.limiter.Wait(ctx, t.limitKey(req)); err != nil {
			trCloseReqBody(body)
			return nil, err
		}
	}
	var slot bulkhead.Permit
	if t.bulkhead != nil {
		var err error
		if slot, err = t.bulkhead.Acquire(ctx); err != nil {
			trCloseReqBody(body)
			return nil, err
		}
	}
	var permit breaker.Permit
	if t.breakers != nil {
		if b := t.breakers.get(req.URL); b != nil {
			var err error
			if permit, err = b.Allow(); err != nil {
				slot.Release()
				trCloseReqBody(body)
				return nil, err
			}
		}
	}

	actx, cancel := ctx, context.CancelFunc(nil)
	if l != nil {
		actx, cancel = l.Context()
		// Without an attempt timeout the loop hands out the caller's own
		// context and a no-op: nothing to release later. (Done channels are
		// compared because contexts need not be comparable.)
		if actx.Done() == ctx.Done() {
			cancel = nil
		}
	}
	areq := req
	if cancel != nil || body != req.Body || header != nil {
		areq = req.WithContext(actx)
		areq.Body = body
		if header != nil {
			areq.Header = header
		}
	}

	resp, err := t.base.RoundTrip(areq)
	if err != nil {
		if resp != nil && resp.Body != nil {
			_ = resp.Body.Close()
		}
		if ctx.Err() != nil {
			permit.Report(breaker.Ignored) // the caller gave up: says nothing of the upstream
		} else {
			permit.Done(err)
		}
		slot.Release()
		if cancel != nil {
			cancel()
		}
		return nil, err
	}
	permit.Report(trBreakerOutcome(resp.StatusCode))
	if cancel != nil || t.bulkhead != nil {
		trWrapBody(resp, slot, cancel)
	}
	return resp, nil
}

func trCloseReqBody(body io.ReadCloser) {
	if body != nil && body != http.NoBody {
		_ = body.Close()
	}
}

// trBreakerOutcome counts a response for the host's breaker; see Transport.
func trBreakerOutcome(status int) breaker.Outcome {
	switch {
	case status >= 500:
		return breaker.Failure
	case status == http.StatusTooManyRequests:
		return breaker.Ignored
	}
	return breaker.Success
}

// trRetryableRequest reports whether req may be sent more than once, and
// whether the transport must add an Idempotency-Key for that.
func (t *Transport) trRetryableRequest(req *http.Request) (retryable, addKey bool) {
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true, false
	}
	if trHasKey(req.Header) {
		return true, false
	}
	if t.newKey != nil && (req.Method == http.MethodPost || req.Method == http.MethodPatch) {
		return true, true
	}
	return false, false
}

// trHasKey reports whether h carries an Idempotency-Key.
func trHasKey(h http.Header) bool {
	return len(h[IdempotencyKeyHeader]) > 0
}

// trInFlight reports whether resp is the [Idempotency] middleware's "the
// first request with this key still runs; ask again later": 409 Conflict
// marked Idempotent-In-Flight: true, and not a stored response replayed. A
// 409 of the handler's own is its answer and carries no such mark.
func trInFlight(resp *http.Response) bool {
	return resp.StatusCode == http.StatusConflict &&
		resp.Header.Get(srvHeaderInFlight) == "true" &&
		len(resp.Header[srvHeaderReplayed]) == 0
}

// trClassify turns an attempt's error into what the retry loop should see:
// errors retrying cannot fix, and hints longer than the cap, become permanent.
func (t *Transport) trClassify(err error) error {
	if h, ok := bulwark.HintOf(err); ok && t.maxRetryAfter > 0 && h.RetryAfter > t.maxRetryAfter {
		return bulwark.Permanent(err)
	}
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		return bulwark.Permanent(err)
	}
	if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		return bulwark.Permanent(err)
	}
	if _, ok := errors.AsType[x509.HostnameError](err); ok {
		return bulwark.Permanent(err)
	}
	if _, ok := errors.AsType[x509.CertificateInvalidError](err); ok {
		return bulwark.Permanent(err)
	}
	return err
}

// trStatusError builds the error a retryable response stands for.
func (t *Transport) trStatusError(resp *http.Response) error {
	e := &StatusError{StatusCode: resp.StatusCode}
	if v := resp.Header.Get("Retry-After"); v != "" {
		now := time.Now()
		if d, err := http.ParseTime(resp.Header.Get("Date")); err == nil {
			now = d // measure a date against the server's clock, not ours
		}
		if d, ok := ParseRetryAfter(v, now); ok {
			e.RetryAfter = d
			e.noRetry = t.maxRetryAfter > 0 && d > t.maxRetryAfter
		}
	}
	return e
}

// trHostOf is the default rate-limit key: the request's host.
func trHostOf(r *http.Request) string { return r.URL.Host }

// trNewKey returns a fresh Idempotency-Key value: a structured-field string
// of 128 random bits (crypto/rand.Text, 26 base32 characters).
func trNewKey() string { return `"` + rand.Text() + `"` }

// trStatusSet is a set of status codes 0–639.
type trStatusSet [10]uint64

func (s *trStatusSet) add(codes ...int) {
	for _, c := range codes {
		if c < 100 || c > 599 {
			panic(fmt.Sprintf("httpmw: retryable status %d is not a status code", c))
		}
		s[c/64] |= 1 << (c % 64)
	}
}

func (s *trStatusSet) has(c int) bool {
	return c >= 0 && c < 640 && s[c/64]&(1<<(c%64)) != 0
}
