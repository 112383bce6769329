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

// benchServerOpts is the server chain: limiter + bulkhead + breaker, metrics on.
func benchServerOpts(reg prometheus.Registerer) []grpcmw.Option {
	lim := ratelimit.NewLocal("bench", rate.Limit(1e9), 1e9, ratelimit.WithRegisterer(reg))
	return []grpcmw.Option{
		grpcmw.WithRateLimit(lim, func(context.Context, string) string { return "client" }),
		grpcmw.WithBulkhead(bulkhead.New("bench", bulkhead.WithLimit(bulkhead.MaxLimit), bulkhead.WithRegisterer(reg))),
		grpcmw.WithBreaker(breaker.New("bench", breaker.WithRegisterer(reg))),
	}
}

// BenchmarkUnaryBufconn measures a whole unary call over bufconn: bare, with
// the client chain and with the server chain.
func BenchmarkUnaryBufconn(b *testing.B) {
	cases := []struct {
		name   string
		client bool
		server bool
	}{
		{"bare", false, false},
		{"client_retry_breaker", true, false},
		{"server_limiter_bulkhead_breaker", false, true},
	}
	for _, tc := range cases {
		reg := prometheus.NewRegistry()
		var sopts []grpc.ServerOption
		var dopts []grpc.DialOption
		if tc.server {
			sopts = []grpc.ServerOption{grpc.UnaryInterceptor(grpcmw.UnaryServerInterceptor(benchServerOpts(reg)...))}
		}
		if tc.client {
			dopts = []grpc.DialOption{grpc.WithUnaryInterceptor(grpcmw.UnaryClientInterceptor(benchClientOpts(reg)...))}
		}
		c, _ := serve(b, "bufconn", &service{}, sopts, dopts...)
		req := payload("ping")
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.UnaryCall(context.Background(), req); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(tc.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := c.UnaryCall(context.Background(), req); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
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
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
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
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				_, _ = sic(ctx, req, info, handler)
			}
		})
	})
}
