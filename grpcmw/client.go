package grpcmw

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/bulwark-go/bulwark"
	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/ratelimit"
	"github.com/bulwark-go/bulwark/retry"
)

// waiter is the client-side throttling form of a limiter ([ratelimit.Local]).
type waiter interface {
	Wait(ctx context.Context, key string) error
}

// client holds the configuration of the client interceptors; read-only once
// built, so the interceptors are safe for concurrent use.
type client struct {
	config
	waiter waiter
	// captures lends retried unary calls their trailer capture, so that a
	// call that succeeds at once allocates nothing.
	captures *captures
	// retryOnly: a retry policy without a per-attempt timeout, and nothing
	// else that acts on a call (no breaker, limiter, bulkhead or generated
	// idempotency key), so that a call without options of this package's
	// takes a short way (UnaryClientInterceptor).
	retryOnly bool
}

func newClient(opts []Option) *client {
	c := &client{config: newConfig(opts)}
	if w, ok := c.limiter.(waiter); ok {
		c.waiter = w
	}
	c.retryOnly = c.retry != nil && c.retry.AttemptTimeout() == 0 &&
		c.breaker == nil && c.breakers == nil && c.limiter == nil && c.bulkhead == nil && !c.genKeys
	return c
}

// UnaryClientInterceptor returns a unary client interceptor that runs each
// call under the retry policy ([WithRetry]); every attempt waits for the rate
// limiter ([WithRateLimit]), takes a bulkhead slot ([WithBulkhead]) and asks
// the breaker ([WithBreaker], [WithBreakers]) before it reaches the network.
//
// Retries: an attempt is retried when its code is retryable
// ([WithRetryableCodes]; Unavailable and ResourceExhausted by default, the
// latter only with a server's hint), when the policy's per-attempt timeout
// ended it (a DeadlineExceeded that comes well before the attempt's deadline
// is the server's own, and is not retried), or when a call with an
// idempotency key is told that the first call with that key still runs
// (Aborted marked with the ErrorInfo of [InFlightReason], as [WithIdempotency]
// answers; often the retry of an attempt that timed out), and the policy
// allows (attempts, budget, deadline). The wait is the server's
// grpc-retry-pushback-ms trailer, else its RetryInfo detail, else the
// policy's backoff; a hint longer than the policy's retry.WithMaxHintWait
// stops retrying. Attempts after the first carry grpc-previous-rpc-attempts. With [WithIdempotencyKeys] every
// attempt carries the same idempotency-key.
//
// The error returned is the last attempt's status error, unchanged, or the
// status of the caller's context when it ended during a wait. A local
// rejection is a status error (Unavailable for the breaker, ResourceExhausted
// for the bulkhead and the limiter) that also matches the primitive's sentinel
// (errors.Is(err, breaker.ErrOpen)). [ReportAttempts] tells how many attempts
// ran.
//
// Per call, [WithMaxAttempts], [DisableRetry] and [WithIdempotencyKey]
// override the interceptor's settings.
//
// Do not stack this retry with grpc-go's built-in one, or the attempt counts
// multiply (3 × 3 = 9 attempts per call): dial with grpc.WithDisableRetry(),
// or give the service config no retryPolicy. grpc-go's transparent retry of
// calls that never left the client stays on either way; it does not send the
// request twice.
//
// To read the pushback trailer, each attempt passes the invoker a
// grpc.Trailer option whose target is reused by later calls. Interceptors
// installed after this one (nearer the network) must therefore not keep a
// call's options once their invoker has returned, as none of grpc-go's do.
func UnaryClientInterceptor(opts ...Option) grpc.UnaryClientInterceptor {
	c := newClient(opts)
	if c.retry != nil {
		c.captures = newCaptures() // the stream interceptor reads trailers from its streams
	}
	if !c.retryOnly {
		return c.unary
	}
	// With nothing but a retry policy, the most common configuration, a call
	// without options of this package's skips what then does nothing, so
	// that one that succeeds at once costs no more than go-grpc-middleware's
	// retry, which does less: 0.4× what that adds, called as generated stubs
	// call it, and as much with no options at all (bench/
	// BenchmarkGRPCClient). It is a function literal because a method
	// value's wrapper would add a call to every call.
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if hasOwnOption(opts) {
			return c.unary(ctx, method, req, reply, cc, invoker, opts...)
		}
		st := c.captures.get() // lent without a trailer, so nothing to clear
		if err := invoker(ctx, method, req, reply, cc, st.with(opts)...); err != nil {
			err = c.retryFailed(ctx, ctx, noCancel, err, st, callOptions{}, method, req, reply, cc, invoker, opts, nil)
			c.captures.put(st)
			return err
		}
		c.captures.put(st)
		c.retry.FirstTrySucceeded()
		return nil
	}
}

