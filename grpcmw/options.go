package grpcmw

import (
	"context"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/ratelimit"
	"github.com/bulwark-go/bulwark/retry"
)

// Option configures the interceptors of this package. The same options serve
// the server and the client interceptors; each option's doc says which side
// reads it, and the other side ignores it.
type Option func(*config)

type config struct {
	breaker      *breaker.Breaker                                          // WithBreaker: one breaker, no per-call pick
	breakers     func(cc *grpc.ClientConn, method string) *breaker.Breaker // WithBreakers' pick, given cc's target
	failureCodes codeSet
	bulkhead     *bulkhead.Bulkhead
	bulkheadCode codes.Code
	limiter      ratelimit.Limiter
	limitKey     KeyFunc
	guard        *idempotency.Guard
	scope        func(ctx context.Context) string
	scopeWaived  bool
	remember     func(codes.Code) bool
	maxStored    int
	retry        *retry.Policy
	retryable    codeSet
	genKeys      bool
	streamMsgs   int
	streamBytes  int
}

// codeSet is a set of gRPC codes as a bit mask (codes run from 0 to 16).
type codeSet uint32

func setOf(cs ...codes.Code) codeSet {
	var s codeSet
	for _, c := range cs {
		if c < 32 {
			s |= 1 << c
		}
	}
	return s
}

func (s codeSet) has(c codes.Code) bool { return c < 32 && s&(1<<c) != 0 }

// Defaults.
const (
	// DefaultStreamBufferMessages is how many sent messages a retried client
	// stream keeps for replay; see [WithStreamBuffer].
	DefaultStreamBufferMessages = 64
	// DefaultStreamBufferBytes bounds the size of those messages, as
	// proto.Size counts it; see [WithStreamBuffer].
	DefaultStreamBufferBytes = 256 << 10
	// DefaultMaxStoredResponse bounds the result, in bytes, that
	// [WithIdempotency] stores for replay unless [WithMaxStoredResponse]
	// says otherwise: grpc-go's default limit on a message a client
	// receives.
	DefaultMaxStoredResponse = 4 << 20
)

// defaultFailureCodes are the codes a breaker counts as failures unless
// [WithFailureCodes] says otherwise: the codes that say the server, not the
// request, is in trouble.
var defaultFailureCodes = setOf(codes.Unavailable, codes.DeadlineExceeded, codes.Internal, codes.Unknown)

// defaultRetryableCodes are the codes a client retries unless
// [WithRetryableCodes] says otherwise.
var defaultRetryableCodes = setOf(codes.Unavailable, codes.ResourceExhausted)

func newConfig(opts []Option) config {
	c := config{
		failureCodes: defaultFailureCodes,
		bulkheadCode: codes.ResourceExhausted,
		retryable:    defaultRetryableCodes,
		remember:     RememberCode,
		maxStored:    DefaultMaxStoredResponse,
		streamMsgs:   DefaultStreamBufferMessages,
		streamBytes:  DefaultStreamBufferBytes,
	}
	for _, o := range opts {
		o(&c)
	}
	return c
}

// WithBreaker puts every call through b. Server and client.
//
// On the server a call the breaker rejects ends with Unavailable, a RetryInfo
// detail and the grpc-retry-pushback-ms trailer, both set to the time until the
// breaker admits a probe. On the client it ends, without reaching the network,
// with an Unavailable status error that also matches the breaker's error
// ([breaker.ErrOpen], or [breaker.ErrHalfOpenFull] when a half-open breaker
// has all the probes it admits) and carries its hint, so the retry policy
// waits for the breaker. The refusal of a breaker forced open, or half-open
// with all its probes running, has no hint: nothing says when it will admit
// calls again.
func WithBreaker(b *breaker.Breaker) Option {
	return func(c *config) { c.breaker, c.breakers = b, nil }
}

