package grpcmw_test

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/grpcmw"
	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/ratelimit"
	"github.com/bulwark-go/bulwark/retry"
)

// newRetry returns a policy on clk that waits a constant second between
// attempts and has no budget, so that tests know every wait.
func newRetry(clk clock.Clock, opts ...retry.Option) *retry.Policy {
	base := []retry.Option{
		retry.WithClock(clk),
		retry.WithBackOff(func() backoff.BackOff { return backoff.NewConstantBackOff(time.Second) }),
		retry.WithBudget(nil),
	}
	return retry.New("client", append(base, opts...)...)
}

func clientOpts(opts ...grpcmw.Option) []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(grpcmw.UnaryClientInterceptor(opts...)),
		grpc.WithChainStreamInterceptor(grpcmw.StreamClientInterceptor(opts...)),
	}
}

type result struct {
	resp *testpb.SimpleResponse
	err  error
}

func goCall(c testpb.TestServiceClient, ctx context.Context, body string, opts ...grpc.CallOption) <-chan result {
	ch := make(chan result, 1)
	go func() {
		resp, err := c.UnaryCall(ctx, payload(body), opts...)
		ch <- result{resp, err}
	}()
	return ch
}

func TestClientRetryHonoursServerHints(t *testing.T) {
	retryInfoErr := func() error {
		st, _ := status.New(codes.ResourceExhausted, "slow down").
			WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(3 * time.Second)})
		return st.Err()
	}
	tests := []struct {
		name string
		fail func(ctx context.Context) error
		wait time.Duration
	}{
		{"pushback trailer", func(ctx context.Context) error {
			_ = grpc.SetTrailer(ctx, metadata.Pairs(grpcmw.PushbackKey, "2500"))
			return status.Error(codes.Unavailable, "busy")
		}, 2500 * time.Millisecond},
		{"RetryInfo detail", func(context.Context) error { return retryInfoErr() }, 3 * time.Second},
		{"pushback wins over RetryInfo", func(ctx context.Context) error {
			_ = grpc.SetTrailer(ctx, metadata.Pairs(grpcmw.PushbackKey, "700"))
			return retryInfoErr()
		}, 700 * time.Millisecond},
		{"no hint: backoff", func(context.Context) error { return status.Error(codes.Unavailable, "x") }, time.Second},
	}
	for _, tr := range transports {
		for _, tc := range tests {
			t.Run(tr+"/"+tc.name, func(t *testing.T) {
				clk := clock.NewFake(time.Time{})
				svc := &service{unary: func(ctx context.Context, n int, _ *testpb.SimpleRequest) error {
					if n == 1 {
						return tc.fail(ctx)
					}
					return nil
				}}
				c, _ := serve(t, tr, svc, nil, clientOpts(grpcmw.WithRetry(newRetry(clk)))...)
				var attempts int
				done := goCall(c, context.Background(), "a", grpcmw.ReportAttempts(&attempts))
				clk.WaitForTimers(1)
				clk.Advance(tc.wait - time.Millisecond)
				require.Equal(t, 1, clk.Pending(), "the retry waits the whole hint")
				clk.Advance(time.Millisecond)
				r := <-done
				require.NoError(t, r.err)
				require.Equal(t, "a", string(r.resp.GetPayload().GetBody()))
				require.Equal(t, 2, attempts)
				require.Equal(t, 2, svc.Calls())
				require.Equal(t, []string{"", "1"}, svc.prev, "a retry carries grpc-previous-rpc-attempts")
			})
		}
	}
}

