package reliability

import (
	"context"
	"errors"
	"maps"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Shopify/toxiproxy/v2/stream"
	"github.com/Shopify/toxiproxy/v2/toxics"
	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/grpcmw"
	"github.com/bulwark-go/bulwark/retry"
)

// serveGRPC starts a grpc.Server with svc on a kernel-chosen port of
// 127.0.0.1 and returns its address; the server stops when the test ends.
func serveGRPC(t *testing.T, svc testpb.TestServiceServer, opts ...grpc.ServerOption) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer(opts...)
	testpb.RegisterTestServiceServer(srv, svc)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return lis.Addr().String()
}

// dialGRPC connects to target without grpc-go's own retry and with a short
// reconnect backoff (10ms growing to 50ms), so that a proxy coming back is
// noticed within a breaker's open duration rather than after grpc-go's
// default of up to two minutes. The connection is closed when the test ends.
func dialGRPC(t *testing.T, target string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDisableRetry(),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 50 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}),
	}, opts...)
	cc, err := grpc.NewClient(target, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// cutToxic closes its direction of a connection once Bytes bytes have
// passed (at the first chunk when Bytes is 0), which closes the whole
// connection. Unlike toxiproxy's limit_data and reset_peer, which return
// once they close, it goes on reading and dropping what still arrives until
// the link ends: on an HTTP/2 connection the server keeps writing after the
// cut, and a toxic that stopped reading would leave the link's first stage
// blocked for ever on its send (a goroutine goleak reports).
type cutToxic struct {
	Bytes int64 `json:"bytes"`
}

type cutState struct {
	passed int64
	cut    bool
}

// NewState gives each link its own count.
func (*cutToxic) NewState() any { return new(cutState) }

// Pipe passes chunks until the limit, then closes and drains.
func (t *cutToxic) Pipe(stub *toxics.ToxicStub) {
	st := stub.State.(*cutState)
	for {
		select {
		case <-stub.Interrupt:
			return
		case c := <-stub.Input:
			if c == nil {
				stub.Close()
				return
			}
			if st.cut {
				continue
			}
			if rest := t.Bytes - st.passed; rest < int64(len(c.Data)) {
				if rest > 0 {
					stub.Output <- &stream.StreamChunk{Data: c.Data[:rest], Timestamp: c.Timestamp}
				}
				st.passed, st.cut = t.Bytes, true
				stub.Close()
				continue
			}
			stub.Output <- c
			st.passed += int64(len(c.Data))
		}
	}
}

func init() { toxics.Register("bulwark_cut", new(cutToxic)) }

// countingService is a TestService whose unary call echoes its payload and
// counts the calls that reached the server.
type countingService struct {
	testpb.UnimplementedTestServiceServer
	hits atomic.Int64
}

func (s *countingService) UnaryCall(_ context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.hits.Add(1)
	return &testpb.SimpleResponse{Payload: req.GetPayload()}, nil
}

// attemptCounter is a client interceptor placed after grpcmw's, so that it
// sees exactly the attempts the breaker let through to the network (the
// "upstream calls") and the breaker state each was made in.
type attemptCounter struct {
	br *breaker.Breaker

	mu      sync.Mutex
	calls   int
	byState map[breaker.State]int
}

func (a *attemptCounter) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	st := a.br.State()
	a.mu.Lock()
	a.calls++
	a.byState[st]++
	a.mu.Unlock()
	return invoker(ctx, method, req, reply, cc, opts...)
}

func (a *attemptCounter) snapshot() (int, map[breaker.State]int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls, maps.Clone(a.byState)
}

// TestGRPCUpstreamOutageAndRecovery: scenario 1 over gRPC. A client with
// grpcmw's retry (under a budget) and breaker calls a grpc.Server through a
// proxy that refuses connections, or cuts every one at its first byte, for a
// second.
func TestGRPCUpstreamOutageAndRecovery(t *testing.T) {
	faults := []struct {
		name         string
		start, clear func(px *faultProxy)
	}{
		{"refused", (*faultProxy).Disable, (*faultProxy).Enable},
		{"cut", func(px *faultProxy) {
			px.AddToxic(toxic{Name: "cut", Type: "bulwark_cut", Stream: "upstream", Attributes: map[string]any{"bytes": 0}})
		}, func(px *faultProxy) { px.RemoveToxic("cut") }},
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) { grpcOutage(t, f.start, f.clear) })
	}
}

