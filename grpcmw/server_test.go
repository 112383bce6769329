package grpcmw_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/grpcmw"
	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/ratelimit"
)

func serverOpts(opts ...grpcmw.Option) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(grpcmw.UnaryServerInterceptor(opts...)),
		grpc.ChainStreamInterceptor(grpcmw.StreamServerInterceptor(opts...)),
	}
}

func TestServerRateLimit(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			clk := clock.NewFake(time.Time{})
			lim := ratelimit.NewLocal("rl", rate.Limit(1), 1, ratelimit.WithClock(clk))
			svc := &service{}
			c, _ := serve(t, tr, svc, serverOpts(grpcmw.WithRateLimit(lim, grpcmw.KeyFromMetadata("x-api-key"))))

			ctxA := metadata.AppendToOutgoingContext(context.Background(), "x-api-key", "a")
			ctxB := metadata.AppendToOutgoingContext(context.Background(), "x-api-key", "b")
			_, err := c.UnaryCall(ctxA, payload("1"))
			require.NoError(t, err)
			_, err = c.UnaryCall(ctxB, payload("1")) // another key has its own bucket
			require.NoError(t, err)

			var header, trailer metadata.MD
			_, err = c.UnaryCall(ctxA, payload("2"), grpc.Header(&header), grpc.Trailer(&trailer))
			requireCode(t, codes.ResourceExhausted, err)
			require.Equal(t, time.Second, retryInfo(t, err))
			qf := quotaFailure(err)
			require.NotNil(t, qf)
			require.Len(t, qf.GetViolations(), 1)
			require.Equal(t, "policy:default", qf.GetViolations()[0].GetSubject())
			require.Equal(t, []string{"1000"}, trailer.Get(grpcmw.PushbackKey))
			require.Empty(t, header, "a rejection is trailers-only")
			require.Equal(t, 2, svc.Calls())

			// Streams are limited the same way, and carry the trailer.
			st, err := c.StreamingOutputCall(ctxA, &testpb.StreamingOutputCallRequest{})
			require.NoError(t, err)
			_, err = st.Recv()
			requireCode(t, codes.ResourceExhausted, err)
			require.Equal(t, []string{"1000"}, st.Trailer().Get(grpcmw.PushbackKey))
			require.NotNil(t, quotaFailure(err))

			clk.Advance(time.Second)
			_, err = c.UnaryCall(ctxA, payload("3"))
			require.NoError(t, err)
		})
	}
}

func TestServerBreaker(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			clk := clock.NewFake(time.Time{})
			br := breaker.New("srv", breaker.WithConsecutiveFailures(2), breaker.WithJitter(0),
				breaker.WithOpenDuration(5*time.Second), breaker.WithClock(clk))
			svc := &service{unary: func(_ context.Context, n int, req *testpb.SimpleRequest) error {
				if string(req.GetPayload().GetBody()) == "missing" {
					return status.Error(codes.NotFound, "no such thing")
				}
				return status.Error(codes.Unavailable, "down")
			}}
			c, _ := serve(t, tr, svc, serverOpts(grpcmw.WithBreaker(br)))

			// NotFound is not a failure code: the breaker stays closed.
			for range 3 {
				_, err := c.UnaryCall(context.Background(), payload("missing"))
				requireCode(t, codes.NotFound, err)
			}
			require.Equal(t, breaker.Closed, br.State())

			for range 2 {
				_, err := c.UnaryCall(context.Background(), payload("x"))
				requireCode(t, codes.Unavailable, err)
			}
			require.Equal(t, breaker.Open, br.State())

			var trailer metadata.MD
			_, err := c.UnaryCall(context.Background(), payload("x"), grpc.Trailer(&trailer))
			requireCode(t, codes.Unavailable, err)
			require.Equal(t, 5*time.Second, retryInfo(t, err))
			require.Equal(t, []string{"5000"}, trailer.Get(grpcmw.PushbackKey))
			require.Equal(t, 5, svc.Calls(), "an open breaker does not call the handler")

			st, err := c.StreamingOutputCall(context.Background(), &testpb.StreamingOutputCallRequest{})
			require.NoError(t, err)
			_, err = st.Recv()
			requireCode(t, codes.Unavailable, err)
			require.Equal(t, []string{"5000"}, st.Trailer().Get(grpcmw.PushbackKey))
		})
	}
}