func TestClientDoesNotRetry(t *testing.T) {
	tests := []struct {
		name     string
		fail     func(ctx context.Context) error
		opts     []grpc.CallOption
		want     codes.Code
		attempts int
	}{
		{"non-retryable code", func(context.Context) error { return status.Error(codes.NotFound, "x") }, nil, codes.NotFound, 1},
		{"negative pushback", func(ctx context.Context) error {
			_ = grpc.SetTrailer(ctx, metadata.Pairs(grpcmw.PushbackKey, "-1"))
			return status.Error(codes.Unavailable, "x")
		}, nil, codes.Unavailable, 1},
		{"malformed pushback", func(ctx context.Context) error {
			_ = grpc.SetTrailer(ctx, metadata.Pairs(grpcmw.PushbackKey, "soon"))
			return status.Error(codes.Unavailable, "x")
		}, nil, codes.Unavailable, 1},
		{"DisableRetry", func(context.Context) error { return status.Error(codes.Unavailable, "x") },
			[]grpc.CallOption{grpcmw.DisableRetry()}, codes.Unavailable, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := clock.NewFake(time.Time{})
			svc := &service{unary: func(ctx context.Context, _ int, _ *testpb.SimpleRequest) error { return tc.fail(ctx) }}
			c, _ := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithRetry(newRetry(clk)))...)
			var attempts int
			_, err := c.UnaryCall(context.Background(), payload("a"), append(tc.opts, grpcmw.ReportAttempts(&attempts))...)
			requireCode(t, tc.want, err)
			require.Equal(t, tc.attempts, attempts)
			require.Equal(t, tc.attempts, svc.Calls())
			require.Equal(t, 0, clk.Created(), "no wait")
		})
	}
}

func TestClientMaxAttemptsPerCall(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	svc := &service{unary: func(context.Context, int, *testpb.SimpleRequest) error {
		return status.Error(codes.Unavailable, "down")
	}}
	c, _ := serve(t, "tcp", svc, nil, clientOpts(grpcmw.WithRetry(newRetry(clk, retry.WithMaxAttempts(5))))...)
	var attempts int
	done := goCall(c, context.Background(), "a", grpcmw.WithMaxAttempts(2), grpcmw.ReportAttempts(&attempts))
	clk.WaitForTimers(1)
	clk.Advance(time.Second)
	r := <-done
	requireCode(t, codes.Unavailable, r.err)
	require.Equal(t, "down", status.Convert(r.err).Message(), "the last attempt's status, unchanged")
	require.Equal(t, 2, attempts)
	require.Equal(t, 2, svc.Calls())
	require.Panics(t, func() { grpcmw.WithMaxAttempts(0) })
}

func TestClientCancelDuringWait(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	svc := &service{unary: func(context.Context, int, *testpb.SimpleRequest) error {
		return status.Error(codes.Unavailable, "down")
	}}
	c, _ := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithRetry(newRetry(clk)))...)
	ctx, cancel := context.WithCancel(context.Background())
	done := goCall(c, ctx, "a")
	clk.WaitForTimers(1)
	cancel()
	requireCode(t, codes.Canceled, (<-done).err)
	require.Equal(t, 1, svc.Calls())
}

func TestClientAttemptTimeout(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	svc := &service{unary: func(ctx context.Context, n int, _ *testpb.SimpleRequest) error {
		if n == 1 {
			<-ctx.Done() // hangs until the client's attempt deadline
			return ctx.Err()
		}
		return nil
	}}
	p := newRetry(clk, retry.WithAttemptTimeout(50*time.Millisecond))
	c, _ := serve(t, "tcp", svc, nil, clientOpts(grpcmw.WithRetry(p))...)
	// The call's own deadline ends the test, should no attempt timeout
	// apply, with an error rather than a hang.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res := drive(clk, goCall(c, ctx, "a")) // the first attempt times out; the retry waits a second
	require.NoError(t, res.err)
	require.Equal(t, 2, svc.Calls())
}

// lossy drops the response of the first call it sees: the server ran it, the
// client saw Unavailable. It records the idempotency key of every attempt.
type lossy struct {
	mu   sync.Mutex
	n    int
	keys []string
}

func (l *lossy) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	md, _ := metadata.FromOutgoingContext(ctx)
	l.mu.Lock()
	l.n++
	n := l.n
	l.keys = append(l.keys, md.Get(grpcmw.IdempotencyKeyHeader)...)
	l.mu.Unlock()
	err := invoker(ctx, method, req, reply, cc, opts...)
	if n == 1 && err == nil {
		return status.Error(codes.Unavailable, "connection reset before the response arrived")
	}
	return err
}

