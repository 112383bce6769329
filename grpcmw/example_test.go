package grpcmw_test

import (
	"context"
	"fmt"
	"net"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/grpcmw"
	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/ratelimit"
	"github.com/bulwark-go/bulwark/retry"
)

// A server that limits each API key to 100 calls per second (bursts of 20),
// runs at most 64 calls at once, stops calling a failing backend and applies
// retried calls with an idempotency-key once.
func ExampleUnaryServerInterceptor() {
	opts := []grpcmw.Option{
		grpcmw.WithRateLimit(ratelimit.NewLocal("api", 100, 20), grpcmw.KeyFromMetadata("x-api-key")),
		grpcmw.WithBulkhead(bulkhead.New("api", bulkhead.WithLimit(64))),
		grpcmw.WithBreaker(breaker.New("api")),
	}
	guard := idempotency.New("api", idempotency.NewMemoryStore(idempotency.MemoryConfig{}))
	srv := grpc.NewServer(
		// One interceptor with every option: chaining one per primitive
		// costs grpc-go a closure per interceptor per call.
		grpc.ChainUnaryInterceptor(grpcmw.UnaryServerInterceptor(append(opts,
			grpcmw.WithIdempotency(guard),
			// A key belongs to the API key that sent it: no client can
			// replay another's result.
			grpcmw.WithIdempotencyScope(func(ctx context.Context) string {
				if v := metadata.ValueFromIncomingContext(ctx, "x-api-key"); len(v) > 0 {
					return v[0]
				}
				return ""
			}))...)),
		grpc.ChainStreamInterceptor(grpcmw.StreamServerInterceptor(opts...)),
	)
	svc := &service{}
	testpb.RegisterTestServiceServer(srv, svc)
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cc.Close()
	client := testpb.NewTestServiceClient(cc)
	// A client sends the same call twice, as a retry would: the second gets
	// the stored result, marked as a replay, and the service runs once.
	ctx := metadata.AppendToOutgoingContext(context.Background(),
		"x-api-key", "key-1", grpcmw.IdempotencyKeyHeader, "transfer-42")
	for range 2 {
		var header metadata.MD
		resp, err := client.UnaryCall(ctx, payload("transfer 10"), grpc.Header(&header))
		fmt.Println(string(resp.GetPayload().GetBody()), err, header.Get(grpcmw.ReplayedHeader))
	}
	fmt.Println("calls the service ran:", svc.Calls())
	// Output:
	// transfer 10 <nil> []
	// transfer 10 <nil> [true]
	// calls the service ran: 1
}

// A client that retries Unavailable and ResourceExhausted (honouring the
// server's pushback), keeps one breaker per target, throttles itself to 50
// calls per second, and sends an idempotency key that every retry of a call
// repeats. grpc-go's own retry is disabled so that attempts do not multiply.
func ExampleUnaryClientInterceptor() {
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := grpc.NewServer()
	testpb.RegisterTestServiceServer(srv, &service{})
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	opts := []grpcmw.Option{
		grpcmw.WithRetry(retry.New("backend", retry.WithMaxAttempts(4))),
		grpcmw.WithBreakers(grpcmw.BreakerPerTarget()),
		grpcmw.WithRateLimit(ratelimit.NewLocal("backend", rate.Limit(50), 5),
			func(context.Context, string) string { return "backend" }),
		grpcmw.WithIdempotencyKeys(),
	}
	cc, err := grpc.NewClient(lis.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDisableRetry(),
		grpc.WithChainUnaryInterceptor(grpcmw.UnaryClientInterceptor(opts...)),
		grpc.WithChainStreamInterceptor(grpcmw.StreamClientInterceptor(opts...)),
	)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cc.Close()
	client := testpb.NewTestServiceClient(cc)

	var attempts int
	resp, err := client.UnaryCall(context.Background(), payload("hello"),
		grpcmw.WithIdempotencyKey("greeting-1"), grpcmw.ReportAttempts(&attempts))
	fmt.Println(string(resp.GetPayload().GetBody()), err, attempts)

	// Per call: no retry for this one.
	_, err = client.UnaryCall(context.Background(), payload("once"), grpcmw.DisableRetry())
	fmt.Println(err)
	// Output:
	// hello <nil> 1
	// <nil>
}
