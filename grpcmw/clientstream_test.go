package grpcmw_test

import (
	"bytes"
	"context"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/grpcmw"
	"github.com/bulwark-go/bulwark/retry"
)

// A client-streaming call ends when CloseAndRecv's RecvMsg returns the single
// response (nil error): grpc-go never returns io.EOF for it. The interceptor
// must end the stream there, freeing the bulkhead slot and reporting the
// breaker permit; otherwise, with a context that is never cancelled, both leak
// for good.
func TestClientStreamingCallEndsAtItsResponse(t *testing.T) {
	bh := bulkhead.New("client-streaming", bulkhead.WithLimit(1))
	br := breaker.New("client-streaming", breaker.WithConsecutiveFailures(100))
	svc := &service{}
	c, _ := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithBulkhead(bh), grpcmw.WithBreaker(br))...)

	st, err := c.StreamingInputCall(context.Background())
	require.NoError(t, err)
	require.NoError(t, st.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: []byte("x")}}))
	resp, err := st.CloseAndRecv()
	require.NoError(t, err)
	require.Equal(t, int32(1), resp.GetAggregatedPayloadSize())

	assert.Equal(t, 0, bh.InFlight(), "the finished client-streaming call still holds its bulkhead slot")
	assert.Equal(t, int64(1), br.Counts().Calls, "the finished call's breaker permit was never reported")

	// And so the next call is refused by a bulkhead that nothing uses.
	st2, err := c.StreamingInputCall(context.Background())
	require.NoError(t, err)
	_, err = st2.CloseAndRecv()
	require.NoError(t, err)
}

// pushFirst is a bidi service that sends n large messages before it reads
// anything, then reads until the client closes.
type pushFirst struct {
	testpb.UnimplementedTestServiceServer
	n    int
	size int
}

func (p *pushFirst) FullDuplexCall(ss testpb.TestService_FullDuplexCallServer) error {
	body := bytes.Repeat([]byte{'s'}, p.size)
	for range p.n {
		if err := ss.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: body}}); err != nil {
			return err
		}
	}
	for {
		if _, err := ss.Recv(); err != nil {
			return nil
		}
	}
}

// grpc-go allows one goroutine in SendMsg and another in RecvMsg at once. A
// send may wait for flow control until the server reads, and the server may
// send before it reads: RecvMsg must hand out what it has meanwhile, or
// neither side moves, a deadlock that the stream without the interceptor
// does not have.
func TestStreamSendWaitingForFlowControlDoesNotBlockRecv(t *testing.T) {
	for _, withRetry := range []bool{false, true} {
		name := "plain"
		var opts []grpcmw.Option
		if withRetry {
			name = "retry"
			opts = append(opts, grpcmw.WithRetry(newRetry(clock.NewFake(time.Time{}))))
		}
		t.Run(name, func(t *testing.T) {
			const n, size = 32, 256 << 10 // 8 MiB from the server before it reads
			c, _ := serve(t, "tcp", &pushFirst{n: n, size: size}, nil, clientOpts(opts...)...)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			st, err := c.FullDuplexCall(ctx)
			require.NoError(t, err)

			sendErr := make(chan error, 1)
			go func() {
				// Far more than the server's flow-control window: the second
				// Send blocks until the server reads.
				big := bytes.Repeat([]byte{'c'}, 1<<20)
				for range 4 {
					if err := st.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: big}}); err != nil {
						sendErr <- err
						return
					}
				}
				sendErr <- nil
			}()
			got := 0
			for got < n {
				if _, err := st.Recv(); err != nil {
					break
				}
				got++
			}
			require.Equal(t, n, got, "the client received only %d of %d messages before the deadline", got, n)
			require.NoError(t, <-sendErr)
			require.NoError(t, st.CloseSend())
		})
	}
}

// A SendMsg that the client itself refuses (here: a message larger than
// MaxCallSendMsgSize; a marshalling error is the same) ends the stream with a
// client-generated ResourceExhausted. That is not a server's answer: the
// stream is not retried, and the messages before the bad one are not sent
// again on a new stream.
func TestStreamDoesNotRetryASendTheClientRefused(t *testing.T) {
	p := retry.New("refused-send", retry.WithBudget(nil), retry.WithMaxAttempts(4),
		retry.WithBackOff(func() backoff.BackOff { return backoff.NewConstantBackOff(time.Millisecond) }))
	svc := &service{}
	c, _ := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithRetry(p))...)

	var attempts int
	st, err := c.StreamingInputCall(context.Background(), grpc.MaxCallSendMsgSize(1024), grpcmw.ReportAttempts(&attempts))
	require.NoError(t, err)
	require.NoError(t, st.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: []byte("small")}}))
	err = st.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: bytes.Repeat([]byte{'x'}, 4096)}})
	requireCode(t, codes.ResourceExhausted, err) // grpc-go: trying to send message larger than max
	_, err = st.CloseAndRecv()
	requireCode(t, codes.ResourceExhausted, err)
	assert.Equal(t, 1, attempts, "a client-side send error was retried")
	assert.LessOrEqual(t, svc.Calls(), 1, "the server got the stream (and the first message) again")
}

