package breaker

import (
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"weak"

	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/internal/gctest"
	"github.com/bulwark-go/bulwark/internal/metrics"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
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
	return gathered(t, reg, "bulwark_breaker_state", name, "state", state)
}

// gatheredCounters returns every breaker counter of the name on reg, by
// metric name and outcome label. It may run on a goroutine of its own.
func gatheredCounters(t *testing.T, reg prometheus.Gatherer, name string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if !assert.NoError(t, err) {
		return nil
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "bulwark_breaker_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetCounter() == nil {
				continue
			}
			key, mine := mf.GetName(), false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "name" {
					mine = lp.GetValue() == name
				} else {
					key += "," + lp.GetName() + "=" + lp.GetValue()
				}
			}
			if mine {
				got[key] = m.GetCounter().GetValue()
			}
		}
	}
	return got
}

// When one of two breakers sharing a name is garbage collected, the name's
// counters must not go down: Prometheus reads a decrease as a counter reset,
// and rate() and increase() would count the whole total again. The state
// gauge, though, counts only the breakers still alive.
func TestMetricsSharedNameMonotonicAcrossGC(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	clk := clock.NewFake(time.Time{})
	opts := []Option{WithRegisterer(reg), WithClock(clk), WithSlowCalls(time.Second, 1), WithConsecutiveFailures(1)}
	keep := New("gc", opts...)
	feed(t, keep, clk, "si")
	gone := New("gc", opts...)
	feed(t, gone, clk, "sSif") // the failure opens it
	_, err := gone.Allow()
	require.ErrorIs(t, err, ErrOpen)
	want := map[string]float64{
		"bulwark_breaker_calls_total,outcome=success":           3,
		"bulwark_breaker_calls_total,outcome=failure":           1,
		"bulwark_breaker_calls_total,outcome=ignored":           2,
		"bulwark_breaker_calls_total,outcome=rejected":          1,
		"bulwark_breaker_slow_calls_total":                      1,
		"bulwark_breaker_transitions_total,from=closed,to=open": 1,
	}
	// gone lives through this scrape: what a breaker counted after the last
	// scrape before its collection is lost, by design.
	before := gatheredCounters(t, reg, "gc")
	require.Equal(t, want, before)
	require.Equal(t, 1.0, gatheredState(t, reg, "gc", "open"))

	wp := weak.Make(gone)
	gone = nil
	gctest.Collect(t, wp)
	after := gatheredCounters(t, reg, "gc")
	for k, v := range before {
		require.GreaterOrEqual(t, after[k], v, "%s went down", k)
	}
	require.Equal(t, want, after, "the collected breaker's calls stay counted")
	require.Equal(t, 1.0, gatheredState(t, reg, "gc", "closed"))
	require.Zero(t, gatheredState(t, reg, "gc", "open"), "a collected breaker has no state")

	feed(t, keep, clk, "f") // the name goes on counting from its total
	want["bulwark_breaker_calls_total,outcome=failure"]++
	want["bulwark_breaker_transitions_total,from=closed,to=open"]++
	require.Equal(t, want, gatheredCounters(t, reg, "gc"))
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
	runtime.KeepAlive(keep)
}

// A name whose breakers are all gone leaves the output, and what was kept
// for it is forgotten, so memory follows the live breakers.
func TestMetricsNameGoneWithItsLastBreaker(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	keep := New("kept", WithRegisterer(reg))
	var survivor *Breaker // the name's last breaker, dropped second
	var twin *Breaker     // dropped first
	for range 2 {
		b := New("short-lived", WithRegisterer(reg))
		p, err := b.Allow()
		require.NoError(t, err)
		p.Done(nil)
		if survivor == nil {
			survivor = b
		} else {
			twin = b
		}
	}
	require.Equal(t, 2.0, gatheredCounters(t, reg, "short-lived")["bulwark_breaker_calls_total,outcome=success"])
	wt := weak.Make(twin)
	twin = nil
	gctest.Collect(t, wt)
	require.Equal(t, 2.0, gatheredCounters(t, reg, "short-lived")["bulwark_breaker_calls_total,outcome=success"])
	wp := weak.Make(survivor)
	survivor = nil
	gctest.Collect(t, wp)
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == "bulwark_breaker_transitions_total" {
			continue // a plain counter vector: its children stay
		}
		for _, m := range mf.GetMetric() {
			require.NotEqual(t, "short-lived", m.GetLabel()[0].GetValue(), mf.GetName())
		}
	}
	breakers, retired := metrics.Register(reg, newCounters()).Len()
	require.Equal(t, 1, breakers)
	require.Zero(t, retired)
	runtime.KeepAlive(keep)
}

// Breakers of one name come and go while calls run and two scrapers read
// the registry: the name keeps a live breaker throughout, so each scraper
// must see every counter of the name only grow.
func TestMetricsSharedNameChurn(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	keep := New("churn", WithRegisterer(reg))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			b := New("churn", WithRegisterer(reg), WithConsecutiveFailures(1))
			for _, br := range []*Breaker{b, keep} {
				if p, err := br.Allow(); err == nil {
					p.Done(nil)
				}
			}
			if p, err := b.Allow(); err == nil {
				p.Done(errBoom) // opens b: later calls are rejected
			}
			_, _ = b.Allow()
			if i%8 == 0 {
				runtime.GC()
			}
		}
	})
	scrape := func() {
		var prev map[string]float64
		for range 200 {
			got := gatheredCounters(t, reg, "churn")
			for k, v := range prev {
				if got[k] < v {
					t.Errorf("%s went down from %v to %v", k, v, got[k])
				}
			}
			prev = got
		}
	}
	var scrapers sync.WaitGroup
	scrapers.Go(scrape)
	scrapers.Go(scrape)
	scrapers.Wait()
	close(stop)
	wg.Wait()
	runtime.KeepAlive(keep)
}
