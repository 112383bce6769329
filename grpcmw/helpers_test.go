package grpcmw_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// transports are the two ways every end-to-end test reaches its server.
var transports = []string{"tcp", "bufconn"}

// serve starts a grpc.Server with svc on transport and returns a client
// connected to it; both are closed when the test ends.
func serve(t testing.TB, transport string, svc testpb.TestServiceServer, sopts []grpc.ServerOption, dopts ...grpc.DialOption) (testpb.TestServiceClient, *grpc.ClientConn) {
	t.Helper()
	srv := grpc.NewServer(sopts...)
	testpb.RegisterTestServiceServer(srv, svc)
	var lis net.Listener
	var target string
	dopts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDisableRetry()}, dopts...)
	switch transport {
	case "tcp":
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		lis, target = l, l.Addr().String()
	case "bufconn":
		bl := bufconn.Listen(1 << 20)
		lis, target = bl, "passthrough:///bufnet"
		dopts = append(dopts, grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return bl.DialContext(ctx)
		}))
	default:
		t.Fatalf("unknown transport %q", transport)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	cc, err := grpc.NewClient(target, dopts...)
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = cc.Close()
		srv.Stop()
		<-done
	})
	return testpb.NewTestServiceClient(cc), cc
}

// serveListener is serve on a listener of the test's choosing, over plain TCP.
func serveListener(t testing.TB, lis net.Listener, svc testpb.TestServiceServer, sopts []grpc.ServerOption) testpb.TestServiceClient {
	t.Helper()
	srv := grpc.NewServer(sopts...)
	testpb.RegisterTestServiceServer(srv, svc)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	cc, err := grpc.NewClient("passthrough:///"+lis.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDisableRetry())
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = cc.Close()
		srv.Stop()
		<-done
	})
	return testpb.NewTestServiceClient(cc)
}

// service is a TestService whose behaviour each test scripts: unary returns
// the error for call n (1-based), or a response echoing the payload.
type service struct {
	testpb.UnimplementedTestServiceServer

	mu     sync.Mutex
	calls  int
	ledger int        // effects applied by successful unary calls
	keys   []string   // idempotency keys seen, in order
	prev   []string   // grpc-previous-rpc-attempts seen, in order
	inputs [][]string // StreamingInputCall: payload bodies received, per call
	unary  func(ctx context.Context, n int, req *testpb.SimpleRequest) error
	stream func(n int, send func(body string) error) error
	input  func(n int, recv func() (string, error)) error
}

func (s *service) begin() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	return s.calls
}

func (s *service) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

func (s *service) Ledger() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ledger
}

func (s *service) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	n := s.begin()
	s.mu.Lock()
	s.keys = append(s.keys, first(ctx, "idempotency-key"))
	s.prev = append(s.prev, first(ctx, "grpc-previous-rpc-attempts"))
	s.mu.Unlock()
	if s.unary != nil {
		if err := s.unary(ctx, n, req); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	s.ledger++
	s.mu.Unlock()
	return &testpb.SimpleResponse{Payload: req.GetPayload(), Username: "call"}, nil
}

func (s *service) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, ss testpb.TestService_StreamingOutputCallServer) error {
	n := s.begin()
	send := func(body string) error {
		return ss.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: []byte(body)}})
	}
	if s.stream != nil {
		return s.stream(n, send)
	}
	for _, p := range req.GetResponseParameters() {
		if err := send(string(rune('a' + p.GetSize()))); err != nil {
			return err
		}
	}
	return nil
}

func (s *service) StreamingInputCall(ss testpb.TestService_StreamingInputCallServer) error {
	n := s.begin()
	s.mu.Lock()
	s.inputs = append(s.inputs, nil)
	s.mu.Unlock()
	var total int32
	recv := func() (string, error) {
		m, err := ss.Recv()
		if err != nil {
			return "", err
		}
		s.mu.Lock()
		s.inputs[n-1] = append(s.inputs[n-1], string(m.GetPayload().GetBody()))
		s.mu.Unlock()
		total += int32(len(m.GetPayload().GetBody()))
		return string(m.GetPayload().GetBody()), nil
	}
	if s.input != nil {
		if err := s.input(n, recv); err != nil {
			return err
		}
	}
	for {
		_, err := recv()
		if err != nil {
			return ss.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: total})
		}
	}
}

func (s *service) FullDuplexCall(ss testpb.TestService_FullDuplexCallServer) error {
	n := s.begin()
	if s.stream != nil {
		if err := s.stream(n, nil); err != nil {
			return err
		}
	}
	for {
		m, err := ss.Recv()
		if err != nil {
			return nil
		}
		if err := ss.Send(&testpb.StreamingOutputCallResponse{Payload: m.GetPayload()}); err != nil {
			return err
		}
	}
}

func first(ctx context.Context, key string) string {
	if v := metadataValue(ctx, key); len(v) > 0 {
		return v[0]
	}
	return ""
}

func payload(s string) *testpb.SimpleRequest {
	return &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte(s)}}
}

// retryInfo returns the RetryInfo delay of err's status, or -1.
func retryInfo(t testing.TB, err error) time.Duration {
	t.Helper()
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return -1
}

func quotaFailure(err error) *errdetails.QuotaFailure {
	for _, d := range status.Convert(err).Details() {
		if qf, ok := d.(*errdetails.QuotaFailure); ok {
			return qf
		}
	}
	return nil
}

func requireCode(t testing.TB, want codes.Code, err error) {
	t.Helper()
	require.Equal(t, want.String(), status.Code(err).String(), "error: %v", err)
}

func metadataValue(ctx context.Context, key string) []string {
	return metadata.ValueFromIncomingContext(ctx, key)
}
