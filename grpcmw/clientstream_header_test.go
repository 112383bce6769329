package grpcmw_test

import (
	"context"
	"runtime"
	"strings"
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

	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/grpcmw"
	"github.com/bulwark-go/bulwark/retry"
)

// header is what Header returned.
type header struct {
	md  metadata.MD
	err error
}

// headerAsync calls st.Header in a goroutine of its own and sends its result
// on the returned channel.
func headerAsync(st interface{ Header() (metadata.MD, error) }) <-chan header {
	hc := make(chan header, 1)
	go func() {
		md, err := st.Header()
		hc <- header{md, err}
	}()
	return hc
}

// attemptGate is a stream client interceptor placed inside grpcmw's, so that
// it sees each attempt's grpc-go stream. It lets a test stop the retrying
// stream's goroutines at chosen points of one attempt (a goroutine preempted
// there does the same), and it counts RecvMsg calls in flight per attempt.
type attemptGate struct {
	mu      sync.Mutex
	opened  int
	streams []*gatedStream

	// onHeader, when set, runs after attempt n's grpc-go Header returned.
	onHeader func(n int, md metadata.MD)
	// onRecv, when set, runs when RecvMsg(m) enters on attempt n, with the
	// number of RecvMsg calls then in flight on it.
	onRecv func(n int, m any, inFlight int32)
}

type gatedStream struct {
	grpc.ClientStream
	g        *attemptGate
	n        int
	inFlight atomic.Int32
	maxIn    atomic.Int32
}

func (g *attemptGate) intercept(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	g.opened++
	gs := &gatedStream{ClientStream: s, g: g, n: g.opened}
	g.streams = append(g.streams, gs)
	g.mu.Unlock()
	return gs, nil
}

// maxConcurrentRecv is the most RecvMsg calls ever in flight at once on one
// attempt's grpc-go stream.
func (g *attemptGate) maxConcurrentRecv() int32 {
	g.mu.Lock()
	defer g.mu.Unlock()
	var m int32
	for _, s := range g.streams {
		m = max(m, s.maxIn.Load())
	}
	return m
}

func (s *gatedStream) Header() (metadata.MD, error) {
	md, err := s.ClientStream.Header()
	if s.g.onHeader != nil {
		s.g.onHeader(s.n, md)
	}
	return md, err
}

func (s *gatedStream) RecvMsg(m any) error {
	in := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	for {
		old := s.maxIn.Load()
		if in <= old || s.maxIn.CompareAndSwap(old, in) {
			break
		}
	}
	if s.g.onRecv != nil {
		s.g.onRecv(s.n, m, in)
	}
	return s.ClientStream.RecvMsg(m)
}

// headersThenWait fails its first server-streaming call trailers-only with
// Unavailable; later calls send their headers at once and their one message
// only when release is closed (a stream that waits for an event, or for the
// client, before its first message).
type headersThenWait struct {
	testpb.UnimplementedTestServiceServer
	calls   atomic.Int32
	release chan struct{}
}

func (h *headersThenWait) StreamingOutputCall(_ *testpb.StreamingOutputCallRequest, ss testpb.TestService_StreamingOutputCallServer) error {
	n := h.calls.Add(1)
	if n == 1 {
		return status.Error(codes.Unavailable, "restarting")
	}
	if err := ss.SendHeader(metadata.Pairs("x-attempt", "2")); err != nil {
		return err
	}
	select {
	case <-h.release:
	case <-ss.Context().Done():
		return ss.Context().Err()
	}
	return ss.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: []byte("ok")}})
}