func noCancel() {}

// unary is the unary client interceptor for any configuration and call; a
// client with nothing but a retry policy takes it only for calls with
// options of this package's.
func (c *client) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	var co callOptions
	if len(opts) > 0 {
		co = scanCallOptions(opts)
	}
	if c.genKeys || co.key != "" {
		ctx = withIdempotencyKey(ctx, co.key)
	}
	b := c.breakerFor(cc, method)
	if c.retry == nil || co.maxAttempts == 1 {
		err := c.attempt(ctx, method, req, reply, cc, invoker, opts, b, nil)
		if co.attempts != nil {
			*co.attempts = 1
		}
		return err
	}
	// One trailer capture serves every attempt of the call.
	st := c.captures.get() // not given back if the invoker panics
	// The first attempt runs before the retry loop begins, so that a call
	// that succeeds at once, as most do, pays for no loop.
	actx, cancel := c.retry.AttemptContext(ctx)
	err := c.attempt(actx, method, req, reply, cc, invoker, opts, b, st)
	if err == nil {
		cancel()
		c.captures.put(st)
		c.retry.FirstTrySucceeded()
		if co.attempts != nil {
			*co.attempts = 1
		}
		return nil
	}
	err = c.retryFailed(ctx, actx, cancel, err, st, co, method, req, reply, cc, invoker, opts, b)
	c.captures.put(st)
	return err
}

// retryFailed goes on with a call whose first attempt, under actx, failed
// with err: it retries the call as the policy allows and returns its result.
func (c *client) retryFailed(ctx, actx context.Context, cancel context.CancelFunc, err error, st *callState, co callOptions,
	method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts []grpc.CallOption, b *breaker.Breaker) error {
	var l retry.Loop
	c.retry.BeginIn(ctx, &l, co.maxAttempts)
	for {
		verdict := c.classify(ctx, actx, err, st.hint(err), inFlight(ctx, err))
		cancel()
		if !l.Decide(verdict) {
			break
		}
		if !l.Wait() {
			err = status.FromContextError(ctx.Err()).Err()
			break
		}
		actx, cancel = l.Context()
		actx = metadata.AppendToOutgoingContext(actx, PreviousAttemptsHeader, strconv.Itoa(l.Attempt()-1))
		if err = c.attempt(actx, method, req, reply, cc, invoker, opts, b, st); err == nil {
			cancel()
			l.Decide(nil)
			break
		}
	}
	if co.attempts != nil {
		*co.attempts = l.Attempt()
	}
	return err
}

// classify returns the error the retry policy decides on: err with the
// server's hint, or err marked permanent when it must not be retried.
// inFlight says that err is a server's in-flight answer to the call's
// idempotency key ([inFlight]), which is retried whatever the codes.
func (c *client) classify(ctx, actx context.Context, err error, hint *bulwark.Hint, inFlight bool) error {
	code := codeOf(err)
	switch {
	case inFlight:
	case code == codes.ResourceExhausted && hint == nil && !isLocal(err):
		// grpc-go makes this code by itself for a message over
		// MaxCallSendMsgSize or MaxCallRecvMsgSize, which no retry fixes
		// and, for a response, after the server has acted on the request.
		// A server that refuses for want of resources says when to come
		// back (RetryInfo or pushback, as this package's do).
		return bulwark.Permanent(err)
	case c.retryable.has(code):
	case code == codes.DeadlineExceeded && attemptTimedOut(ctx, actx):
		// The policy's per-attempt timeout ended the attempt; the call goes on.
		return err
	default:
		return bulwark.Permanent(err)
	}
	if hint != nil {
		return bulwark.WithHint(err, *hint)
	}
	return err
}