func TestClientRetryWithIdempotencyKeyAppliesOnce(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			clk := clock.NewFake(time.Time{})
			g := idempotency.New("ledger", idempotency.NewMemoryStore(idempotency.MemoryConfig{}))
			svc := &service{}
			l := &lossy{}
			c, _ := serve(t, tr, svc, serverOpts(grpcmw.WithIdempotency(g), grpcmw.WithoutIdempotencyScope()),
				grpc.WithChainUnaryInterceptor(
					grpcmw.UnaryClientInterceptor(grpcmw.WithRetry(newRetry(clk)), grpcmw.WithIdempotencyKeys()),
					l.intercept))
			var header metadata.MD
			var attempts int
			done := goCall(c, context.Background(), "transfer 10", grpc.Header(&header), grpcmw.ReportAttempts(&attempts))
			clk.WaitForTimers(1)
			clk.Advance(time.Second)
			r := <-done
			require.NoError(t, r.err)
			require.Equal(t, "transfer 10", string(r.resp.GetPayload().GetBody()))
			require.Equal(t, 2, attempts)
			require.Equal(t, 1, svc.Ledger(), "the server's ledger changed once")
			require.Equal(t, 1, svc.Calls(), "the second attempt was a replay")
			require.Equal(t, []string{"true"}, header.Get(grpcmw.ReplayedHeader))
			require.Len(t, l.keys, 2)
			require.Equal(t, l.keys[0], l.keys[1], "the same key on every attempt")
			require.Len(t, l.keys[0], 22)

			// A key given per call is used as is; a new logical call gets a new key.
			_, err := c.UnaryCall(context.Background(), payload("x"), grpcmw.WithIdempotencyKey("order-42"))
			require.NoError(t, err)
			_, err = c.UnaryCall(context.Background(), payload("y"))
			require.NoError(t, err)
			require.Equal(t, "order-42", l.keys[2])
			require.NotEqual(t, l.keys[0], l.keys[3])
		})
	}
}

// TestClientRetriesInFlightAborted: a call whose first attempt timed out
// while the server still ran it gets, on its retry, the server's in-flight
// Aborted. The client waits the pushback and retries again, and gets the
// first call's stored result: the server's ledger changed once.
func TestClientRetriesInFlightAborted(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			entered, release, stored := make(chan struct{}), make(chan struct{}), make(chan struct{})
			var releaseOnce, storedOnce sync.Once
			free := func() { releaseOnce.Do(func() { close(release) }) }
			svc := &service{unary: func(_ context.Context, n int, _ *testpb.SimpleRequest) error {
				if n == 1 {
					close(entered)
					<-release // outlives the client's first attempt
				}
				return nil
			}}
			g := idempotency.New("inflight", idempotency.NewMemoryStore(idempotency.MemoryConfig{}))
			// The first result returned through the Guard is the first
			// call's, once stored: the replay comes only after it.
			signal := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
				resp, err := handler(ctx, req)
				if err == nil {
					storedOnce.Do(func() { close(stored) })
				}
				return resp, err
			}
			clk := clock.NewFake(time.Time{})
			type retried struct {
				err   error
				delay time.Duration
			}
			retries := make(chan retried, 3)
			p := newRetry(clk, retry.WithAttemptTimeout(50*time.Millisecond),
				retry.WithOnRetry(func(_ int, err error, d time.Duration) { retries <- retried{err, d} }))
			c, _ := serve(t, tr, svc,
				[]grpc.ServerOption{grpc.ChainUnaryInterceptor(signal, grpcmw.UnaryServerInterceptor(grpcmw.WithIdempotency(g), grpcmw.WithoutIdempotencyScope()))},
				clientOpts(grpcmw.WithRetry(p), grpcmw.WithIdempotencyKeys())...)
			t.Cleanup(free) // before the server stops, which waits for the handler

			var attempts int
			done := goCall(c, context.Background(), "transfer 10", grpcmw.ReportAttempts(&attempts))
			<-entered
			r1 := <-retries
			requireCode(t, codes.DeadlineExceeded, r1.err)
			clk.WaitForTimers(1)
			clk.Advance(time.Second) // the backoff after the timed-out attempt
			select {
			case r2 := <-retries:
				requireCode(t, codes.Aborted, r2.err)
				require.Equal(t, idempotency.InFlightPoll, r2.delay, "the server's pushback")
			case r := <-done:
				t.Fatalf("the in-flight answer was not retried: the call ended with %v", r.err)
			}
			free()
			<-stored
			clk.WaitForTimers(1)
			clk.Advance(idempotency.InFlightPoll)
			r := <-done
			require.NoError(t, r.err)
			require.Equal(t, "transfer 10", string(r.resp.GetPayload().GetBody()))
			require.Equal(t, 3, attempts)
			require.Equal(t, 1, svc.Calls(), "the other attempts were answered by the Guard")
			require.Equal(t, 1, svc.Ledger())
		})
	}
}