// A caller that takes a stream's Context once, to watch Done, must not see it
// end when an attempt fails and the stream goes on in a retry. (grpc-go's own
// retry commits the stream when Context is called instead.)
func TestStreamContextLastsAcrossRetries(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	hold := make(chan struct{})
	defer close(hold)
	svc := &service{stream: func(n int, send func(string) error) error {
		if n == 1 {
			return status.Error(codes.Unavailable, "restarting")
		}
		if err := send("b"); err != nil {
			return err
		}
		<-hold
		return nil
	}}
	c, _ := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithRetry(newRetry(clk)))...)
	st, err := c.StreamingOutputCall(context.Background(), &testpb.StreamingOutputCallRequest{})
	require.NoError(t, err)
	streamCtx := st.Context()

	got := make(chan error, 1)
	go func() {
		_, err := st.Recv()
		got <- err
	}()
	clk.WaitForTimers(1)
	clk.Advance(time.Second)
	require.NoError(t, <-got) // the retried stream is alive and delivered "b"
	require.NoError(t, streamCtx.Err(), "the stream's Context() is done while the stream is live")
}

// A server stream that ends cleanly after its messages is a success for the
// breaker, with or without retry: io.EOF is not a failure status.
func TestStreamEndingCleanlyIsABreakerSuccess(t *testing.T) {
	for _, withRetry := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "retry"}[withRetry], func(t *testing.T) {
			br := breaker.New("clean-end", breaker.WithConsecutiveFailures(1))
			opts := []grpcmw.Option{grpcmw.WithBreaker(br)}
			if withRetry {
				opts = append(opts, grpcmw.WithRetry(newRetry(clock.NewFake(time.Time{}))))
			}
			svc := &service{stream: func(_ int, send func(string) error) error {
				for _, s := range []string{"a", "b"} {
					if err := send(s); err != nil {
						return err
					}
				}
				return nil
			}}
			c, _ := serve(t, "bufconn", svc, nil, clientOpts(opts...)...)
			st, err := c.StreamingOutputCall(context.Background(), &testpb.StreamingOutputCallRequest{})
			require.NoError(t, err)
			got, err := recvAll(st)
			require.NoError(t, err)
			require.Equal(t, []string{"a", "b"}, got)
			counts := br.Counts()
			require.Equal(t, breaker.Closed, counts.State)
			require.Equal(t, int64(1), counts.Calls)
			require.Zero(t, counts.Failures)
		})
	}
}

// DeadlineExceeded is a default failure code: a stream whose deadline passes
// counts as a failure, as a unary call does, whether RecvMsg sees the status
// first or the context watcher does.
func TestStreamDeadlineIsABreakerFailure(t *testing.T) {
	for _, kind := range []string{"unary", "stream"} {
		t.Run(kind, func(t *testing.T) {
			br := breaker.New("deadline-"+kind, breaker.WithConsecutiveFailures(1))
			hang := make(chan struct{})
			defer close(hang)
			svc := &service{
				unary:  func(ctx context.Context, _ int, _ *testpb.SimpleRequest) error { <-ctx.Done(); return ctx.Err() },
				stream: func(int, func(string) error) error { <-hang; return nil },
			}
			c, _ := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithBreaker(br))...)
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			var err error
			if kind == "unary" {
				_, err = c.UnaryCall(ctx, payload("x"))
			} else {
				var st testpb.TestService_StreamingOutputCallClient
				st, err = c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{})
				require.NoError(t, err)
				_, err = st.Recv()
			}
			requireCode(t, codes.DeadlineExceeded, err)
			require.Equal(t, breaker.Open, br.State())
		})
	}
}

// Header may run beside a RecvMsg that gets a message: both may find the
// stream uncommitted, and only one may commit it.
func TestStreamHeaderAndRecvCommitOnce(t *testing.T) {
	svc := &service{stream: func(_ int, send func(string) error) error { return send("a") }}
	p := newRetry(clock.NewFake(time.Time{}))
	c, _ := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithRetry(p))...)
	for range 200 {
		var attempts int
		st, err := c.StreamingOutputCall(context.Background(), &testpb.StreamingOutputCallRequest{}, grpcmw.ReportAttempts(&attempts))
		require.NoError(t, err)
		header := make(chan error, 1)
		go func() {
			_, err := st.Header()
			header <- err
		}()
		got, err := recvAll(st)
		require.NoError(t, err)
		require.Equal(t, []string{"a"}, got)
		require.NoError(t, <-header)
		require.Equal(t, 1, attempts)
	}
}

