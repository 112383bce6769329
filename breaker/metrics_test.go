package breaker

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/bulwark-go/bulwark/internal/clock"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	clk := clock.NewFake(time.Time{})
	b := New("payments", WithRegisterer(reg), WithClock(clk), WithJitter(0),
		WithFailureRate(0.5, 4), WithOpenDuration(time.Second), WithHalfOpen(1, 1), WithSlowCalls(time.Second, 1))
	other := New("ledger", WithRegisterer(reg), WithClock(clk)) // shares the collectors

	feed(t, b, clk, "sSfi") // 3 counted calls, 1 failure: ratio 1/3
	require.InDelta(t, 1.0/3, gathered(t, reg, "bulwark_breaker_failure_ratio", "payments"), 1e-9)
	feed(t, b, clk, "f") // 2 of 4 failed: open
	_, err := b.Allow()
	require.ErrorIs(t, err, ErrOpen)
	clk.Advance(time.Second)
	feed(t, b, clk, "s") // half-open probe succeeds: closed
	p, _ := other.Allow()
	p.Done(nil)
	require.Zero(t, gathered(t, reg, "bulwark_breaker_failure_ratio", "payments"), "a new closed window is empty")

	runtime.GC() // collectors hold breakers weakly: only live ones are reported
	expected := `
# HELP bulwark_breaker_calls_total Calls seen by the circuit breaker, by outcome: success, failure, ignored (not counted toward the breaker's decisions), rejected (not admitted).
# TYPE bulwark_breaker_calls_total counter
bulwark_breaker_calls_total{name="ledger",outcome="failure"} 0
bulwark_breaker_calls_total{name="ledger",outcome="ignored"} 0
bulwark_breaker_calls_total{name="ledger",outcome="rejected"} 0
bulwark_breaker_calls_total{name="ledger",outcome="success"} 1
bulwark_breaker_calls_total{name="payments",outcome="failure"} 2
bulwark_breaker_calls_total{name="payments",outcome="ignored"} 1
bulwark_breaker_calls_total{name="payments",outcome="rejected"} 1
bulwark_breaker_calls_total{name="payments",outcome="success"} 3
# HELP bulwark_breaker_slow_calls_total Calls that took at least the breaker's slow-call threshold.
# TYPE bulwark_breaker_slow_calls_total counter
bulwark_breaker_slow_calls_total{name="ledger"} 0
bulwark_breaker_slow_calls_total{name="payments"} 1
# HELP bulwark_breaker_state Circuit breaker state: 1 for the current state, 0 for the others.
# TYPE bulwark_breaker_state gauge
bulwark_breaker_state{name="ledger",state="closed"} 1
bulwark_breaker_state{name="ledger",state="disabled"} 0
bulwark_breaker_state{name="ledger",state="forced_open"} 0
bulwark_breaker_state{name="ledger",state="half_open"} 0
bulwark_breaker_state{name="ledger",state="open"} 0
bulwark_breaker_state{name="payments",state="closed"} 1
bulwark_breaker_state{name="payments",state="disabled"} 0
bulwark_breaker_state{name="payments",state="forced_open"} 0
bulwark_breaker_state{name="payments",state="half_open"} 0
bulwark_breaker_state{name="payments",state="open"} 0
# HELP bulwark_breaker_transitions_total State changes of the circuit breaker.
# TYPE bulwark_breaker_transitions_total counter
bulwark_breaker_transitions_total{from="closed",name="payments",to="open"} 1
bulwark_breaker_transitions_total{from="half_open",name="payments",to="closed"} 1
bulwark_breaker_transitions_total{from="open",name="payments",to="half_open"} 1
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(expected),
		"bulwark_breaker_calls_total", "bulwark_breaker_slow_calls_total", "bulwark_breaker_state", "bulwark_breaker_transitions_total"))

	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
	runtime.KeepAlive(b)
	runtime.KeepAlive(other)
}

// gathered returns the value of the gauge metric for the breaker name on
// reg, in the series whose other labels match labels (name, value pairs).
func gathered(t *testing.T, reg prometheus.Gatherer, metric, name string, labels ...string) float64 {
	t.Helper()
	want := map[string]string{"name": name}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != metric {
			continue
		}
		for _, m := range mf.GetMetric() {
			matched := 0
			for _, lp := range m.GetLabel() {
				if v, ok := want[lp.GetName()]; ok && v == lp.GetValue() {
					matched++
				}
			}
			if matched == len(want) {
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no %s%v", metric, want)
	return 0
}

func TestNoRegistererRegistersNothing(t *testing.T) {
	b := New("quiet")
	p, err := b.Allow()
	require.NoError(t, err)
	p.Done(nil)
	require.EqualValues(t, 1, b.successes())
}
