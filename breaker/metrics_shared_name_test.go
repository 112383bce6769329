package breaker

import (
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// Two breakers with one name on one registry happen for real: a lazily built
// breaker per target (sync.Map LoadOrStore) builds a second one that loses the
// race and is dropped, and a server and a client interceptor may name their
// breakers alike. The live breaker must stay in the output, and live breakers
// of one name are reported together, as bulkheads are.
func TestMetricsBreakersSharingAName(t *testing.T) {
	t.Run("a dropped twin does not hide the live breaker", func(t *testing.T) {
		reg := prometheus.NewPedanticRegistry()
		keep := New("dup", WithRegisterer(reg))
		func() { New("dup", WithRegisterer(reg)) }() // built, never used
		runtime.GC()
		runtime.GC()
		p, err := keep.Allow()
		require.NoError(t, err)
		p.Done(nil)
		expected := `
# HELP bulwark_breaker_calls_total Calls seen by the circuit breaker, by outcome: success, failure, ignored (not counted toward the breaker's decisions), rejected (not admitted).
# TYPE bulwark_breaker_calls_total counter
bulwark_breaker_calls_total{name="dup",outcome="failure"} 0
bulwark_breaker_calls_total{name="dup",outcome="ignored"} 0
bulwark_breaker_calls_total{name="dup",outcome="rejected"} 0
bulwark_breaker_calls_total{name="dup",outcome="success"} 1
`
		require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(expected), "bulwark_breaker_calls_total"))
		runtime.KeepAlive(keep)
	})
	t.Run("live breakers of one name are summed", func(t *testing.T) {
		reg := prometheus.NewPedanticRegistry()
		a := New("twin", WithRegisterer(reg))
		b := New("twin", WithRegisterer(reg), WithConsecutiveFailures(1))
		for _, br := range []*Breaker{a, b} {
			p, err := br.Allow()
			require.NoError(t, err)
			p.Done(nil)
		}
		p, err := a.Allow()
		require.NoError(t, err)
		p.Done(errBoom)
		p, err = b.Allow()
		require.NoError(t, err)
		p.Done(errBoom) // opens b
		require.Equal(t, Open, b.State())
		expected := `
# HELP bulwark_breaker_calls_total Calls seen by the circuit breaker, by outcome: success, failure, ignored (not counted toward the breaker's decisions), rejected (not admitted).
# TYPE bulwark_breaker_calls_total counter
bulwark_breaker_calls_total{name="twin",outcome="failure"} 2
bulwark_breaker_calls_total{name="twin",outcome="ignored"} 0
bulwark_breaker_calls_total{name="twin",outcome="rejected"} 0
bulwark_breaker_calls_total{name="twin",outcome="success"} 2
`
		require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(expected), "bulwark_breaker_calls_total"))
		require.Equal(t, 1.0, gatheredState(t, reg, "twin", "closed"))
		require.Equal(t, 1.0, gatheredState(t, reg, "twin", "open"))
		require.Equal(t, 0.5, gathered(t, reg, "bulwark_breaker_failure_ratio", "twin"), "a's window: 1 of 2 failed")
		problems, err := testutil.GatherAndLint(reg)
		require.NoError(t, err)
		require.Empty(t, problems)
		runtime.KeepAlive(a)
		runtime.KeepAlive(b)
	})
}

func gatheredState(t *testing.T, reg prometheus.Gatherer, name, state string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "bulwark_breaker_state" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var n, s string
			for _, lp := range m.GetLabel() {
				switch lp.GetName() {
				case "name":
					n = lp.GetValue()
				case "state":
					s = lp.GetValue()
				}
			}
			if n == name && s == state {
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no bulwark_breaker_state{name=%q,state=%q}", name, state)
	return 0
}
