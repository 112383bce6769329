package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/grpcmw"
	"github.com/bulwark-go/bulwark/retry"
	gmretry "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/retry"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// client sends one kind of request to one server.
type client struct {
	// do sends one request on behalf of a worker and checks its answer.
	do    func(ctx context.Context, worker int) error
	close func()
}

// newHTTPClient returns a client that GETs /hello from addr over at most
// conns keep-alive connections, the same plain net/http client for every
// variant: the variants differ in the server only.
func newHTTPClient(addr string, conns, workers int) (*client, error) {
	tr := &http.Transport{
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		DisableCompression:  true,
		IdleConnTimeout:     time.Minute,
	}
	// One request per worker, built once: a request without a body may be
	// sent again once its response is read.
	reqs := make([]*http.Request, workers)
	for i := range reqs {
		r, err := http.NewRequest(http.MethodGet, "http://"+addr+"/hello", nil)
		if err != nil {
			return nil, err
		}
		reqs[i] = r
	}
	return &client{
		do: func(ctx context.Context, w int) error {
			resp, err := tr.RoundTrip(reqs[w])
			if err != nil {
				return err
			}
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil {
				return err
			}
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("status %s", resp.Status)
			}
			return nil
		},
		close: tr.CloseIdleConnections,
	}, nil
}

// grpcClientOptions returns the dial options of a gRPC variant: its client
// interceptors.
func grpcClientOptions(variant string) ([]grpc.DialOption, error) {
	switch variant {
	case "bare":
		return nil, nil
	case "bulwark-chains":
		reg := prometheus.NewRegistry()
		return []grpc.DialOption{grpc.WithChainUnaryInterceptor(grpcmw.UnaryClientInterceptor(
			grpcmw.WithRetry(retry.New("loopback", retry.WithRegisterer(reg))),
			grpcmw.WithBreaker(breaker.New("loopback", breaker.WithRegisterer(reg))),
		))}, nil
	case "go-grpc-middleware-retry+ratelimit":
		return []grpc.DialOption{grpc.WithChainUnaryInterceptor(
			gmretry.UnaryClientInterceptor(gmretry.WithMax(3)))}, nil
	}
	return nil, fmt.Errorf("unknown gRPC variant %q", variant)
}

// newGRPCClient returns a client that calls TestService.UnaryCall on addr,
// all workers sharing one ClientConn (one HTTP/2 connection), as a gRPC
// client does, through the variant's client interceptors.
func newGRPCClient(addr, variant string) (*client, error) {
	opts, err := grpcClientOptions(variant)
	if err != nil {
		return nil, err
	}
	opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	cc, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return nil, err
	}
	tc := testpb.NewTestServiceClient(cc)
	req := &testpb.SimpleRequest{}
	return &client{
		do: func(ctx context.Context, _ int) error {
			_, err := tc.UnaryCall(ctx, req)
			return err
		},
		close: func() { _ = cc.Close() },
	}, nil
}