// WithBreakers chooses a breaker per call: pick is given the client
// connection's target (cc.Target(); "" on the server) and the full method
// name, and may return nil for calls that no breaker guards. Server and
// client. [BreakerPerTarget] and [BreakerPerMethod] build the usual choices.
func WithBreakers(pick func(target, method string) *breaker.Breaker) Option {
	if pick == nil {
		return func(c *config) { c.breaker, c.breakers = nil, nil }
	}
	breakers := func(cc *grpc.ClientConn, method string) *breaker.Breaker { return pick(target(cc), method) }
	return func(c *config) { c.breaker, c.breakers = nil, breakers }
}

// breakerFor returns the breaker of a call to method on cc (nil on the
// server), or nil when no breaker guards it.
func (c *config) breakerFor(cc *grpc.ClientConn, method string) *breaker.Breaker {
	if c.breakers == nil {
		return c.breaker
	}
	return c.breakers(cc, method)
}

// BreakerPerTarget returns a breaker picker for [WithBreakers] that keeps one
// breaker per client connection target, created on first use with
// breaker.New(target, opts...). Use it when one interceptor serves several
// connections. The number of breakers is the number of targets the process
// dials, so keep targets few (they label metrics).
func BreakerPerTarget(opts ...breaker.Option) func(target, method string) *breaker.Breaker {
	var m sync.Map
	return func(target, _ string) *breaker.Breaker { return lazyBreaker(&m, target, opts) }
}

// BreakerPerMethod returns a breaker picker for [WithBreakers] that keeps one
// breaker per full method name, created on first use with
// breaker.New(method, opts...): one failing method then does not stop calls
// to the others. Methods are a bounded set, defined by the service.
func BreakerPerMethod(opts ...breaker.Option) func(target, method string) *breaker.Breaker {
	var m sync.Map
	return func(_, method string) *breaker.Breaker { return lazyBreaker(&m, method, opts) }
}

// lazyBreaker returns the breaker for name, built exactly once: racing first
// calls wait for one breaker rather than build spares, which would register
// themselves with the metrics (a spare counts as one more breaker in the
// state gauge until it is garbage collected).
func lazyBreaker(m *sync.Map, name string, opts []breaker.Option) *breaker.Breaker {
	v, ok := m.Load(name)
	if !ok {
		v, _ = m.LoadOrStore(name, &onceBreaker{})
	}
	ob := v.(*onceBreaker)
	ob.once.Do(func() { ob.b = breaker.New(name, opts...) })
	return ob.b
}

type onceBreaker struct {
	once sync.Once
	b    *breaker.Breaker
}

// WithFailureCodes sets the status codes a breaker counts as failures; every
// other code counts as a success, except that a call the client cancelled
// (codes.Canceled, or a cancelled context) is not counted at all. The default
// is Unavailable, DeadlineExceeded, Internal and Unknown. Server and client.
func WithFailureCodes(cs ...codes.Code) Option {
	return func(c *config) { c.failureCodes = setOf(cs...) }
}

// WithBulkhead bounds the calls in flight with b. Server and client.
//
// On the server a call b rejects ends with ResourceExhausted (or the code set
// by [WithBulkheadCode]), a RetryInfo detail and the grpc-retry-pushback-ms
// trailer, without running the handler. On the client it ends with a
// ResourceExhausted status error that also matches [bulkhead.ErrFull] or
// [bulkhead.ErrTimeout] and carries the hint. A stream holds its slot until it
// ends.
func WithBulkhead(b *bulkhead.Bulkhead) Option {
	return func(c *config) { c.bulkhead = b }
}

// WithBulkheadCode sets the code of a server-side bulkhead rejection:
// codes.ResourceExhausted (the default) or codes.Unavailable. Choose by what
// your clients retry: ResourceExhausted says "this server is busy", and
// grpc-go's built-in retry and this package's client retry it by default;
// Unavailable says "try elsewhere", which load-balancing clients act on by
// picking another backend, and which breakers count as a failure by default —
// so with Unavailable a client breaker may open on a busy (not broken) server.
// Other codes panic.
func WithBulkheadCode(code codes.Code) Option {
	if code != codes.ResourceExhausted && code != codes.Unavailable {
		panic("grpcmw: WithBulkheadCode accepts ResourceExhausted or Unavailable, got " + code.String())
	}
	return func(c *config) { c.bulkheadCode = code }
}

