package grpcmw_test

import (
	"bytes"
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/grpcmw"
	"github.com/bulwark-go/bulwark/retry"
)

// headerOnRetry fails its first server-streaming call trailers-only with
// Unavailable; later calls send headers and one message.
type headerOnRetry struct {
	testpb.UnimplementedTestServiceServer
	calls int
}

func (h *headerOnRetry) StreamingOutputCall(_ *testpb.StreamingOutputCallRequest, ss testpb.TestService_StreamingOutputCallServer) error {
	h.calls++ // one call at a time in this test
	if h.calls == 1 {
		return status.Error(codes.Unavailable, "restarting")
	}
	if err := ss.SendHeader(metadata.Pairs("x-attempt", "2")); err != nil {
		return err
	}
	return ss.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: []byte("ok")}})
}

// Header called before RecvMsg, on a stream whose first attempt fails
// trailers-only, retries the stream as grpc-go's Header does with its own
// retry, and gives the headers of the attempt whose messages the caller then
// gets; RecvMsg does not retry again.
func TestStreamHeaderAcrossRetry(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	svc := &headerOnRetry{}
	c, _ := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithRetry(newRetry(clk)))...)
	st, err := c.StreamingOutputCall(context.Background(), &testpb.StreamingOutputCallRequest{})
	require.NoError(t, err)
	h := drive(clk, headerAsync(st)) // the retry waits its backoff on clk
	require.NoError(t, h.err)
	require.Equal(t, []string{"2"}, h.md.Get("x-attempt"), "the headers of the retried attempt")

	got, err := recvAll(st)
	require.NoError(t, err)
	require.Equal(t, []string{"ok"}, got)
	require.Equal(t, 2, svc.calls, "one retry, made by Header")
}

// Header on a stream whose only attempt may not be retried (here the policy
// allows one attempt) gives nil, nil, as grpc-go's does for a stream that
// ended; RecvMsg then returns the attempt's status.
func TestStreamHeaderWithoutRetryGivesNilThenRecvTheStatus(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	svc := &headerOnRetry{}
	c, _ := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithRetry(newRetry(clk, retry.WithMaxAttempts(1))))...)
	st, err := c.StreamingOutputCall(context.Background(), &testpb.StreamingOutputCallRequest{})
	require.NoError(t, err)
	md, err := st.Header()
	require.NoError(t, err)
	require.Nil(t, md)
	_, err = recvAll(st)
	requireCode(t, codes.Unavailable, err)
	require.Equal(t, 1, svc.calls)
}

// A server-streaming call's single request is always replayable, as the
// StreamClientInterceptor doc says: a request larger than the replay buffer
// (DefaultStreamBufferBytes, 256 KiB) used to overflow it, and the call was
// never retried.
func TestServerStreamingLargeRequestIsReplayable(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	svc := &service{stream: func(n int, send func(string) error) error {
		if n == 1 {
			return status.Error(codes.Unavailable, "restarting")
		}
		return send("ok")
	}}
	c, _ := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithRetry(newRetry(clk)))...)
	big := &testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: make([]byte, grpcmw.DefaultStreamBufferBytes+1)}}
	st, err := c.StreamingOutputCall(context.Background(), big)
	require.NoError(t, err)
	r := drive(clk, recvAsync(st))
	require.NoError(t, r.err, "the single request of a server-streaming call was not replayed")
	require.Equal(t, []string{"ok"}, r.got)
	require.Equal(t, 2, svc.Calls())
}

// waitTimers closes the returned channel once clk has a timer.
func waitTimers(clk *clock.Fake) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		clk.WaitForTimers(1)
		close(ch)
	}()
	return ch
}

// drive advances clk past every wait the code under test starts until done
// yields, and returns what it yielded.
func drive[T any](clk *clock.Fake, done <-chan T) T {
	for {
		timers := waitTimers(clk)
		select {
		case v := <-done:
			clk.NewTimer(time.Hour) // lets waitTimers end
			<-timers
			return v
		case <-timers:
			clk.Advance(time.Second)
		}
	}
}

// A response larger than the client's MaxCallRecvMsgSize fails on the
// client with a ResourceExhausted that grpc-go makes itself, after the server
// ran the handler and answered. It carries no hint of a server's, and is not
// retried: it used to be, as ResourceExhausted is retryable by default, and
// every retry repeated the handler's effect and could never succeed.
func TestUnaryResponseTooLargeIsNotRetried(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	svc := &service{}
	c, _ := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithRetry(newRetry(clk)))...)
	var attempts int
	done := make(chan error, 1)
	go func() {
		_, err := c.UnaryCall(context.Background(), payload(string(bytes.Repeat([]byte{'x'}, 1024))),
			grpc.MaxCallRecvMsgSize(100), grpcmw.ReportAttempts(&attempts))
		done <- err
	}()
	err := drive(clk, done)
	requireCode(t, codes.ResourceExhausted, err)
	t.Logf("err %v; attempts %d; handler effects %d", err, attempts, svc.Ledger())
	require.Equal(t, 1, svc.Ledger(), "the server's handler ran (and took effect) %d times for one call", svc.Ledger())
	require.Equal(t, 1, attempts)
}