func TestServerBreakerClassification(t *testing.T) {
	info := &grpc.UnaryServerInfo{FullMethod: "/grpc.testing.TestService/UnaryCall"}
	ok := func(context.Context, any) (any, error) { return &testpb.SimpleResponse{}, nil }
	tests := []struct {
		name    string
		opts    []grpcmw.Option
		cancel  bool
		handler grpc.UnaryHandler
		want    breaker.Counts
	}{
		{"success", nil, false, ok, breaker.Counts{Calls: 1}},
		{"internal fails", nil, false, func(context.Context, any) (any, error) {
			return nil, status.Error(codes.Internal, "boom")
		}, breaker.Counts{Calls: 1, Failures: 1}},
		{"plain error is Unknown", nil, false, func(context.Context, any) (any, error) {
			return nil, errors.New("boom")
		}, breaker.Counts{Calls: 1, Failures: 1}},
		{"client cancelled is ignored", nil, true, func(ctx context.Context, _ any) (any, error) {
			return nil, status.FromContextError(ctx.Err()).Err()
		}, breaker.Counts{}},
		{"cancelled code is ignored", nil, false, func(context.Context, any) (any, error) {
			return nil, status.Error(codes.Canceled, "gone")
		}, breaker.Counts{}},
		{"custom failure codes", []grpcmw.Option{grpcmw.WithFailureCodes(codes.NotFound)}, false, func(context.Context, any) (any, error) {
			return nil, status.Error(codes.NotFound, "x")
		}, breaker.Counts{Calls: 1, Failures: 1}},
		{"custom failure codes exclude Internal", []grpcmw.Option{grpcmw.WithFailureCodes(codes.NotFound)}, false, func(context.Context, any) (any, error) {
			return nil, status.Error(codes.Internal, "x")
		}, breaker.Counts{Calls: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			br := breaker.New("c")
			ic := grpcmw.UnaryServerInterceptor(append([]grpcmw.Option{grpcmw.WithBreaker(br)}, tc.opts...)...)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.cancel {
				cancel()
			}
			_, _ = ic(ctx, nil, info, tc.handler)
			got := br.Counts()
			require.Equal(t, tc.want, breaker.Counts{Calls: got.Calls, Failures: got.Failures})
		})
	}
}

func TestServerPanicCountsAsFailureAndPanicsOn(t *testing.T) {
	br := breaker.New("p")
	bh := bulkhead.New("p", bulkhead.WithLimit(1))
	ic := grpcmw.UnaryServerInterceptor(grpcmw.WithBulkhead(bh), grpcmw.WithBreaker(br))
	info := &grpc.UnaryServerInfo{FullMethod: "/x/Y"}
	require.PanicsWithValue(t, "handler bug", func() {
		_, _ = ic(context.Background(), nil, info, func(context.Context, any) (any, error) { panic("handler bug") })
	})
	require.Equal(t, int64(1), br.Counts().Failures)
	require.Equal(t, 0, bh.InFlight(), "the slot is released")

	sic := grpcmw.StreamServerInterceptor(grpcmw.WithBulkhead(bh), grpcmw.WithBreaker(br))
	require.Panics(t, func() {
		_ = sic(nil, fakeServerStream{}, &grpc.StreamServerInfo{FullMethod: "/x/S"}, func(any, grpc.ServerStream) error { panic("stream bug") })
	})
	require.Equal(t, int64(2), br.Counts().Failures)
	require.Equal(t, 0, bh.InFlight())
}

type fakeServerStream struct{ grpc.ServerStream }

func (fakeServerStream) Context() context.Context { return context.Background() }
func (fakeServerStream) SetTrailer(metadata.MD)   {}