// KeyFunc returns the rate-limit key of a call: the client's identity on the
// server, anything (a constant, the method) on the client. ctx is the call's
// context (incoming on the server, outgoing on the client).
type KeyFunc func(ctx context.Context, method string) string

// KeyFromMetadata returns a KeyFunc that reads the first value of the
// incoming metadata field name (an API key id, a tenant), falling back to
// [KeyFromPeer] when the field is absent. The KeyFunc keeps its own cache of
// peer keys (see [KeyFromPeer]), so the fallback allocates nothing for a
// recent peer.
func KeyFromMetadata(name string) KeyFunc {
	peers := newPeerKeys()
	return func(ctx context.Context, method string) string {
		if v := metadata.ValueFromIncomingContext(ctx, name); len(v) > 0 && v[0] != "" {
			return v[0]
		}
		return peers.key(ctx, method)
	}
}

// WithRateLimit spends one unit of l's quota for key(ctx, method) on every
// call; a nil key means [KeyFromPeer]. Each interceptor built with this
// option serves KeyFromPeer from a cache of its own, so that the key of a
// recent peer costs no allocation. Server and client.
//
// On the server a denied call ends, before the handler runs and before any
// header is sent, with ResourceExhausted, RetryInfo and QuotaFailure details
// and the grpc-retry-pushback-ms trailer (a trailers-only response, the only
// kind from which grpc-go's built-in retry reads pushback). An error from l
// itself (a store that fails closed) ends the call with Unavailable.
//
// On the client, when l has a Wait(ctx, key) error method ([ratelimit.Local]
// has), each attempt waits for a token — client-side throttling; otherwise a
// denial fails the attempt locally with ResourceExhausted and the limiter's
// retry-after hint, which the retry policy honours.
func WithRateLimit(l ratelimit.Limiter, key KeyFunc) Option {
	return func(c *config) {
		c.limiter = l
		c.limitKey = key
		if key == nil || isKeyFromPeer(key) {
			c.limitKey = newPeerKeys().key
		}
	}
}

// WithIdempotency runs unary calls that carry an idempotency-key metadata
// field under g: the first call with a key runs, a repeat gets the stored
// result, marked by the response header idempotent-replayed: true. It
// requires [WithIdempotencyScope] or [WithoutIdempotencyScope]: the server
// interceptors panic without either. Server, unary only. See
// [UnaryServerInterceptor] for the status codes.
func WithIdempotency(g *idempotency.Guard) Option {
	return func(c *config) { c.guard = g }
}

// WithIdempotencyScope sets the function that names the principal a call's
// idempotency key belongs to (an authenticated client id), so that one
// client can never replay another's result. [WithIdempotency] requires it
// or [WithoutIdempotencyScope]. Server.
func WithIdempotencyScope(scope func(ctx context.Context) string) Option {
	return func(c *config) { c.scope, c.scopeWaived = scope, false }
}

// WithoutIdempotencyScope waives [WithIdempotencyScope]: all callers share
// one key space, so a caller who learns or guesses another's key gets that
// caller's result. Use it only when the service has a single principal or
// keys are unguessable and private. Server.
func WithoutIdempotencyScope() Option {
	return func(c *config) { c.scope, c.scopeWaived = nil, true }
}

// WithMaxStoredResponse bounds the result [WithIdempotency] stores for
// replay: the response message, or the status of a failed call, in its
// protobuf encoding. A call whose result is larger is answered, and only its
// code is stored: a repeat gets AlreadyExists with the ErrorInfo of
// [NotReplayableReason], and the handler does not run again. Zero or less
// means [DefaultMaxStoredResponse]. Server.
func WithMaxStoredResponse(n int) Option {
	return func(c *config) {
		c.maxStored = n
		if n <= 0 {
			c.maxStored = DefaultMaxStoredResponse
		}
	}
}