// The same on a stream: the first response message is larger than the
// client accepts, so RecvMsg fails "before any response message" as far as
// the interceptor knows; the server-streaming call used to be run again.
func TestStreamResponseTooLargeIsNotRetried(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	svc := &service{stream: func(_ int, send func(string) error) error {
		return send(string(bytes.Repeat([]byte{'x'}, 1024)))
	}}
	c, _ := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithRetry(newRetry(clk)))...)
	var attempts int
	st, err := c.StreamingOutputCall(context.Background(), &testpb.StreamingOutputCallRequest{},
		grpc.MaxCallRecvMsgSize(100), grpcmw.ReportAttempts(&attempts))
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		_, err := recvAll(st)
		done <- err
	}()
	err = drive(clk, done)
	requireCode(t, codes.ResourceExhausted, err)
	require.Equal(t, 1, svc.Calls(), "a stream whose response message arrived was run again")
	require.Equal(t, 1, attempts)
}

// WithRetry retries DeadlineExceeded only when the policy's per-attempt
// timeout ended it. attemptTimedOut used to compare deadlines only, so under
// any per-attempt timeout shorter than the caller's deadline every
// DeadlineExceeded the server answered — here at once, the handler's own
// downstream call timing out — was retried as if the attempt had timed out,
// though DeadlineExceeded is not a retryable code and the handler may have
// acted.
func TestServerDeadlineExceededIsNotAnAttemptTimeout(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	svc := &service{unary: func(_ context.Context, n int, _ *testpb.SimpleRequest) error {
		if n == 1 {
			return status.Error(codes.DeadlineExceeded, "the database did not answer in time")
		}
		return nil
	}}
	p := newRetry(clk, retry.WithAttemptTimeout(time.Minute))
	c, _ := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithRetry(p))...)
	var attempts int
	done := make(chan error, 1)
	go func() {
		_, err := c.UnaryCall(context.Background(), payload("a"), grpcmw.ReportAttempts(&attempts))
		done <- err
	}()
	err := drive(clk, done)
	require.Equal(t, 1, svc.Calls(), "a DeadlineExceeded of the server's own, 1 minute before the attempt's deadline, was retried")
	requireCode(t, codes.DeadlineExceeded, err)
	require.Equal(t, 1, attempts)
}

// Header beside RecvMsg on a stream whose first attempt ends trailers-only.
// Either may retry the stream; each reads the ended attempt only under
// recvMu, since grpc-go forbids two RecvMsg on one stream at once. A version
// of Header that read it without did so while the caller's RecvMsg could
// still be inside RecvMsg on the same grpc-go stream: the race detector saw
// it, and one run in about 500 hung the caller's RecvMsg for good.
func TestStreamHeaderBesideRecvOnTrailersOnlyAttempt(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	svc := &service{stream: func(n int, send func(string) error) error {
		if n%2 == 1 {
			return status.Error(codes.Unavailable, "restarting")
		}
		return send("ok")
	}}
	c, _ := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithRetry(newRetry(clk, retry.WithBudget(nil))))...)
	for range 100 {
		st, err := c.StreamingOutputCall(context.Background(), &testpb.StreamingOutputCallRequest{})
		require.NoError(t, err)
		var wg sync.WaitGroup
		wg.Go(func() { _, _ = st.Header() })
		r := drive(clk, recvAsync(st))
		wg.Wait()
		require.NoError(t, r.err)
		require.Equal(t, []string{"ok"}, r.got)
	}
}

// received is what recvAll returned.
type received struct {
	got []string
	err error
}

// recvAsync runs recvAll on st in a goroutine of its own and sends its result
// on the returned channel.
func recvAsync(st interface {
	Recv() (*testpb.StreamingOutputCallResponse, error)
}) <-chan received {
	rc := make(chan received, 1)
	go func() {
		got, err := recvAll(st)
		rc <- received{got, err}
	}()
	return rc
}

// trailerUnavailable fails every server-streaming call trailers-only with
// Unavailable and a trailer of its own. With br, it forces br open on the
// way, so that the client's retry is refused before it reaches the network.
type trailerUnavailable struct {
	testpb.UnimplementedTestServiceServer
	br    *breaker.Breaker
	calls atomic.Int32
}