func TestServerBulkhead(t *testing.T) {
	for _, tr := range transports {
		for _, code := range []codes.Code{codes.ResourceExhausted, codes.Unavailable} {
			t.Run(tr+"/"+code.String(), func(t *testing.T) {
				bh := bulkhead.New("bh", bulkhead.WithLimit(1))
				entered, release := make(chan struct{}), make(chan struct{})
				svc := &service{unary: func(_ context.Context, n int, _ *testpb.SimpleRequest) error {
					if n == 1 {
						close(entered)
						<-release
					}
					return nil
				}}
				opts := []grpcmw.Option{grpcmw.WithBulkhead(bh)}
				if code == codes.Unavailable {
					opts = append(opts, grpcmw.WithBulkheadCode(codes.Unavailable))
				}
				c, _ := serve(t, tr, svc, serverOpts(opts...))
				errc := make(chan error, 1)
				go func() {
					_, err := c.UnaryCall(context.Background(), payload("slow"))
					errc <- err
				}()
				<-entered
				var trailer metadata.MD
				_, err := c.UnaryCall(context.Background(), payload("x"), grpc.Trailer(&trailer))
				requireCode(t, code, err)
				require.Equal(t, bulkhead.DefaultRetryAfter, retryInfo(t, err))
				require.Equal(t, []string{"100"}, trailer.Get(grpcmw.PushbackKey))
				close(release)
				require.NoError(t, <-errc)
				_, err = c.UnaryCall(context.Background(), payload("y"))
				require.NoError(t, err)
				require.Equal(t, 2, svc.Calls())
			})
		}
	}
	require.Panics(t, func() { grpcmw.WithBulkheadCode(codes.Internal) })
}

func TestServerIdempotency(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			entered, release := make(chan struct{}), make(chan struct{})
			svc := &service{unary: func(_ context.Context, n int, req *testpb.SimpleRequest) error {
				switch string(req.GetPayload().GetBody()) {
				case "missing":
					return status.Error(codes.NotFound, "no such thing")
				case "flaky":
					if n%2 == 1 {
						return status.Error(codes.Unavailable, "try again")
					}
				case "slow":
					close(entered)
					<-release
				}
				return nil
			}}
			g := idempotency.New("idem", idempotency.NewMemoryStore(idempotency.MemoryConfig{}))
			c, _ := serve(t, tr, svc, serverOpts(grpcmw.WithIdempotency(g), grpcmw.WithoutIdempotencyScope()))
			call := func(key, body string) (*testpb.SimpleResponse, metadata.MD, error) {
				ctx := context.Background()
				if key != "" {
					ctx = metadata.AppendToOutgoingContext(ctx, grpcmw.IdempotencyKeyHeader, key)
				}
				var header metadata.MD
				resp, err := c.UnaryCall(ctx, payload(body), grpc.Header(&header))
				return resp, header, err
			}

			// No key, not required: runs unprotected every time.
			_, _, err := call("", "a")
			require.NoError(t, err)
			_, _, err = call("", "a")
			require.NoError(t, err)
			require.Equal(t, 2, svc.Ledger())

			resp, header, err := call("k1", "a")
			require.NoError(t, err)
			require.Empty(t, header.Get(grpcmw.ReplayedHeader))
			require.Equal(t, 3, svc.Ledger())
			again, header, err := call("k1", "a")
			require.NoError(t, err)
			require.Equal(t, []string{"true"}, header.Get(grpcmw.ReplayedHeader))
			require.Equal(t, resp.GetPayload().GetBody(), again.GetPayload().GetBody())
			require.Equal(t, "call", again.GetUsername())
			require.Equal(t, 3, svc.Ledger(), "a replay does not run the handler")

			_, _, err = call("k1", "b")
			requireCode(t, codes.FailedPrecondition, err)
			_, _, err = call("bad key", "a")
			requireCode(t, codes.InvalidArgument, err)

			// A definite error is remembered and replayed with its status.
			calls := svc.Calls()
			_, _, err = call("k2", "missing")
			requireCode(t, codes.NotFound, err)
			_, header, err = call("k2", "missing")
			requireCode(t, codes.NotFound, err)
			require.Equal(t, "no such thing", status.Convert(err).Message())
			require.Equal(t, []string{"true"}, header.Get(grpcmw.ReplayedHeader))
			require.Equal(t, calls+1, svc.Calls())

			// A transient error releases the key: the retry runs.
			_, _, err = call("k3", "flaky")
			requireCode(t, codes.Unavailable, err)
			_, header, err = call("k3", "flaky")
			require.NoError(t, err)
			require.Empty(t, header.Get(grpcmw.ReplayedHeader))

			// In flight: Aborted, marked as such, asking the client back in
			// a second.
			errc := make(chan error, 1)
			go func() {
				_, _, err := call("k4", "slow")
				errc <- err
			}()
			<-entered
			var trailer metadata.MD
			_, err = c.UnaryCall(metadata.AppendToOutgoingContext(context.Background(), grpcmw.IdempotencyKeyHeader, "k4"),
				payload("slow"), grpc.Trailer(&trailer))
			requireCode(t, codes.Aborted, err)
			require.Equal(t, idempotency.InFlightPoll, retryInfo(t, err))
			require.Equal(t, []string{"1000"}, trailer.Get(grpcmw.PushbackKey))
			var mark *errdetails.ErrorInfo
			for _, d := range status.Convert(err).Details() {
				if ei, ok := d.(*errdetails.ErrorInfo); ok {
					mark = ei
				}
			}
			require.NotNil(t, mark, "the in-flight mark")
			require.Equal(t, grpcmw.InFlightReason, mark.GetReason())
			require.Equal(t, grpcmw.ErrorDomain, mark.GetDomain())
			close(release)
			require.NoError(t, <-errc)
		})
	}
}