// pushAfterRestart fails its first bidi call after reading read messages,
// and is pushFirst on later calls.
type pushAfterRestart struct {
	pushFirst
	calls atomic.Int32
	read  int
}

func (p *pushAfterRestart) FullDuplexCall(ss testpb.TestService_FullDuplexCallServer) error {
	if p.calls.Add(1) > 1 {
		return p.pushFirst.FullDuplexCall(ss)
	}
	for range p.read {
		if _, err := ss.Recv(); err != nil {
			return err
		}
	}
	return status.Error(codes.Unavailable, "restarting")
}

// sentBig serves svc over TCP, with 64 KiB flow-control windows when small
// is set, behind a client that retries on clk; it opens a bidi stream, which
// ends within 5 s, and sends it n messages of size bytes.
func sentBig(t *testing.T, svc testpb.TestServiceServer, small bool, clk *clock.Fake, n, size int) testpb.TestService_FullDuplexCallClient {
	t.Helper()
	var sopts []grpc.ServerOption
	if small {
		sopts = append(sopts, grpc.InitialWindowSize(64<<10), grpc.InitialConnWindowSize(64<<10))
	}
	c, _ := serve(t, "tcp", svc, sopts, clientOpts(grpcmw.WithRetry(newRetry(clk)))...)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	st, err := c.FullDuplexCall(ctx)
	require.NoError(t, err)
	big := bytes.Repeat([]byte{'c'}, size)
	for range n {
		require.NoError(t, st.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: big}}))
	}
	return st
}

// The replay of a retried stream may wait for flow control until the server
// reads, and a server may send before it reads: RecvMsg must go on reading
// meanwhile. With small fixed windows the replay cannot fit in them.
func TestStreamReplayWaitingForFlowControlDoesNotBlockRecv(t *testing.T) {
	for _, fixed := range []bool{true, false} {
		t.Run(map[bool]string{true: "fixed-window", false: "default-window"}[fixed], func(t *testing.T) {
			const msgs, msgSize = 3, 80 << 10 // 240 KiB: within the default replay buffer
			svc := &pushAfterRestart{pushFirst: pushFirst{n: 32, size: 256 << 10}, read: msgs}
			clk := clock.NewFake(time.Time{})
			st := sentBig(t, svc, fixed, clk, msgs, msgSize)
			go func() {
				clk.WaitForTimers(1)
				clk.Advance(time.Second)
			}()
			got := 0
			for got < svc.n {
				if _, err := st.Recv(); err != nil {
					t.Logf("Recv: %v", err)
					break
				}
				got++
			}
			require.Equal(t, svc.n, got, "received %d of %d messages before the deadline", got, svc.n)
			require.NoError(t, st.CloseSend())
		})
	}
}

// An attempt that the breaker refuses counts in ReportAttempts, on a stream as
// on a unary call.
func TestReportAttemptsCountsARefusedAttempt(t *testing.T) {
	for _, kind := range []string{"unary", "stream"} {
		t.Run(kind, func(t *testing.T) {
			clk := clock.NewFake(time.Time{})
			br := breaker.New("attempts-"+kind, breaker.WithConsecutiveFailures(1), breaker.WithClock(clk))
			svc := &service{
				unary: func(context.Context, int, *testpb.SimpleRequest) error {
					return status.Error(codes.Unavailable, "down")
				},
				stream: func(int, func(string) error) error { return status.Error(codes.Unavailable, "down") },
			}
			p := newRetry(clk, retry.WithMaxAttempts(2))
			c, _ := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithRetry(p), grpcmw.WithBreaker(br))...)
			var attempts int
			done := make(chan error, 1)
			go func() {
				if kind == "unary" {
					_, err := c.UnaryCall(context.Background(), payload("x"), grpcmw.ReportAttempts(&attempts))
					done <- err
					return
				}
				st, err := c.StreamingOutputCall(context.Background(), &testpb.StreamingOutputCallRequest{}, grpcmw.ReportAttempts(&attempts))
				if err == nil {
					_, err = st.Recv()
				}
				done <- err
			}()
			clk.WaitForTimers(1)          // the wait before attempt 2: the schedule's 1 s
			clk.Advance(10 * time.Second) // the breaker stays open (30 s)
			err := <-done
			require.Error(t, err)
			require.Equal(t, 1, svc.Calls())
			assert.Equal(t, 2, attempts, "attempt 2 was refused by the open breaker")
		})
	}
}