// Header beside RecvMsg, on a stream whose first attempt ended trailers-only,
// when the caller's RecvMsg made the retry (Header only saw attempt 1 end,
// as happens whenever Header is called during the retry's backoff). The new
// attempt has sent its headers, but not yet its first message: Header
// returns them, as grpc-go's does, and does not wait for that message, which
// RecvMsg waits for (for good, when the server sends it only after a client
// message the caller sends once Header returned).
func TestStreamHeaderNotStuckBehindRecvOnNextAttempt(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	svc := &headersThenWait{release: make(chan struct{})}
	hdr1 := make(chan struct{})       // Header got attempt 1's nil, nil
	resumeHdr1 := make(chan struct{}) // lets that Header go on
	recv2 := make(chan struct{})      // RecvMsg entered attempt 2 (under recvMu)
	var hdrOnce, recvOnce sync.Once
	g := &attemptGate{
		onHeader: func(n int, md metadata.MD) {
			if n == 1 && md == nil {
				hdrOnce.Do(func() { close(hdr1) })
				<-resumeHdr1
			}
		},
		onRecv: func(n int, _ any, _ int32) {
			if n == 2 {
				recvOnce.Do(func() { close(recv2) })
			}
		},
	}
	c, _ := serve(t, "bufconn", svc, nil,
		append(clientOpts(grpcmw.WithRetry(newRetry(clk))), grpc.WithChainStreamInterceptor(g.intercept))...)
	release := sync.OnceFunc(func() { close(svc.release) })
	t.Cleanup(release) // before serve's cleanup: ends both goroutines
	st, err := c.StreamingOutputCall(context.Background(), &testpb.StreamingOutputCallRequest{})
	require.NoError(t, err)

	rc := recvAsync(st) // fails on attempt 1 and waits the backoff holding recvMu
	clk.WaitForTimers(1)
	hc := headerAsync(st)
	<-hdr1 // Header saw attempt 1 end without headers
	clk.Advance(time.Second)
	<-recv2 // RecvMsg opened attempt 2 and waits for its first message
	close(resumeHdr1)

	select {
	case h := <-hc:
		require.NoError(t, h.err)
		require.Equal(t, []string{"2"}, h.md.Get("x-attempt"))
	case <-time.After(5 * time.Second):
		t.Fatal("Header did not return attempt 2's headers, which arrived: it waits on recvMu for attempt 2's first message")
	}
	release()
	r := <-rc
	require.NoError(t, r.err)
	require.Equal(t, []string{"ok"}, r.got)
}

// A SendMsg the client refuses (here larger than the call's send limit)
// commits the stream from a third goroutine while Header's settle is inside
// RecvMsg on the ended attempt. The caller's RecvMsg must still wait for
// settle, not read the same grpc-go stream at once, which grpc-go forbids: a
// version whose RecvMsg read a committed stream without recvMu did, and one
// run in about nine hung.
func TestStreamHeaderSettleAndRecvNeverReadOneAttemptAtOnce(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	svc := &service{stream: func(n int, _ func(string) error) error {
		if n == 1 {
			return status.Error(codes.Unavailable, "restarting")
		}
		return nil
	}}
	settling := make(chan struct{}) // settle is inside RecvMsg on attempt 1
	resume := make(chan struct{})   // lets it return
	var settleOnce sync.Once
	g := &attemptGate{onRecv: func(n int, m any, _ int32) {
		if n != 1 {
			return
		}
		if _, throwaway := m.(*struct{}); throwaway {
			settleOnce.Do(func() { close(settling) })
			<-resume
		}
	}}
	c, _ := serve(t, "bufconn", svc, nil,
		append(clientOpts(grpcmw.WithRetry(newRetry(clk))), grpc.WithChainStreamInterceptor(g.intercept))...)
	resumeOnce := sync.OnceFunc(func() { close(resume) })
	t.Cleanup(resumeOnce)
	st, err := c.FullDuplexCall(context.Background(), grpc.MaxCallSendMsgSize(16))
	require.NoError(t, err)

	hc := make(chan error, 1)
	go func() {
		_, err := st.Header()
		hc <- err
	}()
	<-settling
	err = st.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: make([]byte, 64)}})
	requireCode(t, codes.ResourceExhausted, err) // refused: the stream is committed
	rc := make(chan error, 1)
	go func() {
		_, err := st.Recv()
		rc <- err
	}()
	// The caller's Recv should wait for settle, on recvMu; here it reads
	// attempt 1 while settle is inside RecvMsg on it. Settle is held before
	// grpc-go's RecvMsg until the caller's has returned, since two at once
	// in grpc-go leave one blocked for good (run unheld, Header hung so); a
	// Recv that rightly waits is given a second before settle goes on.
	var rerr error
	select {
	case rerr = <-rc:
	case <-time.After(time.Second):
		resumeOnce()
		rerr = <-rc
	}
	resumeOnce()
	require.NoError(t, <-hc)
	requireCode(t, codes.Unavailable, rerr)
	require.LessOrEqual(t, g.maxConcurrentRecv(), int32(1), "two RecvMsg at once on attempt 1's grpc-go stream")
}