func TestServerIdempotencyRequired(t *testing.T) {
	g := idempotency.New("req", nil, idempotency.WithRequired(true))
	svc := &service{}
	c, _ := serve(t, "bufconn", svc, serverOpts(grpcmw.WithIdempotency(g), grpcmw.WithoutIdempotencyScope()))
	_, err := c.UnaryCall(context.Background(), payload("a"))
	requireCode(t, codes.InvalidArgument, err)
	require.Equal(t, 0, svc.Calls())
}

// keyRecorder is a Limiter that allows everything and records the keys.
type keyRecorder struct {
	mu   sync.Mutex
	keys []string
}

func (r *keyRecorder) Allow(_ context.Context, key string, _ int) (ratelimit.Decision, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.keys = append(r.keys, key)
	return ratelimit.Decision{Allowed: true}, nil
}

// The peer key that reaches the limiter through a real server is the
// client's IP over TCP, IPv4 and IPv6, and the address itself over bufconn,
// on every call (the first is a cache miss, the rest hits).
func TestServerRateLimitKeyFromPeer(t *testing.T) {
	cases := []struct{ transport, want string }{
		{"tcp", "127.0.0.1"},
		{"tcp6", "::1"},
		{"bufconn", "bufconn"},
	}
	for _, tc := range cases {
		t.Run(tc.transport, func(t *testing.T) {
			rec := &keyRecorder{}
			opts := serverOpts(grpcmw.WithRateLimit(rec, grpcmw.KeyFromPeer))
			var c testpb.TestServiceClient
			if tc.transport == "tcp6" {
				lis, err := net.Listen("tcp6", "[::1]:0")
				if err != nil {
					t.Skipf("no IPv6 loopback: %v", err)
				}
				c = serveListener(t, lis, &service{}, opts)
			} else {
				c, _ = serve(t, tc.transport, &service{}, opts)
			}
			for range 3 {
				_, err := c.UnaryCall(context.Background(), payload("x"))
				require.NoError(t, err)
			}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			require.Equal(t, []string{tc.want, tc.want, tc.want}, rec.keys)
		})
	}
}

// downStore is an idempotency store whose backend is unreachable.
type downStore struct{ idempotency.Store }

