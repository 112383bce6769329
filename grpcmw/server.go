package grpcmw

import (
	"context"
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/ratelimit"
)

// server holds the configuration of the server interceptors. It is read-only
// once built, so the interceptors are safe for concurrent use.
type server struct {
	config
	types typeCache
}

// UnaryServerInterceptor returns a unary server interceptor that applies, in
// this order, the rate limit ([WithRateLimit]), the bulkhead ([WithBulkhead]),
// the breaker ([WithBreaker], [WithBreakers]) and the idempotency protocol
// ([WithIdempotency]) to each call, then runs the handler. Cheap refusals come
// first, so that a refused call costs nothing further; the breaker counts only
// calls that ran the handler, not those the idempotency Guard answered (a
// replay, a refusal, its store failing); idempotency keys are claimed only by
// calls that will run. Without options it calls the handler directly. It
// panics when [WithIdempotency] comes without [WithIdempotencyScope] or
// [WithoutIdempotencyScope].
//
// Refusals, each set before any header is sent so that the response is
// trailers-only:
//
//	rate limited          ResourceExhausted  RetryInfo, QuotaFailure, grpc-retry-pushback-ms
//	limiter error         Unavailable
//	bulkhead full         ResourceExhausted (or Unavailable, WithBulkheadCode)  RetryInfo, pushback
//	breaker open          Unavailable        RetryInfo, pushback (time until a probe)
//	idempotency in flight Aborted            RetryInfo, pushback (idempotency.InFlightPoll, 1 s, or the lease left if less),
//	                                         ErrorInfo InFlightReason in ErrorDomain
//	key reused, other req FailedPrecondition
//	key missing/malformed InvalidArgument    (missing only when the Guard requires keys)
//	idempotency store     Unavailable        (when the Guard fails closed)
//	repeat of a result    AlreadyExists      ErrorInfo NotReplayableReason in ErrorDomain, idempotent-replayed: true
//	  that was not stored                    (larger than WithMaxStoredResponse or the store holds)
//
// A call that the bulkhead queued and whose client gave up gets the status of
// its context (Canceled or DeadlineExceeded).
//
// The breaker counts a call by its status code ([WithFailureCodes]); a call the
// client cancelled is not counted, and a handler that panics counts as a
// failure, releases its bulkhead slot and idempotency key, and panics on.
func UnaryServerInterceptor(opts ...Option) grpc.UnaryServerInterceptor {
	return newServer(opts).unary
}

// StreamServerInterceptor returns a stream server interceptor that applies the
// rate limit, the bulkhead and the breaker, as [UnaryServerInterceptor] does,
// to each stream; the bulkhead slot is held and the breaker's outcome is known
// when the handler returns. [WithIdempotency] does not apply to streams and is
// ignored, except that, as for [UnaryServerInterceptor], it needs a decision
// on scope: the same options usually serve both.
func StreamServerInterceptor(opts ...Option) grpc.StreamServerInterceptor {
	return newServer(opts).stream
}

// newServer builds the configuration of the server interceptors. It panics
// when WithIdempotency comes without a decision on scope: a shared key space
// by default would let one client replay another's result.
func newServer(opts []Option) *server {
	s := &server{config: newConfig(opts)}
	if s.guard != nil && s.scope == nil && !s.scopeWaived {
		panic("grpcmw: WithIdempotency needs WithIdempotencyScope(func) naming the principal a key belongs to, " +
			"or WithoutIdempotencyScope() to let all callers share one key space")
	}
	return s
}

func (s *server) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	if err := s.admit(ctx, info.FullMethod, nil); err != nil {
		return nil, err
	}
	if s.bulkhead != nil {
		p, err := s.bulkhead.Acquire(ctx)
		if err != nil {
			return nil, s.reject(ctx, nil, s.bulkheadCode, err, nil)
		}
		defer p.Release()
	}
	b := s.breakerFor(nil, info.FullMethod)
	if b == nil {
		resp, _, err = s.call(ctx, req, info, handler)
		return resp, err
	}
	bp, err := b.Allow()
	if err != nil {
		return nil, s.reject(ctx, nil, codes.Unavailable, err, nil)
	}
	reported := false
	defer func() {
		if !reported { // the handler panicked
			bp.Report(breaker.Failure)
		}
	}()
	resp, ran, err := s.call(ctx, req, info, handler)
	reported = true
	if ran {
		bp.Report(s.outcome(ctx, err))
	} else { // the idempotency Guard answered: the service was not asked
		bp.Report(breaker.Ignored)
	}
	return resp, err
}

// call runs the handler, under the idempotency Guard when there is one, and
// reports whether the handler ran.
func (s *server) call(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, ran bool, err error) {
	if s.guard != nil {
		return s.idempotent(ctx, req, info, handler)
	}
	resp, err = handler(ctx, req)
	return resp, true, err
}

func (s *server) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx := ss.Context()
	if err := s.admit(ctx, info.FullMethod, ss); err != nil {
		return err
	}
	if s.bulkhead != nil {
		p, err := s.bulkhead.Acquire(ctx)
		if err != nil {
			return s.reject(ctx, ss, s.bulkheadCode, err, nil)
		}
		defer p.Release()
	}
	b := s.breakerFor(nil, info.FullMethod)
	if b == nil {
		return handler(srv, ss)
	}
	bp, err := b.Allow()
	if err != nil {
		return s.reject(ctx, ss, codes.Unavailable, err, nil)
	}
	reported := false
	defer func() {
		if !reported {
			bp.Report(breaker.Failure)
		}
	}()
	err = handler(srv, ss)
	reported = true
	bp.Report(s.outcome(ctx, err))
	return err
}

// admit asks the rate limiter, if any, and returns the refusal.
func (s *server) admit(ctx context.Context, method string, ss grpc.ServerStream) error {
	if s.limiter == nil {
		return nil
	}
	d, err := s.limiter.Allow(ctx, s.limitKey(ctx, method), 1)
	if err != nil { // the cause stays on the server: it may name its hosts
		return status.Error(codes.Unavailable, "grpcmw: rate limiter unavailable")
	}
	if d.Allowed {
		return nil
	}
	return s.reject(ctx, ss, codes.ResourceExhausted, &ratelimit.LimitedError{Decision: d}, &d)
}

// reject turns a primitive's refusal into a status error, setting the
// pushback trailer when the refusal says when to come back. An error that
// wraps the call's context error becomes that context's status.
func (s *server) reject(ctx context.Context, ss grpc.ServerStream, code codes.Code, err error, quota *ratelimit.Decision) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	st, after := rejection(code, err, quota)
	if after > 0 {
		setTrailer(ctx, ss, pushbackMD(after))
	}
	return st.Err()
}

func setTrailer(ctx context.Context, ss grpc.ServerStream, md metadata.MD) {
	if ss != nil {
		ss.SetTrailer(md)
		return
	}
	// Outside a real server (an interceptor called directly) there is no
	// stream to take the trailer; the status details still carry the hint.
	_ = grpc.SetTrailer(ctx, md)
}

// outcome classifies a finished call for the breaker.
func (s *server) outcome(ctx context.Context, err error) breaker.Outcome {
	if err == nil {
		return breaker.Success
	}
	code := codeOf(err)
	if code == codes.Canceled || errors.Is(ctx.Err(), context.Canceled) {
		return breaker.Ignored
	}
	if s.failureCodes.has(code) {
		return breaker.Failure
	}
	return breaker.Success
}