// TestClientInFlightAbortedNeedsKeyAndMark: only an Aborted marked as the
// in-flight answer, to a call with an idempotency key, is retried.
func TestClientInFlightAbortedNeedsKeyAndMark(t *testing.T) {
	tests := []struct {
		name    string
		marked  bool
		key     bool
		retried bool
	}{
		{"marked, with a key", true, true, true},
		{"marked, no key", true, false, false},
		{"not marked, with a key", false, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := clock.NewFake(time.Time{})
			svc := &service{unary: func(ctx context.Context, n int, _ *testpb.SimpleRequest) error {
				if n > 1 {
					return nil
				}
				_ = grpc.SetTrailer(ctx, metadata.Pairs(grpcmw.PushbackKey, "1000"))
				st := status.New(codes.Aborted, "in flight")
				if tc.marked {
					st, _ = st.WithDetails(&errdetails.ErrorInfo{Reason: grpcmw.InFlightReason, Domain: grpcmw.ErrorDomain})
				}
				return st.Err()
			}}
			retrying := make(chan struct{}, 1)
			p := newRetry(clk, retry.WithOnRetry(func(int, error, time.Duration) { retrying <- struct{}{} }))
			c, _ := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithRetry(p))...)
			var opts []grpc.CallOption
			if tc.key {
				opts = append(opts, grpcmw.WithIdempotencyKey("k"))
			}
			done := goCall(c, context.Background(), "a", opts...)
			select {
			case <-retrying:
				require.True(t, tc.retried, "a retry followed")
				clk.WaitForTimers(1)
				clk.Advance(time.Second)
				require.NoError(t, (<-done).err)
				require.Equal(t, 2, svc.Calls())
			case r := <-done:
				require.False(t, tc.retried, "the call ended without a retry: %v", r.err)
				requireCode(t, codes.Aborted, r.err)
				require.Equal(t, 1, svc.Calls())
			}
		})
	}
}

func TestClientBreaker(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			clk := clock.NewFake(time.Time{})
			br := breaker.New("upstream", breaker.WithConsecutiveFailures(2), breaker.WithJitter(0),
				breaker.WithOpenDuration(5*time.Second), breaker.WithClock(clk))
			svc := &service{unary: func(context.Context, int, *testpb.SimpleRequest) error {
				return status.Error(codes.Unavailable, "down")
			}}
			c, _ := serve(t, tr, svc, nil, clientOpts(grpcmw.WithBreaker(br))...)
			for range 2 {
				_, err := c.UnaryCall(context.Background(), payload("a"))
				requireCode(t, codes.Unavailable, err)
			}
			_, err := c.UnaryCall(context.Background(), payload("a"))
			requireCode(t, codes.Unavailable, err)
			require.ErrorIs(t, err, breaker.ErrOpen)
			require.Equal(t, 5*time.Second, retryInfo(t, err))
			require.Equal(t, 2, svc.Calls(), "an open breaker keeps the call local")

			st, err := c.StreamingOutputCall(context.Background(), &testpb.StreamingOutputCallRequest{})
			require.Nil(t, st)
			require.ErrorIs(t, err, breaker.ErrOpen)
		})
	}
}