// answerFirst fails its first bidi call after reading read messages; on later
// calls it sends one message before it reads, then records the size of each
// message it reads until the client closes.
type answerFirst struct {
	testpb.UnimplementedTestServiceServer
	calls atomic.Int32
	read  int
	got   chan []int
}

func (a *answerFirst) FullDuplexCall(ss testpb.TestService_FullDuplexCallServer) error {
	if a.calls.Add(1) == 1 {
		for range a.read {
			if _, err := ss.Recv(); err != nil {
				return err
			}
		}
		return status.Error(codes.Unavailable, "restarting")
	}
	if err := ss.Send(&testpb.StreamingOutputCallResponse{}); err != nil {
		return err
	}
	var sizes []int
	for {
		m, err := ss.Recv()
		if err != nil {
			a.got <- sizes
			return nil
		}
		sizes = append(sizes, len(m.GetPayload().GetBody()))
	}
}

// A response may commit a retried stream while its replay still waits for
// flow control. A message sent after that goes out after the replay, never
// beside it.
func TestStreamSendAfterCommitWaitsForTheReplay(t *testing.T) {
	const msgs, msgSize = 3, 80 << 10 // more than the server's fixed window
	svc := &answerFirst{read: msgs, got: make(chan []int, 1)}
	clk := clock.NewFake(time.Time{})
	st := sentBig(t, svc, true, clk, msgs, msgSize)
	recv := make(chan error, 1)
	go func() {
		_, err := st.Recv() // fails, waits for the retry, then gets the answer: committed
		recv <- err
	}()
	clk.WaitForTimers(1)
	clk.Advance(time.Second)
	require.NoError(t, <-recv)
	require.NoError(t, st.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte("tail")}}))
	require.NoError(t, st.CloseSend())
	require.Equal(t, []int{msgSize, msgSize, msgSize, len("tail")}, <-svc.got)
	_, err := st.Recv()
	require.ErrorIs(t, err, io.EOF)
}

// headerThenFail sends headers on every call, and fails every odd one with
// Unavailable after them.
type headerThenFail struct {
	testpb.UnimplementedTestServiceServer
	mu    sync.Mutex
	calls int
}

func (h *headerThenFail) StreamingOutputCall(_ *testpb.StreamingOutputCallRequest, ss testpb.TestService_StreamingOutputCallServer) error {
	h.mu.Lock()
	h.calls++
	n := h.calls
	h.mu.Unlock()
	if err := ss.SendHeader(metadata.Pairs("x", "y")); err != nil {
		return err
	}
	if n%2 == 1 {
		return status.Error(codes.Unavailable, "after headers")
	}
	return ss.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: []byte("ok")}})
}

// Header may run beside a RecvMsg that is replacing a failed attempt: the
// headers of the failed attempt must not commit the stream in the middle of
// that, which the race detector sees as two goroutines deciding on one retry
// loop.
func TestStreamHeaderBesideARetry(t *testing.T) {
	p := retry.New("header-beside-retry", retry.WithBudget(nil), retry.WithMaxAttempts(3),
		retry.WithBackOff(func() backoff.BackOff { return backoff.NewConstantBackOff(time.Millisecond) }))
	c, _ := serve(t, "bufconn", &headerThenFail{}, nil, clientOpts(grpcmw.WithRetry(p))...)
	for range 50 {
		st, err := c.StreamingOutputCall(context.Background(), &testpb.StreamingOutputCallRequest{})
		require.NoError(t, err)
		var wg sync.WaitGroup
		wg.Go(func() { _, _ = st.Header(); _ = st.Trailer() })
		got, err := recvAll(st)
		wg.Wait()
		if err == nil { // retried: the second call's message
			require.Equal(t, []string{"ok"}, got)
		} else { // headers committed the first call, which failed after them
			requireCode(t, codes.Unavailable, err)
			require.Empty(t, got)
		}
	}
}

// The stream client interceptor reads trailers from its streams and lends no
// trailer capture, so it holds none of the unary interceptor's 16 KiB of
// capture slots.
func TestStreamClientInterceptorHoldsNoCaptureSlots(t *testing.T) {
	opt := grpcmw.WithRetry(newRetry(clock.NewFake(time.Time{})))
	const n = 64
	keep := make([]grpc.StreamClientInterceptor, n)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range keep {
		keep[i] = grpcmw.StreamClientInterceptor(opt)
	}
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(keep)
	perInterceptor := (after.TotalAlloc - before.TotalAlloc) / n
	require.Less(t, perInterceptor, uint64(4<<10), "bytes allocated per StreamClientInterceptor")
}
