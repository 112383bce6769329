package breaker

import (
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/internal/metrics"
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

// gatheredCalls returns bulwark_breaker_calls_total{name, outcome} on reg,
// failing the test when the series is missing.
func gatheredCalls(t *testing.T, reg prometheus.Gatherer, name, outcome string) float64 {
	t.Helper()
	v, ok := gatheredCounters(t, reg, name)["bulwark_breaker_calls_total,outcome="+outcome]
	require.True(t, ok, "no calls_total{name=%q,outcome=%q}", name, outcome)
	return v
}

// A failure while closed adds to the closed failures and moves seq, of which
// closed successes are the difference. A scrape between the two steps must
// not read the failure as a success: the counters collector keeps the
// highest reading, so a phantom success would never be taken back.
// Deterministic: the test holds the time window's mutex, so the failing
// Report stops in the window, after seq has moved.
func TestMetricsFailureBeingReportedIsNotReadAsSuccess(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	clk := clock.NewFake(time.Time{})
	b := New("x", WithRegisterer(reg), WithClock(clk),
		WithTimeWindow(time.Minute, 6), WithFailureRate(1, 1000)) // never trips

	w := b.gen.Load().win.(*timeWindow)
	w.mu.Lock() // the failing Report stops in the window, after seq.Add
	p, err := b.Allow()
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Go(func() { p.Done(errBoom) })
	for b.seq.Load() == 0 {
		// spin until the report is in the window
	}
	// A scrape at that moment. (Only the counters collector: the state
	// collector would wait for the window's mutex the test holds.)
	counters := metrics.Register(reg, newCounters())
	ch := make(chan prometheus.Metric, 16)
	counters.Collect(ch)
	w.mu.Unlock()
	wg.Wait()

	require.Equal(t, 1.0, gatheredCalls(t, reg, "x", "failure"))
	require.Equal(t, 0.0, gatheredCalls(t, reg, "x", "success"),
		"a failed call is reported as a success for good")
	runtime.KeepAlive(b) // collectors hold it weakly: its series go with it
}

// The black-box form of the test above: only failing calls, on 8 goroutines,
// through the default kind of window, with scrapes running meanwhile. No
// scrape may read a success.
func TestMetricsFailuresOnlyUnderConcurrentScrapesCountNoSuccess(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	b := New("x", WithRegisterer(reg), WithCountWindow(1_000_000), WithFailureRate(1, 1_000_000))
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 20_000 {
				p, err := b.Allow()
				if err != nil {
					return
				}
				p.Done(errBoom)
			}
		})
	}
	var scr sync.WaitGroup
	scr.Go(func() {
		for !stop.Load() {
			_, _ = reg.Gather()
		}
	})
	wg.Wait()
	stop.Store(true)
	scr.Wait()
	require.Equal(t, 160_000.0, gatheredCalls(t, reg, "x", "failure"))
	require.Equal(t, 0.0, gatheredCalls(t, reg, "x", "success"), "no call succeeded")
	runtime.KeepAlive(b) // collectors hold it weakly: its series go with it
}

// A failure being reported has added to the closed failures and not yet
// moved seq: closed successes read as seq minus closed failures would be
// negative, and wrap around to a huge count that the collector would keep.
func TestSuccessesNeverWrapAroundWhileAFailureIsReported(t *testing.T) {
	b := New("x")
	p, err := b.Allow()
	require.NoError(t, err)
	p.Done(nil)
	b.st.closedFailures.Add(2) // two failures in flight: counted, seq not moved
	require.Zero(t, b.successes())
}