func TestBreakerPickers(t *testing.T) {
	perMethod := grpcmw.BreakerPerMethod(breaker.WithConsecutiveFailures(1))
	a, b := perMethod("t1", "/s/A"), perMethod("t2", "/s/B")
	require.NotSame(t, a, b)
	require.Same(t, a, perMethod("t3", "/s/A"))
	require.Equal(t, "/s/A", a.Name())

	perTarget := grpcmw.BreakerPerTarget()
	x := perTarget("dns:///a:443", "/s/A")
	require.Same(t, x, perTarget("dns:///a:443", "/s/B"))
	require.NotSame(t, x, perTarget("dns:///b:443", "/s/A"))

	// End to end: one failing method opens only its own breaker.
	svc := &service{unary: func(context.Context, int, *testpb.SimpleRequest) error {
		return status.Error(codes.Internal, "bug")
	}}
	c, cc := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithBreakers(perMethod))...)
	_, err := c.UnaryCall(context.Background(), payload("a"))
	requireCode(t, codes.Internal, err)
	_, err = c.UnaryCall(context.Background(), payload("a"))
	require.ErrorIs(t, err, breaker.ErrOpen)
	require.Equal(t, breaker.Open, perMethod(cc.Target(), "/grpc.testing.TestService/UnaryCall").State())
	require.Equal(t, breaker.Closed, perMethod(cc.Target(), "/grpc.testing.TestService/StreamingOutputCall").State())
}

// Beside a retry policy, every guard acts on the first attempt: a client
// with more than a retry policy does not take the short way of one with
// nothing else.
func TestClientRetryWithGuardRefusesFirstAttempt(t *testing.T) {
	open := breaker.New("client")
	open.ForceOpen()
	full := bulkhead.New("client", bulkhead.WithLimit(1))
	p, err := full.Acquire(context.Background())
	require.NoError(t, err)
	defer p.Release()
	for _, tc := range []struct {
		name  string
		guard grpcmw.Option
		code  codes.Code
		want  error
	}{
		{"breaker", grpcmw.WithBreaker(open), codes.Unavailable, breaker.ErrOpen},
		{"breakers", grpcmw.WithBreakers(func(string, string) *breaker.Breaker { return open }), codes.Unavailable, breaker.ErrOpen},
		{"bulkhead", grpcmw.WithBulkhead(full), codes.ResourceExhausted, bulkhead.ErrFull},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := &service{}
			// One attempt, so that the refusal ends the call at once.
			pol := newRetry(clock.NewFake(time.Time{}), retry.WithMaxAttempts(1))
			c, _ := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithRetry(pol), tc.guard)...)
			_, err := c.UnaryCall(context.Background(), payload("a"))
			requireCode(t, tc.code, err)
			require.ErrorIs(t, err, tc.want)
			require.Zero(t, svc.Calls())
		})
	}
}

func TestClientBulkheadAndRateLimit(t *testing.T) {
	t.Run("bulkhead", func(t *testing.T) {
		bh := bulkhead.New("client", bulkhead.WithLimit(1))
		entered, release := make(chan struct{}), make(chan struct{})
		svc := &service{unary: func(_ context.Context, n int, _ *testpb.SimpleRequest) error {
			if n == 1 {
				close(entered)
				<-release
			}
			return nil
		}}
		c, _ := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithBulkhead(bh))...)
		done := goCall(c, context.Background(), "slow")
		<-entered
		_, err := c.UnaryCall(context.Background(), payload("x"))
		requireCode(t, codes.ResourceExhausted, err)
		require.ErrorIs(t, err, bulkhead.ErrFull)
		close(release)
		require.NoError(t, (<-done).err)
		require.Equal(t, 0, bh.InFlight())
	})
	t.Run("rate limit waits", func(t *testing.T) {
		clk := clock.NewFake(time.Time{})
		lim := ratelimit.NewLocal("client", rate.Limit(1), 1, ratelimit.WithClock(clk))
		svc := &service{}
		c, _ := serve(t, "tcp", svc, nil, clientOpts(grpcmw.WithRateLimit(lim, func(context.Context, string) string { return "upstream" }))...)
		_, err := c.UnaryCall(context.Background(), payload("a"))
		require.NoError(t, err)
		done := goCall(c, context.Background(), "b")
		clk.WaitForTimers(1)
		require.Equal(t, 1, svc.Calls(), "the second call waits on the client")
		clk.Advance(time.Second)
		require.NoError(t, (<-done).err)
		require.Equal(t, 2, svc.Calls())
	})
	t.Run("rate limit refuses", func(t *testing.T) {
		clk := clock.NewFake(time.Time{})
		lim := ratelimit.NewLocal("client", rate.Limit(1), 1, ratelimit.WithClock(clk))
		svc := &service{}
		// A Limiter without Wait refuses locally; the retry waits its hint.
		c, _ := serve(t, "bufconn", svc, nil, clientOpts(
			grpcmw.WithRateLimit(allowOnly{lim}, nil), grpcmw.WithRetry(newRetry(clk)))...)
		_, err := c.UnaryCall(context.Background(), payload("a"))
		require.NoError(t, err)
		_, err = c.UnaryCall(context.Background(), payload("b"), grpcmw.DisableRetry())
		requireCode(t, codes.ResourceExhausted, err)
		require.ErrorIs(t, err, ratelimit.ErrLimited)
		done := goCall(c, context.Background(), "c")
		clk.WaitForTimers(1)
		clk.Advance(time.Second)
		require.NoError(t, (<-done).err)
		require.Equal(t, 2, svc.Calls())
	})
}

