package grpcmw_test

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/grpcmw"
)

// Racing first calls to a new target get one breaker, and no spare is built
// (a spare would show as a second closed breaker in the state gauge).
func TestBreakerPerTargetBuildsOnce(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	pick := grpcmw.BreakerPerTarget(breaker.WithRegisterer(reg))
	got := make([]*breaker.Breaker, 64)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			got[i] = pick("dns:///ledger:443", "/ledger.Ledger/Post")
		}()
	}
	close(start)
	wg.Wait()
	for _, b := range got {
		require.Same(t, got[0], b)
	}
	want := `
# HELP bulwark_breaker_state Circuit breaker state: 1 for the current state, 0 for the others.
# TYPE bulwark_breaker_state gauge
bulwark_breaker_state{name="dns:///ledger:443",state="closed"} 1
bulwark_breaker_state{name="dns:///ledger:443",state="disabled"} 0
bulwark_breaker_state{name="dns:///ledger:443",state="forced_open"} 0
bulwark_breaker_state{name="dns:///ledger:443",state="half_open"} 0
bulwark_breaker_state{name="dns:///ledger:443",state="open"} 0
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want), "bulwark_breaker_state"))
	runtime.KeepAlive(got) // collectors hold breakers weakly
}

// WithBreakers(nil) picks no breaker: calls go through unguarded, on the
// client and on the server, and it clears an earlier WithBreaker. Since
// 54aa9b3 wrapped pick in a closure that calls it unconditionally, every
// call through such an interceptor panics with a nil function call.
func TestWithBreakersNilGuardsNothing(t *testing.T) {
	reg := prometheus.NewRegistry()
	open := breaker.New("forced", breaker.WithRegisterer(reg))
	open.ForceOpen()
	ctx := context.Background()
	invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	for name, ic := range map[string]grpc.UnaryClientInterceptor{
		"client":                   grpcmw.UnaryClientInterceptor(grpcmw.WithBreakers(nil)),
		"client after WithBreaker": grpcmw.UnaryClientInterceptor(grpcmw.WithBreaker(open), grpcmw.WithBreakers(nil)),
	} {
		require.NotPanics(t, func() {
			require.NoError(t, ic(ctx, "/s/m", nil, nil, nil, invoker))
		}, name)
	}
	si := grpcmw.UnaryServerInterceptor(grpcmw.WithBreakers(nil))
	require.NotPanics(t, func() {
		_, err := si(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/s/m"}, func(context.Context, any) (any, error) { return "ok", nil })
		require.NoError(t, err)
	}, "server")
	runtime.KeepAlive(open)
}