func (downStore) Claim(context.Context, idempotency.Key, idempotency.Fingerprint, time.Duration) (idempotency.ClaimResult, error) {
	return idempotency.ClaimResult{}, errors.New("dial tcp 10.0.0.9:6379: connection refused")
}

// The breaker counts only calls that ran the handler. A call the idempotency
// Guard refused (here: its store is down, failing closed, answered with
// Unavailable) is not a failure of the service: an idempotency-store outage
// must not open the service's breaker, which would then refuse calls without
// a key too.
func TestIdempotencyStoreOutageDoesNotOpenServiceBreaker(t *testing.T) {
	br := breaker.New("store-outage", breaker.WithConsecutiveFailures(2))
	g := idempotency.New("store-outage", downStore{})
	svc := &service{}
	c, _ := serve(t, "bufconn", svc, serverOpts(grpcmw.WithBreaker(br), grpcmw.WithIdempotency(g), grpcmw.WithoutIdempotencyScope()))

	keyed := metadata.AppendToOutgoingContext(context.Background(), grpcmw.IdempotencyKeyHeader, "k1")
	for range 2 {
		_, err := c.UnaryCall(keyed, payload("a"))
		requireCode(t, codes.Unavailable, err) // the store, not the service
		require.NotContains(t, status.Convert(err).Message(), "10.0.0.9", "the store's error stays on the server")
	}
	require.Equal(t, 0, svc.Calls())
	require.Equal(t, breaker.Closed.String(), br.State().String(), "guard refusals opened the service's breaker")

	_, err := c.UnaryCall(context.Background(), payload("no key"))
	require.NoError(t, err, "a call that does not need the store is refused")
}

// The other side of the same rule: a call the Guard answers without running
// the handler (a replay, an in-flight Aborted, a mismatch) is no success of
// the service either. As the half-open probe, a replay must not close the
// breaker of a service that was never asked and is still failing.
func TestIdempotentReplayIsNotABreakerProbe(t *testing.T) {
	clk := clock.NewFake(time.Now())
	br := breaker.New("replay-probe", breaker.WithConsecutiveFailures(1), breaker.WithHalfOpen(1, 1),
		breaker.WithOpenDuration(time.Second), breaker.WithJitter(0), breaker.WithClock(clk))
	g := idempotency.New("replay-probe", idempotency.NewMemoryStore(idempotency.MemoryConfig{}))
	var failing atomic.Bool
	svc := &service{unary: func(context.Context, int, *testpb.SimpleRequest) error {
		if failing.Load() {
			return status.Error(codes.Unavailable, "down")
		}
		return nil
	}}
	c, _ := serve(t, "bufconn", svc, serverOpts(grpcmw.WithBreaker(br), grpcmw.WithIdempotency(g), grpcmw.WithoutIdempotencyScope()))
	keyed := metadata.AppendToOutgoingContext(context.Background(), grpcmw.IdempotencyKeyHeader, "k1")
	_, err := c.UnaryCall(keyed, payload("a")) // stored
	require.NoError(t, err)

	failing.Store(true)
	_, err = c.UnaryCall(context.Background(), payload("b"))
	requireCode(t, codes.Unavailable, err)
	require.Equal(t, breaker.Open.String(), br.State().String())
	clk.Advance(time.Second) // half-open: the next call is the probe

	_, err = c.UnaryCall(keyed, payload("a")) // a replay: the handler does not run
	require.NoError(t, err)
	require.NotEqual(t, breaker.Closed.String(), br.State().String(), "a replay closed the breaker of a failing service")
}