func (s *trailerUnavailable) StreamingOutputCall(_ *testpb.StreamingOutputCallRequest, ss testpb.TestService_StreamingOutputCallServer) error {
	s.calls.Add(1)
	ss.SetTrailer(metadata.Pairs("attempt", "first"))
	if s.br != nil {
		s.br.ForceOpen()
	}
	return status.Error(codes.Unavailable, "restarting")
}

// A retry the client refuses itself (here its breaker) ends the stream with
// that refusal, which no server sent: Trailer then returns no trailer, and
// RecvMsg the refusal again, not the trailer and the status of the attempt
// before, which the caller never saw. Header gives nil, nil, as grpc-go's
// Header does for any stream that ended with an error: RecvMsg tells it.
func TestStreamTrailerAfterLocalRefusalIsEmpty(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	br := breaker.New("stream-refused")
	svc := &trailerUnavailable{br: br}
	c, _ := serve(t, "bufconn", svc, nil,
		clientOpts(grpcmw.WithRetry(newRetry(clk, retry.WithMaxAttempts(2))), grpcmw.WithBreaker(br))...)
	st, err := c.StreamingOutputCall(context.Background(), &testpb.StreamingOutputCallRequest{})
	require.NoError(t, err)
	r := drive(clk, recvAsync(st))
	requireCode(t, codes.Unavailable, r.err)
	require.ErrorIs(t, r.err, breaker.ErrOpen)
	require.Equal(t, int32(1), svc.calls.Load())
	require.Empty(t, st.Trailer())
	_, again := st.Recv()
	require.Equal(t, r.err, again, "a second Recv returns the error that ended the stream")
	md, err := st.Header()
	require.Nil(t, md)
	require.NoError(t, err)
}

// The caller's context ends during the wait before a retry: the stream ends
// with Canceled, no attempt's status, and answers so afterwards, without the
// trailer or the status of the attempt before.
func TestStreamEndedDuringRetryWaitAnswersAsCanceled(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	svc := &trailerUnavailable{}
	c, _ := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithRetry(newRetry(clk, retry.WithMaxAttempts(3))))...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{})
	require.NoError(t, err)
	rc := recvAsync(st)
	clk.WaitForTimers(1) // RecvMsg saw attempt 1 fail and waits before attempt 2
	cancel()
	r := <-rc
	requireCode(t, codes.Canceled, r.err)
	require.Equal(t, int32(1), svc.calls.Load())
	require.Empty(t, st.Trailer())
	_, again := st.Recv()
	require.EqualError(t, again, r.err.Error(), "a second Recv returns the error that ended the stream")
}

// headersThenEcho fails its first bidi call trailers-only; later calls send
// headers, then wait for a request before they answer it.
type headersThenEcho struct {
	testpb.UnimplementedTestServiceServer
	calls atomic.Int32
}

func (h *headersThenEcho) FullDuplexCall(ss testpb.TestService_FullDuplexCallServer) error {
	if h.calls.Add(1) == 1 {
		return status.Error(codes.Unavailable, "restarting")
	}
	if err := ss.SendHeader(metadata.Pairs("x-attempt", "2")); err != nil {
		return err
	}
	req, err := ss.Recv()
	if err != nil {
		return err
	}
	return ss.Send(&testpb.StreamingOutputCallResponse{Payload: req.GetPayload()})
}

// A bidi caller that reads in one goroutine and, in another, waits for the
// headers before it sends: RecvMsg retries the stream and then waits for a
// message, which the server sends only after the request, which the caller
// sends only after Header. Header must not wait for RecvMsg to be done with
// the new attempt, only for it to have replaced the old one.
func TestStreamHeaderWhileRecvWaitsOnTheRetriedAttempt(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	svc := &headersThenEcho{}
	c, _ := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithRetry(newRetry(clk)))...)
	// A deadline, so that a deadlock fails the test instead of hanging it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.FullDuplexCall(ctx)
	require.NoError(t, err)
	type recv struct {
		body string
		err  error
	}
	rc := make(chan recv, 1)
	go func() {
		m, err := st.Recv()
		rc <- recv{string(m.GetPayload().GetBody()), err}
	}()
	clk.WaitForTimers(1) // Recv saw the first attempt fail and waits to retry
	hc := make(chan error, 1)
	var md metadata.MD
	go func() {
		var err error
		if md, err = st.Header(); err == nil {
			err = st.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte("ping")}})
		}
		hc <- err
	}()
	require.NoError(t, drive(clk, hc))
	require.Equal(t, []string{"2"}, md.Get("x-attempt"))
	r := <-rc
	require.NoError(t, r.err)
	require.Equal(t, "ping", r.body)
	require.Equal(t, int32(2), svc.calls.Load())
}