type allowOnly struct{ l ratelimit.Limiter }

func (a allowOnly) Allow(ctx context.Context, key string, cost int) (ratelimit.Decision, error) {
	return a.l.Allow(ctx, key, cost)
}

func recvAll(st interface {
	Recv() (*testpb.StreamingOutputCallResponse, error)
}) ([]string, error) {
	var got []string
	for {
		m, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return got, err
		}
		got = append(got, string(m.GetPayload().GetBody()))
	}
}

func TestStreamRetry(t *testing.T) {
	unavailable := status.Error(codes.Unavailable, "restarting")
	for _, tr := range transports {
		t.Run(tr+"/server stream fails before the first message", func(t *testing.T) {
			clk := clock.NewFake(time.Time{})
			svc := &service{stream: func(n int, send func(string) error) error {
				if n == 1 {
					return unavailable
				}
				for _, s := range []string{"b", "c", "d"} {
					if err := send(s); err != nil {
						return err
					}
				}
				return nil
			}}
			c, _ := serve(t, tr, svc, nil, clientOpts(grpcmw.WithRetry(newRetry(clk)))...)
			type out struct {
				got []string
				err error
			}
			var attempts int
			done := make(chan out, 1)
			go func() {
				st, err := c.StreamingOutputCall(context.Background(), &testpb.StreamingOutputCallRequest{}, grpcmw.ReportAttempts(&attempts))
				if err != nil {
					done <- out{nil, err}
					return
				}
				got, err := recvAll(st)
				done <- out{got, err}
			}()
			clk.WaitForTimers(1)
			clk.Advance(time.Second)
			o := <-done
			require.NoError(t, o.err)
			require.Equal(t, []string{"b", "c", "d"}, o.got)
			require.Equal(t, 2, svc.Calls())
			require.Equal(t, 2, attempts)
		})
		t.Run(tr+"/server stream fails after a message: not retried", func(t *testing.T) {
			clk := clock.NewFake(time.Time{})
			svc := &service{stream: func(n int, send func(string) error) error {
				if err := send("b"); err != nil {
					return err
				}
				return unavailable
			}}
			c, _ := serve(t, tr, svc, nil, clientOpts(grpcmw.WithRetry(newRetry(clk)))...)
			st, err := c.StreamingOutputCall(context.Background(), &testpb.StreamingOutputCallRequest{})
			require.NoError(t, err)
			got, err := recvAll(st)
			requireCode(t, codes.Unavailable, err)
			require.Equal(t, []string{"b"}, got, "no message twice")
			require.Equal(t, 1, svc.Calls())
			require.Equal(t, 0, clk.Created())
		})
		t.Run(tr+"/client stream replays what was sent", func(t *testing.T) {
			clk := clock.NewFake(time.Time{})
			svc := &service{input: func(n int, recv func() (string, error)) error {
				if n == 1 {
					_, _ = recv()
					return unavailable
				}
				return nil
			}}
			c, _ := serve(t, tr, svc, nil, clientOpts(grpcmw.WithRetry(newRetry(clk)))...)
			type out struct {
				resp *testpb.StreamingInputCallResponse
				err  error
			}
			done := make(chan out, 1)
			go func() {
				st, err := c.StreamingInputCall(context.Background())
				if err != nil {
					done <- out{nil, err}
					return
				}
				for _, s := range []string{"x", "yy", "zzz"} {
					if err := st.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: []byte(s)}}); err != nil {
						break
					}
				}
				resp, err := st.CloseAndRecv()
				done <- out{resp, err}
			}()
			clk.WaitForTimers(1)
			clk.Advance(time.Second)
			o := <-done
			require.NoError(t, o.err)
			require.Equal(t, int32(6), o.resp.GetAggregatedPayloadSize())
			require.Equal(t, 2, svc.Calls())
			svc.mu.Lock()
			defer svc.mu.Unlock()
			require.Equal(t, []string{"x"}, svc.inputs[0])
			require.Equal(t, []string{"x", "yy", "zzz"}, svc.inputs[1], "every message once, in order")
		})
		t.Run(tr+"/client stream beyond the buffer: not retried", func(t *testing.T) {
			clk := clock.NewFake(time.Time{})
			svc := &service{input: func(n int, recv func() (string, error)) error {
				for range 3 {
					_, _ = recv()
				}
				return unavailable
			}}
			c, _ := serve(t, tr, svc, nil, clientOpts(grpcmw.WithRetry(newRetry(clk)), grpcmw.WithStreamBuffer(2, 1<<20))...)
			st, err := c.StreamingInputCall(context.Background())
			require.NoError(t, err)
			for _, s := range []string{"x", "yy", "zzz"} {
				if err := st.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: []byte(s)}}); err != nil {
					break
				}
			}
			_, err = st.CloseAndRecv()
			requireCode(t, codes.Unavailable, err)
			require.Equal(t, 1, svc.Calls())
			require.Equal(t, 0, clk.Created())
		})
		t.Run(tr+"/bidi stream", func(t *testing.T) {
			clk := clock.NewFake(time.Time{})
			svc := &service{stream: func(n int, _ func(string) error) error {
				if n == 1 {
					return unavailable
				}
				return nil
			}}
			c, _ := serve(t, tr, svc, nil, clientOpts(grpcmw.WithRetry(newRetry(clk)))...)
			type out struct {
				got []string
				err error
			}
			done := make(chan out, 1)
			go func() {
				st, err := c.FullDuplexCall(context.Background())
				if err != nil {
					done <- out{nil, err}
					return
				}
				for _, s := range []string{"p", "q"} {
					if err := st.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte(s)}}); err != nil {
						break
					}
				}
				_ = st.CloseSend()
				got, err := recvAll(st)
				done <- out{got, err}
			}()
			clk.WaitForTimers(1)
			clk.Advance(time.Second)
			o := <-done
			require.NoError(t, o.err)
			require.Equal(t, []string{"p", "q"}, o.got)
			require.Equal(t, 2, svc.Calls())
		})
	}
}

