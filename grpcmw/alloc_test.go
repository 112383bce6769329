//go:build !race

package grpcmw_test

import (
	"context"
	"net"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/grpcmw"
	"github.com/bulwark-go/bulwark/ratelimit"
	"github.com/bulwark-go/bulwark/retry"
)

// The server interceptor keyed by the peer's IP (KeyFromPeer, a nil key, or
// KeyFromMetadata's fallback) allocates nothing on a call that passes, for
// IPv4, IPv6 and non-TCP peers alike.
func TestServerInterceptorKeyFromPeerDoesNotAllocate(t *testing.T) {
	peers := map[string]net.Addr{
		"ipv4": &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 40000},
		"ipv6": &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 40000},
		"unix": &net.UnixAddr{Name: "/run/app.sock", Net: "unix"},
	}
	keys := map[string]grpcmw.KeyFunc{
		"KeyFromPeer":     grpcmw.KeyFromPeer,
		"nil":             nil,
		"KeyFromMetadata": grpcmw.KeyFromMetadata("x-api-key"),
	}
	info := &grpc.UnaryServerInfo{FullMethod: "/grpc.testing.TestService/UnaryCall"}
	handler := func(context.Context, any) (any, error) { return nil, nil }
	for kname, key := range keys {
		reg := prometheus.NewRegistry()
		ic := grpcmw.UnaryServerInterceptor(
			grpcmw.WithRateLimit(ratelimit.NewLocal("allocs", rate.Limit(1e9), 1e9, ratelimit.WithRegisterer(reg)), key),
			grpcmw.WithBulkhead(bulkhead.New("allocs", bulkhead.WithRegisterer(reg))),
			grpcmw.WithBreaker(breaker.New("allocs", breaker.WithRegisterer(reg))),
		)
		for pname, addr := range peers {
			ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: addr})
			allocs := testing.AllocsPerRun(1000, func() {
				if _, err := ic(ctx, nil, info, handler); err != nil {
					t.Fatal(err)
				}
			})
			require.Zero(t, allocs, "%s, %s peer", kname, pname)
		}
	}
}

// The client interceptor allocates nothing on a call that succeeds, with
// retry + breaker or retry alone (which takes a shorter way), with or
// without call options of its own; the options reach the invoker after the
// interceptor's trailer capture.
func TestClientInterceptorDoesNotAllocate(t *testing.T) {
	reg := prometheus.NewRegistry()
	interceptors := map[string]grpc.UnaryClientInterceptor{
		"retry+breaker": grpcmw.UnaryClientInterceptor(
			grpcmw.WithRetry(retry.New("allocs", retry.WithRegisterer(reg))),
			grpcmw.WithBreaker(breaker.New("allocs", breaker.WithRegisterer(reg))),
		),
		"retry": grpcmw.UnaryClientInterceptor(grpcmw.WithRetry(retry.New("allocs-alone", retry.WithRegisterer(reg)))),
	}
	var md metadata.MD
	userOpt := grpc.Trailer(&md)
	var last grpc.CallOption // the last option the invoker was given
	invoker := func(_ context.Context, _ string, _, _ any, _ *grpc.ClientConn, opts ...grpc.CallOption) error {
		last = opts[len(opts)-1]
		return nil
	}
	ctx := context.Background()
	for chain, ic := range interceptors {
		for name, opts := range map[string][]grpc.CallOption{
			"no options":   nil,
			"user trailer": {userOpt},
			"no retry":     {grpcmw.DisableRetry()},
		} {
			allocs := testing.AllocsPerRun(1000, func() {
				if err := ic(ctx, "/s/m", nil, nil, nil, invoker, opts...); err != nil {
					t.Fatal(err)
				}
			})
			require.Zero(t, allocs, "%s, %s", chain, name)
			if name == "user trailer" {
				require.Equal(t, userOpt, last, chain)
			}
		}
	}
}