func grpcOutage(t *testing.T, startFault, clearFault func(*faultProxy)) {
	const (
		window, minCalls = 20, 10
		failureRate      = 0.5
		openFor          = 150 * time.Millisecond
		maxTokens, ratio = 10, 0.1
		outage           = time.Second
	)
	svc := &countingService{}
	px := newFaultProxy(t, serveGRPC(t, svc))

	tr := &transitions{}
	br := breaker.New("grpc-upstream",
		breaker.WithCountWindow(window), breaker.WithFailureRate(failureRate, minCalls),
		breaker.WithOpenDuration(openFor), breaker.WithJitter(0), breaker.WithHalfOpen(1, 2),
		breaker.OnStateChange(tr.hook))
	counter := &attemptCounter{br: br, byState: map[breaker.State]int{}}
	tr.calls = func() int { n, _ := counter.snapshot(); return n }

	budget := retry.NewBudget(maxTokens, ratio)
	var retries atomic.Int64
	policy := retry.New("grpc-outage", retry.WithBudget(budget), retry.WithMaxAttempts(4),
		retry.WithBackOff(func() backoff.BackOff { return backoff.NewConstantBackOff(2 * time.Millisecond) }),
		retry.WithOnRetry(func(int, error, time.Duration) { retries.Add(1) }))
	cc := dialGRPC(t, px.Addr(), grpc.WithChainUnaryInterceptor(
		grpcmw.UnaryClientInterceptor(grpcmw.WithRetry(policy), grpcmw.WithBreaker(br)),
		counter.intercept))
	client := testpb.NewTestServiceClient(cc)

	call := func() (attempts int, took time.Duration, err error) {
		ctx, cancel := context.WithTimeout(bg, 2*time.Second)
		defer cancel()
		start := time.Now()
		_, err = client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("ping")}}, grpcmw.ReportAttempts(&attempts))
		return attempts, time.Since(start), err
	}

	// Healthy: the window fills with successes and the budget stays full.
	for range 30 {
		_, _, err := call()
		require.NoError(t, err)
	}
	require.Equal(t, breaker.Closed, br.State())
	require.InDelta(t, maxTokens, budget.Tokens(), 1e-9)
	require.EqualValues(t, 30, svc.hits.Load())

	// Outage: calls keep coming, one every 2ms, serially.
	startFault(px)
	callsBefore, _ := counter.snapshot()
	retriesBefore := retries.Load()
	hitsBefore := svc.hits.Load()
	var n int
	var rejectedTook []time.Duration
	tick := time.NewTicker(2 * time.Millisecond)
	end := time.Now().Add(outage)
	for time.Now().Before(end) {
		<-tick.C
		attempts, took, err := call()
		require.Error(t, err)
		require.Equal(t, codes.Unavailable.String(), status.Code(err).String(), "error: %v", err)
		if errors.Is(err, breaker.ErrOpen) || errors.Is(err, breaker.ErrHalfOpenFull) {
			require.Equal(t, 1, attempts, "a call the breaker refused is not retried (the budget is spent)")
			rejectedTook = append(rejectedTook, took)
		}
		n++
	}
	tick.Stop()
	callsAfter, byState := counter.snapshot()
	outageCalls := callsAfter - callsBefore
	outageRetries := retries.Load() - retriesBefore
	bound := (1+ratio)*float64(n) + maxTokens/2
	slices.Sort(rejectedTook)
	require.NotEmpty(t, rejectedTook)
	p50, p99 := rejectedTook[len(rejectedTook)/2], rejectedTook[len(rejectedTook)*99/100]
	t.Logf("outage: %d calls, %d upstream attempts (bound (1+%.1f)×%d+%d/2 = %.1f), %d retries, %d refused by the breaker (took p50 %v, p99 %v, max %v), %d reached the server",
		n, outageCalls, ratio, n, maxTokens, bound, outageRetries, len(rejectedTook),
		p50, p99, rejectedTook[len(rejectedTook)-1], svc.hits.Load()-hitsBefore)

	list, at := tr.get()
	require.NotEmpty(t, list)
	require.Equal(t, "closed->open", list[0], "the first change is the trip")
	failedBeforeOpen := at[0] - callsBefore
	t.Logf("breaker opened after %d failed attempts (window %d, rate %.1f, min %d)", failedBeforeOpen, window, failureRate, minCalls)
	// Serially, the window held 20 successes: the 10th failure makes the
	// rate 10/20 = 0.5.
	require.Equal(t, int(failureRate*window), failedBeforeOpen, "opens exactly when the window's failure rate reaches the threshold")

	require.Zero(t, svc.hits.Load()-hitsBefore, "no call reached the server during the outage")
	require.LessOrEqual(t, float64(outageCalls), bound, "the retry budget holds the documented bound")
	require.LessOrEqual(t, outageRetries, int64(maxTokens/2), "a total outage spends at most the reserve of maxTokens/2 retries")
	require.Zero(t, byState[breaker.Open], "no attempt leaves the client while the breaker is open")
	probes := 0
	for _, s := range list {
		if s == "open->half_open" {
			probes++
		}
	}
	require.GreaterOrEqual(t, probes, 2, "the breaker probed during the outage")
	require.LessOrEqual(t, byState[breaker.HalfOpen], probes, "one probe per half-open period")
	require.Contains(t, list, "half_open->open", "a failed probe reopens")
	require.Less(t, outageCalls, n/5, "the breaker keeps most calls off the dead upstream")
	// Refused at once: a refusal is local and makes no wait, so even on a
	// loaded machine nearly all take well under the time to the next probe.
	require.Less(t, p50, 10*time.Millisecond, "a refused call fails fast")

	// Recovery: the fault clears; a probe succeeds, the next closes it.
	clearFault(px)
	hitsBefore = svc.hits.Load()
	recovered := time.Now()
	deadline := recovered.Add(3 * time.Second)
	tick = time.NewTicker(2 * time.Millisecond)
	for br.State() != breaker.Closed {
		require.True(t, time.Now().Before(deadline), "breaker did not close within 3s of recovery; transitions %v", list)
		<-tick.C
		_, _, _ = call()
	}
	tick.Stop()
	closedAfter := time.Since(recovered)
	for range 5 {
		attempts, _, err := call()
		require.NoError(t, err)
		require.Equal(t, 1, attempts)
	}
	list, _ = tr.get()
	require.Equal(t, "half_open->closed", list[len(list)-1])
	require.GreaterOrEqual(t, svc.hits.Load()-hitsBefore, int64(2+5), "two successful probes closed it, then calls flow")
	t.Logf("recovered: closed %v after the fault cleared; transitions %v", closedAfter.Round(time.Millisecond), list)
}