// WithIdempotencyRemember sets which result codes are stored for replay; for
// the others the key is released and a retry runs the handler again. The
// default is [RememberCode]. Server.
func WithIdempotencyRemember(remember func(codes.Code) bool) Option {
	return func(c *config) {
		c.remember = remember
		if remember == nil {
			c.remember = RememberCode
		}
	}
}

// RememberCode is the default rule of [WithIdempotencyRemember]: it remembers
// OK and the codes that say the request itself is wrong, so that running it
// again would fail the same way (InvalidArgument, NotFound, AlreadyExists,
// PermissionDenied, FailedPrecondition, OutOfRange, Unimplemented,
// Unauthenticated), and releases the transient ones (Canceled, Unknown,
// DeadlineExceeded, ResourceExhausted, Aborted, Internal, Unavailable,
// DataLoss), as the HTTP adapter remembers 2xx–4xx and releases 5xx.
func RememberCode(code codes.Code) bool { return rememberCodes.has(code) }

var rememberCodes = setOf(codes.OK, codes.InvalidArgument, codes.NotFound, codes.AlreadyExists,
	codes.PermissionDenied, codes.FailedPrecondition, codes.OutOfRange, codes.Unimplemented, codes.Unauthenticated)

// WithRetry retries failed attempts under p. Client.
//
// An attempt is retried when it fails with a retryable code
// ([WithRetryableCodes]), when the policy's per-attempt timeout
// ([retry.WithAttemptTimeout]) ended it while the caller's context is still
// live, or, for a unary call with an idempotency key, when the server says
// that the first call with that key still runs (the Aborted that
// [WithIdempotency] marks with [InFlightReason]); any other error is passed
// to the policy marked with [bulwark.Permanent], so a policy built with
// [retry.WithClassifier] must compose with [retry.Retryable] to keep that
// rule. A server's grpc-retry-pushback-ms trailer, or else a RetryInfo detail,
// becomes the wait before the next attempt (a negative or malformed pushback
// stops retrying, as gRFC A6 says, and so does one longer than the policy's
// retry.WithMaxHintWait).
func WithRetry(p *retry.Policy) Option {
	return func(c *config) { c.retry = p }
}

// WithRetryableCodes sets the codes a client retries. The default is
// Unavailable and ResourceExhausted: the codes a server answers without having
// acted on the request. ResourceExhausted is retried only when the server says
// when to come back (a RetryInfo detail or the pushback trailer, as this
// package's server interceptors send), or when this package's own client
// limiter or bulkhead refused the attempt: grpc-go answers it by itself to a
// message over MaxCallSendMsgSize or MaxCallRecvMsgSize, which no retry fixes,
// and for a response only after the server has acted. Add other codes
// (Aborted, DeadlineExceeded) only for methods that are idempotent or carry an
// idempotency key. The in-flight answer of [WithIdempotency] is retried
// whatever the codes: it is not a result (see [WithRetry]). Client.
func WithRetryableCodes(cs ...codes.Code) Option {
	return func(c *config) { c.retryable = setOf(cs...) }
}

// WithIdempotencyKeys makes the unary client interceptor send an
// idempotency-key metadata field with every call that has none: a random key
// drawn once per logical call and sent unchanged on every attempt, so that a
// server running [WithIdempotency] applies a retried call once. A key given
// with [WithIdempotencyKey] or already in the outgoing metadata is kept.
// Client.
func WithIdempotencyKeys() Option {
	return func(c *config) { c.genKeys = true }
}

// WithStreamBuffer bounds what a client stream keeps for replay: at most
// msgs messages and bytes bytes (as proto.Size counts them). A client- or
// bidi-streaming call that has sent more is no longer retried; a
// server-streaming call's one request is kept whatever its size. Defaults: [DefaultStreamBufferMessages] and
// [DefaultStreamBufferBytes]. Client.
func WithStreamBuffer(msgs, bytes int) Option {
	return func(c *config) { c.streamMsgs, c.streamBytes = msgs, bytes }
}