// A result larger than WithMaxStoredResponse, or than the store holds, is
// answered but cannot be replayed: a repeat is told the call was processed
// (AlreadyExists, marked) and the handler does not run again. Before, the key
// was released, and a retry after a lost answer ran the effect twice.
func TestIdempotencyResultNotStoredIsNotRunAgain(t *testing.T) {
	tests := []struct {
		name  string
		store idempotency.Store
		opts  []grpcmw.Option
	}{
		{"over WithMaxStoredResponse", idempotency.NewMemoryStore(idempotency.MemoryConfig{}),
			[]grpcmw.Option{grpcmw.WithMaxStoredResponse(1 << 10)}},
		{"larger than the store holds", idempotency.NewMemoryStore(idempotency.MemoryConfig{MaxBytes: 1 << 10}), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := idempotency.New("not-stored", tt.store)
			svc := &service{}
			opts := append([]grpcmw.Option{grpcmw.WithIdempotency(g), grpcmw.WithoutIdempotencyScope()}, tt.opts...)
			c, _ := serve(t, "bufconn", svc, serverOpts(opts...))
			ctx := metadata.AppendToOutgoingContext(context.Background(), grpcmw.IdempotencyKeyHeader, "big-1")
			resp, err := c.UnaryCall(ctx, payload(strings.Repeat("b", 2<<10))) // echoed: a 2 KiB response
			require.NoError(t, err)
			require.Len(t, resp.GetPayload().GetBody(), 2<<10, "the first caller gets all of it")

			var header metadata.MD
			_, err = c.UnaryCall(ctx, payload(strings.Repeat("b", 2<<10)), grpc.Header(&header))
			requireCode(t, codes.AlreadyExists, err)
			st, _ := status.FromError(err)
			require.Len(t, st.Details(), 1)
			ei, ok := st.Details()[0].(*errdetails.ErrorInfo)
			require.True(t, ok)
			require.Equal(t, grpcmw.NotReplayableReason, ei.GetReason())
			require.Equal(t, grpcmw.ErrorDomain, ei.GetDomain())
			require.Equal(t, []string{"true"}, header.Get(grpcmw.ReplayedHeader))
			require.Equal(t, 1, svc.Ledger(), "the handler ran once")
		})
	}
}

// With the defaults, a result of a few MiB is stored and replayed: the
// default memory store holds any record up to its whole size, not only up to
// one shard's share of it.
func TestIdempotencyLargeResultIsReplayed(t *testing.T) {
	g := idempotency.New("large", nil) // the default MemoryStore
	svc := &service{}
	c, _ := serve(t, "bufconn", svc, serverOpts(grpcmw.WithIdempotency(g), grpcmw.WithoutIdempotencyScope()))
	ctx := metadata.AppendToOutgoingContext(context.Background(), grpcmw.IdempotencyKeyHeader, "large-1")
	body := strings.Repeat("b", 3<<20) // echoed: a 3 MiB response
	for range 2 {
		resp, err := c.UnaryCall(ctx, payload(body))
		require.NoError(t, err)
		require.Len(t, resp.GetPayload().GetBody(), len(body))
	}
	require.Equal(t, 1, svc.Ledger(), "the repeat is a replay")
}

// WithIdempotency without a decision on scope is a programming mistake: a
// shared key space by default would let one client replay another's result.
func TestServerIdempotencyNeedsAScopeDecision(t *testing.T) {
	g := idempotency.New("scope-decision", nil)
	require.PanicsWithValue(t, "grpcmw: WithIdempotency needs WithIdempotencyScope(func) naming the principal a key belongs to, "+
		"or WithoutIdempotencyScope() to let all callers share one key space",
		func() { grpcmw.UnaryServerInterceptor(grpcmw.WithIdempotency(g)) })
	require.Panics(t, func() { grpcmw.StreamServerInterceptor(grpcmw.WithIdempotency(g)) })
	require.Panics(t, func() { grpcmw.UnaryServerInterceptor(grpcmw.WithIdempotency(g), grpcmw.WithIdempotencyScope(nil)) })
	require.NotPanics(t, func() { grpcmw.UnaryServerInterceptor(grpcmw.WithIdempotency(g), grpcmw.WithoutIdempotencyScope()) })
	require.NotPanics(t, func() {
		grpcmw.UnaryServerInterceptor(grpcmw.WithIdempotency(g), grpcmw.WithIdempotencyScope(func(context.Context) string { return "" }))
	})
	require.NotPanics(t, func() { grpcmw.UnaryServerInterceptor() }, "no idempotency: no scope needed")
}
