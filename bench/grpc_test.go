package bench

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/grpcmw"
	"github.com/bulwark-go/bulwark/ratelimit"
	"github.com/bulwark-go/bulwark/retry"
	fsbulkhead "github.com/failsafe-go/failsafe-go/bulkhead"
	"github.com/failsafe-go/failsafe-go/circuitbreaker"
	"github.com/failsafe-go/failsafe-go/failsafegrpc"
	"github.com/failsafe-go/failsafe-go/ratelimiter"
	"github.com/failsafe-go/failsafe-go/retrypolicy"
	gmratelimit "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/ratelimit"
	gmretry "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/retry"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
)

// gRPC interceptors called in process, with no network: the cost an
// interceptor adds to a unary call that succeeds.

const benchMethod = "/bench.Service/Call"

type benchMsg struct{ n int }

var (
	benchReq   = &benchMsg{1}
	benchReply = &benchMsg{}
)

// GRPCServer: a unary server interceptor in front of a handler that answers
// at once. bulwark's applies a rate limit keyed by the peer's IP, a bulkhead
// and a breaker, metrics on; failsafe-go's the same three policies;
// go-grpc-middleware ships only a rate limit (unkeyed, here on one
// x/time/rate limiter). bulwark-ratelimit does go-grpc-middleware's work: one
// limit for all calls (a constant key), metrics on.
// Reference: go-grpc-middleware-ratelimit.

// rateLimit is a go-grpc-middleware Limiter on x/time/rate.
type rateLimit struct{ l *rate.Limiter }

func (r rateLimit) Limit(context.Context) error {
	if !r.l.Allow() {
		return errDenied
	}
	return nil
}

func BenchmarkGRPCServer(b *testing.B) {
	ctx := peer.NewContext(bg, &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 40000}})
	info := &grpc.UnaryServerInfo{FullMethod: benchMethod}
	handler := func(context.Context, any) (any, error) { return benchReply, nil }
	intercepted := func(ic grpc.UnaryServerInterceptor) func(int) error {
		return func(int) error {
			_, err := ic(ctx, benchReq, info, handler)
			return err
		}
	}
	reg := prometheus.NewRegistry()
	variants := []variant{
		{"bare", func(int) error {
			_, err := handler(ctx, benchReq)
			return err
		}},
		{"bulwark-limit+bulkhead+breaker", intercepted(grpcmw.UnaryServerInterceptor(
			grpcmw.WithRateLimit(ratelimit.NewLocal("bench", limiterRate, limiterBurst,
				ratelimit.WithRegisterer(reg)), grpcmw.KeyFromPeer),
			grpcmw.WithBulkhead(bulkhead.New("bench", bulkhead.WithLimit(bulkheadLimit),
				bulkhead.WithRegisterer(reg))),
			grpcmw.WithBreaker(breaker.New("bench", breaker.WithRegisterer(reg))),
		))},
		{"bulwark-ratelimit", intercepted(grpcmw.UnaryServerInterceptor(
			grpcmw.WithRateLimit(ratelimit.NewLocal("bench-alone", limiterRate, limiterBurst,
				ratelimit.WithRegisterer(reg)), func(context.Context, string) string { return "all" }),
		))},
		{"go-grpc-middleware-ratelimit", intercepted(gmratelimit.UnaryServerInterceptor(
			rateLimit{rate.NewLimiter(limiterRate, limiterBurst)}))},
		{"failsafe-limit+bulkhead+breaker", intercepted(failsafegrpc.NewUnaryServerInterceptor[any](
			ratelimiter.NewBursty[any](limiterBurst, time.Millisecond),
			fsbulkhead.New[any](bulkheadLimit),
			circuitbreaker.NewBuilder[any]().WithFailureThresholdRatio(50, 100).
				WithDelay(30*time.Second).Build(),
		))},
	}
	runVariants(b, variants, runOpts{})
}

// GRPCClient: a unary client interceptor around an invoker that succeeds at
// once, called as a generated client stub calls it (with the option
// grpc.StaticMethod()): retry (3 attempts) + breaker for bulwark and
// failsafe-go, retry
// alone for go-grpc-middleware, which has no breaker. bulwark-retry is
// retry alone with 3 attempts, as go-grpc-middleware's, and does two things
// that one does not: it reads the server's pushback trailer, and it counts
// the call for its metrics.
// Reference: go-grpc-middleware-retry.

func BenchmarkGRPCClient(b *testing.B) {
	cc, err := grpc.NewClient("passthrough:///bench.invalid",
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cc.Close() })
	invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	// Every call from a generated client stub carries grpc.StaticMethod(),
	// so the interceptors see a call with one option of grpc-go's.
	opts := []grpc.CallOption{grpc.StaticMethod()}
	intercepted := func(ic grpc.UnaryClientInterceptor) func(int) error {
		return func(int) error { return ic(bg, benchMethod, benchReq, benchReply, cc, invoker, opts...) }
	}
	reg := prometheus.NewRegistry()
	variants := []variant{
		{"bare", func(int) error { return invoker(bg, benchMethod, benchReq, benchReply, cc, opts...) }},
		{"bulwark-retry+breaker", intercepted(grpcmw.UnaryClientInterceptor(
			grpcmw.WithRetry(retry.New("bench", retry.WithRegisterer(reg))),
			grpcmw.WithBreaker(breaker.New("bench", breaker.WithRegisterer(reg))),
		))},
		{"bulwark-retry", intercepted(grpcmw.UnaryClientInterceptor(
			grpcmw.WithRetry(retry.New("bench-alone", retry.WithMaxAttempts(3), retry.WithRegisterer(reg))),
		))},
		{"go-grpc-middleware-retry", intercepted(gmretry.UnaryClientInterceptor(gmretry.WithMax(3)))},
		{"failsafe-retry+breaker", intercepted(failsafegrpc.NewUnaryClientInterceptor[any](
			retrypolicy.NewBuilder[any]().WithMaxAttempts(3).
				WithBackoff(100*time.Millisecond, 10*time.Second).Build(),
			circuitbreaker.NewBuilder[any]().WithFailureThresholdRatio(50, 100).
				WithDelay(30*time.Second).Build(),
		))},
	}
	runVariants(b, variants, runOpts{})
}
