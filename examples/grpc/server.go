package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/grpcmw"
	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/ratelimit"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// faultHeader is a metadata field with which this example's client asks the
// server to misbehave, so that one client run can show each failure: "lose"
// makes the charge and then drops the answer (first attempt only), "down"
// answers Unavailable without doing anything. It is a demo device, not
// something a real server accepts.
const faultHeader = "x-demo-fault"

// ledger is the service: UnaryCall makes a charge. It counts charges per
// idempotency key, so that the example can show none is made twice.
type ledger struct {
	testpb.UnimplementedTestServiceServer

	mu   sync.Mutex
	keys map[string]int
}

func (l *ledger) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	key := strings.Join(md.Get(grpcmw.IdempotencyKeyHeader), ",")
	l.mu.Lock()
	l.keys[key]++
	n := 0
	for _, c := range l.keys {
		n += c
	}
	l.mu.Unlock()
	body := fmt.Sprintf("charge #%d for %s", n, req.GetPayload().GetBody())
	return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: []byte(body)}}, nil
}

// charges returns the number of charges made and how many repeated a charge
// already made under the same key.
func (l *ledger) charges() (total, duplicates int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.keys {
		total += n
		duplicates += n - 1
	}
	return total, duplicates
}

// newServer returns a gRPC server for svc whose calls go through bulwark's
// interceptors: a rate limit per client address (20/s, bursts of 10),
// a bulkhead, a breaker, and idempotency keys scoped by the caller.
func newServer(svc *ledger, reg prometheus.Registerer) *grpc.Server {
	opts := []grpcmw.Option{
		grpcmw.WithRateLimit(ratelimit.NewLocal("ledger", rate.Limit(20), 10, ratelimit.WithRegisterer(reg)), grpcmw.KeyFromPeer),
		grpcmw.WithBulkhead(bulkhead.New("ledger", bulkhead.WithLimit(32), bulkhead.WithRegisterer(reg))),
		grpcmw.WithBreaker(breaker.New("ledger", breaker.WithRegisterer(reg))),
		grpcmw.WithIdempotency(idempotency.New("ledger", nil, idempotency.WithRegisterer(reg))),
		grpcmw.WithIdempotencyScope(principal),
	}
	srv := grpc.NewServer(
		// The fault injector sits outside bulwark's interceptor, where a
		// network failure would happen: a lost answer was stored already.
		grpc.ChainUnaryInterceptor(injectFaults, grpcmw.UnaryServerInterceptor(opts...)),
		grpc.ChainStreamInterceptor(grpcmw.StreamServerInterceptor(opts...)),
	)
	testpb.RegisterTestServiceServer(srv, svc)
	return srv
}

// principal names the caller for idempotency scoping: here a digest of the
// bearer token in the authorization metadata. A real service uses the
// identity its authentication established (mTLS, OAuth).
func principal(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	token, _ := strings.CutPrefix(strings.Join(md.Get("authorization"), ""), "Bearer ")
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:12])
}

func injectFaults(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	switch strings.Join(md.Get(faultHeader), "") {
	case "down":
		return nil, status.Error(codes.Unavailable, "ledger: down for maintenance")
	case "lose":
		if len(md.Get(grpcmw.PreviousAttemptsHeader)) == 0 { // the first attempt only
			_, _ = next(ctx, req) // charged and stored; the answer never arrives
			return nil, status.Error(codes.Unavailable, "ledger: connection reset")
		}
	}
	return next(ctx, req)
}