// isLocal reports whether err is a refusal of this package's client
// interceptors (limiter, bulkhead, breaker), not an attempt's status.
func isLocal(err error) bool {
	var le *localError
	return errors.As(err, &le)
}

// attemptTimedOut reports whether a DeadlineExceeded attempt ran out of the
// policy's per-attempt time rather than the caller's: the attempt's deadline
// comes before the caller's and has passed, or is at most
// attemptDeadlineSlack away. The status may arrive from the server (which
// enforces grpc-timeout) a moment before the client's own timer expires
// actx; a DeadlineExceeded that comes sooner is the server's own (a
// downstream call of the handler timing out), not the attempt's, and is not
// retried.
func attemptTimedOut(ctx, actx context.Context) bool {
	if actx == ctx || ctx.Err() != nil {
		return false
	}
	adl, ok := actx.Deadline()
	if !ok {
		return false
	}
	if dl, ok := ctx.Deadline(); ok && !adl.Before(dl) {
		return false
	}
	return actx.Err() != nil || time.Until(adl) <= attemptDeadlineSlack
}

// attemptDeadlineSlack is how long before an attempt's deadline a
// DeadlineExceeded still counts as the attempt timing out.
const attemptDeadlineSlack = 20 * time.Millisecond

// attempt makes one attempt: limiter, bulkhead, breaker, then the invoker.
// With a capture state it also captures the attempt's trailer, for
// [callState.hint].
func (c *client) attempt(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
	invoker grpc.UnaryInvoker, opts []grpc.CallOption, b *breaker.Breaker, st *callState) error {
	if st != nil {
		// Cleared first: grpc-go does not set it when an attempt fails
		// early, and an earlier attempt's trailer must not be read as this
		// one's.
		st.trailer = nil
		opts = st.with(opts)
	}
	if c.limiter != nil {
		if err := c.throttle(ctx, method); err != nil {
			return err
		}
	}
	if c.bulkhead != nil {
		p, err := c.bulkhead.Acquire(ctx)
		if err != nil {
			return local(codes.ResourceExhausted, err)
		}
		defer p.Release()
	}
	if b == nil {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	bp, err := b.Allow()
	if err != nil {
		return local(codes.Unavailable, err)
	}
	done := false
	defer func() {
		if !done { // the invoker panicked
			bp.Report(breaker.Failure)
		}
	}()
	err = invoker(ctx, method, req, reply, cc, opts...)
	done = true
	bp.Report(c.outcome(ctx, err))
	return err
}

// hint returns the retry hint the server sent with err, in the captured
// trailer or in the status details; nil when there is none, or when err is a
// refusal of this package's own, not the server's answer.
func (st *callState) hint(err error) *bulwark.Hint {
	if isLocal(err) {
		return nil
	}
	s, _ := status.FromError(err)
	if h, ok := serverHint(s, st.trailer); ok {
		return &h
	}
	return nil
}

// inFlight reports whether err is a server's "the first call with this
// idempotency key still runs; ask again later" to a call that carries an
// idempotency key: Aborted marked as [WithIdempotency] marks it
// ([InFlightReason]). It is not a result, and the retry, after the server's
// hint, gets the first call's stored one. An Aborted of the handler's own
// carries no such mark and is not retried (unless Aborted is made retryable).
func inFlight(ctx context.Context, err error) bool {
	if codeOf(err) != codes.Aborted {
		return false
	}
	if md, _ := metadata.FromOutgoingContext(ctx); len(md[IdempotencyKeyHeader]) == 0 {
		return false
	}
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.GetReason() == InFlightReason && ei.GetDomain() == ErrorDomain {
			return true
		}
	}
	return false
}

// throttle waits for, or asks, the limiter.
func (c *client) throttle(ctx context.Context, method string) error {
	key := c.limitKey(ctx, method)
	if c.waiter != nil {
		err := c.waiter.Wait(ctx, key)
		if err != nil && ctx.Err() != nil {
			return status.FromContextError(ctx.Err()).Err()
		}
		if err != nil {
			return local(codes.ResourceExhausted, err)
		}
		return nil
	}
	d, err := c.limiter.Allow(ctx, key, 1)
	if err != nil {
		return local(codes.Unavailable, err)
	}
	if !d.Allowed {
		return local(codes.ResourceExhausted, &ratelimit.LimitedError{Decision: d})
	}
	return nil
}