func TestStreamBulkheadSlotHeldUntilEnd(t *testing.T) {
	bh := bulkhead.New("streams", bulkhead.WithLimit(1))
	svc := &service{}
	c, _ := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithBulkhead(bh))...)
	st, err := c.StreamingOutputCall(context.Background(), &testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{Size: 1}, {Size: 2}},
	})
	require.NoError(t, err)
	require.Equal(t, 1, bh.InFlight())
	_, err = c.StreamingOutputCall(context.Background(), &testpb.StreamingOutputCallRequest{})
	require.ErrorIs(t, err, bulkhead.ErrFull)
	got, err := recvAll(st)
	require.NoError(t, err)
	require.Equal(t, []string{"b", "c"}, got)
	require.Equal(t, 0, bh.InFlight())

	// A stream abandoned by cancelling its context gives its slot back.
	ctx, cancel := context.WithCancel(context.Background())
	_, err = c.FullDuplexCall(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, bh.InFlight())
	cancel()
	require.Eventually(t, func() bool { return bh.InFlight() == 0 }, 5*time.Second, time.Millisecond)
}

// A pushback too large for a time.Duration in nanoseconds means as long as a
// Duration can say, not the wrapped-around value (an immediate retry, or a
// negative one that fell back to the policy's backoff): it is beyond the
// policy's WithMaxHintWait, which stops retrying, and without that limit the
// call's deadline ends it.
func TestHugePushbackIsTheLongestWait(t *testing.T) {
	for _, pushback := range []string{"18446744073710", "9223372036855"} {
		invoker := func(calls *int) grpc.UnaryInvoker {
			return func(_ context.Context, _ string, _, _ any, _ *grpc.ClientConn, opts ...grpc.CallOption) error {
				*calls++
				for _, o := range opts {
					if tr, ok := o.(grpc.TrailerCallOption); ok {
						*tr.TrailerAddr = metadata.Pairs(grpcmw.PushbackKey, pushback)
					}
				}
				return status.Error(codes.Unavailable, "come back much later")
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		t.Run(pushback+"/beyond the longest hint wait", func(t *testing.T) {
			clk := clock.NewFake(time.Now())
			p := newRetry(clk, retry.WithMaxAttempts(2), retry.WithMaxHintWait(10*time.Second))
			calls := 0
			err := grpcmw.UnaryClientInterceptor(grpcmw.WithRetry(p))(ctx, "/svc/M", nil, nil, nil, invoker(&calls))
			requireCode(t, codes.Unavailable, err)
			require.Equal(t, 1, calls, "no retry")
			require.Zero(t, clk.Created(), "no wait started")
		})
		t.Run(pushback+"/uncapped", func(t *testing.T) {
			// The real clock: were the pushback read short, the retry would
			// come at once and the test fail, rather than wait on a fake timer.
			p := retry.New("huge-pushback", retry.WithMaxAttempts(2), retry.WithMaxHintWait(0), retry.WithBudget(nil),
				retry.WithBackOff(func() backoff.BackOff { return backoff.NewConstantBackOff(time.Millisecond) }))
			calls := 0
			err := grpcmw.UnaryClientInterceptor(grpcmw.WithRetry(p))(ctx, "/svc/M", nil, nil, nil, invoker(&calls))
			requireCode(t, codes.Unavailable, err)
			require.Equal(t, 1, calls, "past the deadline: no retry")
		})
	}
}

// TestClientHandlerAbortedIsNotRetried: a handler behind WithIdempotency
// that itself ends a keyed call with Aborted and a pushback trailer (its
// transaction aborted after a side effect; Aborted is released, not stored)
// gives the caller that Aborted: the client's retryable codes leave Aborted
// out, and grpc-go's own retry honours pushback only for retryable codes.
// Today the client takes it for the Guard's in-flight answer (same code,
// same trailer), retries it, and the handler runs a second time.
func TestClientHandlerAbortedIsNotRetried(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	var mu sync.Mutex
	effects := 0
	svc := &service{unary: func(ctx context.Context, n int, _ *testpb.SimpleRequest) error {
		mu.Lock()
		effects++ // e.g. a message sent before the transaction aborted
		mu.Unlock()
		if n == 1 {
			_ = grpc.SetTrailer(ctx, metadata.Pairs(grpcmw.PushbackKey, "1000"))
			return status.Error(codes.Aborted, "transaction aborted")
		}
		return nil
	}}
	g := idempotency.New("handler-aborted", idempotency.NewMemoryStore(idempotency.MemoryConfig{}))
	retries := make(chan struct{}, 3)
	p := newRetry(clk, retry.WithOnRetry(func(int, error, time.Duration) { retries <- struct{}{} }))
	c, _ := serve(t, "bufconn", svc, serverOpts(grpcmw.WithIdempotency(g), grpcmw.WithoutIdempotencyScope()),
		clientOpts(grpcmw.WithRetry(p), grpcmw.WithIdempotencyKeys())...)
	done := goCall(c, context.Background(), "a")
	select {
	case r := <-done:
		requireCode(t, codes.Aborted, r.err)
	case <-retries:
		clk.WaitForTimers(1)
		clk.Advance(time.Second)
		r := <-done
		t.Fatalf("the handler's own Aborted was retried: the call ended with %v after %d handler runs", r.err, svc.Calls())
	}
	require.Equal(t, 1, svc.Calls())
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, 1, effects)
}