// waitBlockedIn returns once some goroutine is blocked (not running or
// runnable) with frame on its stack, or fails the test after a few seconds.
func waitBlockedIn(t *testing.T, frame string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	buf := make([]byte, 1<<20)
	for time.Now().Before(deadline) {
		n := runtime.Stack(buf, true)
		for _, g := range strings.Split(string(buf[:n]), "\n\n") {
			head, _, _ := strings.Cut(g, "\n")
			if strings.Contains(g, frame) && !strings.Contains(head, "[running") && !strings.Contains(head, "[runnable") {
				return
			}
		}
		runtime.Gosched()
	}
	t.Fatalf("no goroutine blocked in %s", frame)
}

// A RecvMsg that panics while it holds recvMu on an uncommitted stream —
// here the retry policy's OnRetry hook, the caller's own callback, panics
// during the backoff, and the caller recovers (as net/http does for a
// handler) — neither replaces the attempt nor commits the stream. A Header
// waiting in settle for that RecvMsg's decision must still wake, and try
// recvMu again, rather than wait until some later RecvMsg decides.
func TestStreamHeaderNotStuckAfterRecvMsgPanics(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	svc := &service{stream: func(n int, send func(string) error) error {
		if n == 1 {
			return status.Error(codes.Unavailable, "restarting")
		}
		return send("ok")
	}}
	inHook := make(chan struct{})
	panicNow := make(chan struct{})
	var hookOnce sync.Once
	pol := newRetry(clk, retry.WithOnRetry(func(int, error, time.Duration) {
		first := false
		hookOnce.Do(func() { first = true })
		if first {
			close(inHook)
			<-panicNow
			panic("onRetry hook")
		}
	}))
	c, _ := serve(t, "bufconn", svc, nil, clientOpts(grpcmw.WithRetry(pol))...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{})
	require.NoError(t, err)

	recovered := make(chan any, 1)
	go func() {
		defer func() { recovered <- recover() }()
		_, _ = st.Recv()
	}()
	<-inHook // RecvMsg holds recvMu, attempt 1 failed, not yet replaced

	hc := headerAsync(st)
	// Header saw attempt 1 end without headers, found recvMu held and waits
	// on decided for the RecvMsg to decide.
	waitBlockedIn(t, "grpcmw.(*retryStream).settle")
	close(panicNow)
	require.Equal(t, "onRetry hook", <-recovered)

	// Header should now return (nil, nil, or attempt 2's headers after a
	// retry it makes itself, whose backoff the fake clock is advanced past).
	deadline := time.After(5 * time.Second)
	for {
		timers := waitTimers(clk)
		select {
		case h := <-hc:
			clk.NewTimer(time.Hour) // lets waitTimers end
			<-timers
			require.NoError(t, h.err)
			return
		case <-timers:
			clk.Advance(time.Second)
			continue
		case <-deadline:
			clk.NewTimer(time.Hour)
			<-timers
			t.Error("Header still waits after the RecvMsg that held recvMu panicked")
		}
		break
	}
	// Unstick Header for the goroutine-leak check: a second RecvMsg on an
	// ended context decides (fails the stream) and broadcasts.
	cancel()
	_, err = st.Recv()
	requireCode(t, codes.Canceled, err)
	<-hc
}