// local turns a primitive's refusal into a status error, or the context's
// status when the refusal is the context ending.
func local(code codes.Code, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		var le *ratelimit.LimitedError
		if !errors.As(err, &le) { // a limiter's "cannot make the deadline" keeps its hint
			return status.FromContextError(err).Err()
		}
	}
	return &localError{code: code, err: err}
}

// outcome classifies an attempt for the breaker: the caller's cancellation
// says nothing about the server.
func (c *client) outcome(ctx context.Context, err error) breaker.Outcome {
	if err == nil {
		return breaker.Success
	}
	code := codeOf(err)
	if code == codes.Canceled || errors.Is(ctx.Err(), context.Canceled) {
		return breaker.Ignored
	}
	if c.failureCodes.has(code) {
		return breaker.Failure
	}
	return breaker.Success
}

func target(cc *grpc.ClientConn) string {
	if cc == nil {
		return ""
	}
	return cc.Target()
}

// withIdempotencyKey returns ctx with an idempotency-key in its outgoing
// metadata: key when given, the key already there, or a new random one.
func withIdempotencyKey(ctx context.Context, key string) context.Context {
	if md, ok := metadata.FromOutgoingContext(ctx); ok && len(md.Get(IdempotencyKeyHeader)) > 0 {
		if key == "" {
			return ctx
		}
		md = md.Copy()
		md.Set(IdempotencyKeyHeader, key)
		return metadata.NewOutgoingContext(ctx, md)
	}
	if key == "" {
		key = NewIdempotencyKey()
	}
	return metadata.AppendToOutgoingContext(ctx, IdempotencyKeyHeader, key)
}

// NewIdempotencyKey returns a random idempotency key: 128 bits from
// crypto/rand in unpadded base64url, 22 characters.
func NewIdempotencyKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// callOption is the grpc.CallOption of this package: grpc-go ignores it and
// the interceptors read it. It is a plain value, not a closure, so that
// reading the options of a call allocates nothing.
type callOption struct {
	grpc.EmptyCallOption
	kind        uint8
	maxAttempts int
	key         string
	attempts    *int
}

const (
	optMaxAttempts uint8 = iota + 1
	optKey
	optAttempts
)

type callOptions struct {
	maxAttempts int
	key         string
	attempts    *int
}

// hasOwnOption reports whether opts hold an option of this package. Every
// call from a generated client stub has one of grpc-go's (grpc.StaticMethod).
func hasOwnOption(opts []grpc.CallOption) bool {
	for _, o := range opts {
		if _, ok := o.(callOption); ok {
			return true
		}
	}
	return false
}

func scanCallOptions(opts []grpc.CallOption) callOptions {
	var co callOptions
	for _, o := range opts {
		o, ok := o.(callOption)
		if !ok {
			continue
		}
		switch o.kind {
		case optMaxAttempts:
			co.maxAttempts = o.maxAttempts
		case optKey:
			co.key = o.key
		case optAttempts:
			co.attempts = o.attempts
		}
	}
	return co
}

// WithMaxAttempts caps the attempts of one call at n in total, the first
// included, below the retry policy's own limit (which it cannot raise).
// WithMaxAttempts(1) is [DisableRetry]. It panics when n < 1.
func WithMaxAttempts(n int) grpc.CallOption {
	if n < 1 {
		panic("grpcmw: WithMaxAttempts needs at least 1 attempt, got " + strconv.Itoa(n))
	}
	return callOption{kind: optMaxAttempts, maxAttempts: n}
}

// DisableRetry makes one call a single attempt. The limiter, the bulkhead and
// the breaker still apply.
func DisableRetry() grpc.CallOption { return WithMaxAttempts(1) }

// WithIdempotencyKey sends key as the call's idempotency-key on every attempt,
// whether or not the interceptor generates keys ([WithIdempotencyKeys]).
func WithIdempotencyKey(key string) grpc.CallOption {
	return callOption{kind: optKey, key: key}
}

// ReportAttempts stores in *n the number of attempts the call made, the first
// included, once the call returns (for a stream: once it is committed or has
// failed; see [StreamClientInterceptor]).
func ReportAttempts(n *int) grpc.CallOption {
	return callOption{kind: optAttempts, attempts: n}
}
