package grpcmw_test

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/grpcmw"
	"github.com/bulwark-go/bulwark/internal/parallel"
	"github.com/bulwark-go/bulwark/ratelimit"
	"github.com/bulwark-go/bulwark/retry"
)

// benchClientOpts is the client chain of the benchmarks: retry + breaker,
// metrics on.
func benchClientOpts(reg prometheus.Registerer) []grpcmw.Option {
	return []grpcmw.Option{
		grpcmw.WithRetry(retry.New("bench", retry.WithRegisterer(reg))),
		grpcmw.WithBreaker(breaker.New("bench", breaker.WithRegisterer(reg))),
	}
}

// benchServerOpts is the server chain: limiter keyed by the peer's address +
// bulkhead + breaker, metrics on.
func benchServerOpts(reg prometheus.Registerer) []grpcmw.Option {
	lim := ratelimit.NewLocal("bench", rate.Limit(1e9), 1e9, ratelimit.WithRegisterer(reg))
	return []grpcmw.Option{
		grpcmw.WithRateLimit(lim, grpcmw.KeyFromPeer),
		grpcmw.WithBulkhead(bulkhead.New("bench", bulkhead.WithLimit(bulkhead.MaxLimit), bulkhead.WithRegisterer(reg))),
		grpcmw.WithBreaker(breaker.New("bench", breaker.WithRegisterer(reg))),
	}
}

// benchService answers UnaryCall at once with a fixed response, so that a
// benchmark counts the transport and the interceptors, not the service.
type benchService struct {
	testpb.UnimplementedTestServiceServer
}

var benchResponse = &testpb.SimpleResponse{}

func (benchService) UnaryCall(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return benchResponse, nil
}

// passServer and passClient are interceptors that do nothing: the cost
// grpc-go adds to a call merely because an interceptor is installed.
func passServer(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	return handler(ctx, req)
}

func passClient(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return invoker(ctx, method, req, reply, cc, opts...)
}

// BenchmarkUnaryCall measures a whole unary call over bufconn and over TCP
// on 127.0.0.1: bare, with interceptors that do nothing (what grpc-go adds
// for any interceptor), with the client chain (retry + breaker), with the
// server chain (limiter keyed by the peer + bulkhead + breaker) and with
// both. The allocations a variant adds to bare are the ones to explain.
func BenchmarkUnaryCall(b *testing.B) {
	cases := []struct {
		name   string
		client grpc.UnaryClientInterceptor
		server grpc.UnaryServerInterceptor
	}{
		{"bare", nil, nil},
		{"pass_client", passClient, nil},
		{"pass_server", nil, passServer},
		{"client_retry_breaker", grpcmw.UnaryClientInterceptor(benchClientOpts(prometheus.NewRegistry())...), nil},
		{"server_limiter_bulkhead_breaker", nil, grpcmw.UnaryServerInterceptor(benchServerOpts(prometheus.NewRegistry())...)},
		{"both", grpcmw.UnaryClientInterceptor(benchClientOpts(prometheus.NewRegistry())...),
			grpcmw.UnaryServerInterceptor(benchServerOpts(prometheus.NewRegistry())...)},
	}
	for _, transport := range transports {
		for _, tc := range cases {
			var sopts []grpc.ServerOption
			var dopts []grpc.DialOption
			if tc.server != nil {
				sopts = []grpc.ServerOption{grpc.UnaryInterceptor(tc.server)}
			}
			if tc.client != nil {
				dopts = []grpc.DialOption{grpc.WithUnaryInterceptor(tc.client)}
			}
			c, _ := serve(b, transport, benchService{}, sopts, dopts...)
			req := payload("ping")
			name := transport + "/" + tc.name
			b.Run(name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := c.UnaryCall(context.Background(), req); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run(name+"/parallel", func(b *testing.B) {
				b.ReportAllocs()
				parallel.Run(b, 0, func(pw *parallel.Worker) {
					for pw.Next() {
						if _, err := c.UnaryCall(context.Background(), req); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}

// BenchmarkInterceptor measures the interceptors alone: each is called
// directly with an invoker or handler that does nothing.
func BenchmarkInterceptor(b *testing.B) {
	reg := prometheus.NewRegistry()
	cic := grpcmw.UnaryClientInterceptor(benchClientOpts(reg)...)
	sic := grpcmw.UnaryServerInterceptor(benchServerOpts(reg)...)
	invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	handler := func(context.Context, any) (any, error) { return nil, nil }
	info := &grpc.UnaryServerInfo{FullMethod: "/grpc.testing.TestService/UnaryCall"}
	req, reply := payload("ping"), new(testpb.SimpleResponse)
	ctx := context.Background()
	const method = "/grpc.testing.TestService/UnaryCall"

	b.Run("client_retry_breaker", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = cic(ctx, method, req, reply, nil, invoker)
		}
	})
	b.Run("client_retry_breaker/parallel", func(b *testing.B) {
		b.ReportAllocs()
		parallel.Run(b, 0, func(pw *parallel.Worker) {
			for pw.Next() {
				_ = cic(ctx, method, req, reply, nil, invoker)
			}
		})
	})
	b.Run("server_limiter_bulkhead_breaker", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = sic(ctx, req, info, handler)
		}
	})
	// The same chain without the limiter, to tell the adapter's cost from
	// the token bucket's (x/time/rate reads the clock on every call).
	sicNoLimit := grpcmw.UnaryServerInterceptor(benchServerOpts(reg)[1:]...)
	b.Run("server_bulkhead_breaker", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = sicNoLimit(ctx, req, info, handler)
		}
	})
	b.Run("server_limiter_bulkhead_breaker/parallel", func(b *testing.B) {
		b.ReportAllocs()
		parallel.Run(b, 0, func(pw *parallel.Worker) {
			for pw.Next() {
				_, _ = sic(ctx, req, info, handler)
			}
		})
	})
}
