package grpcmw_test

import (
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

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
