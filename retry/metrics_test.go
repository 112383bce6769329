package retry

import (
	"context"
	"fmt"
	"maps"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"weak"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/internal/gctest"
)

func TestMetricsAfterScriptedScenario(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	clk := clock.NewFake(time.Time{})
	p := New("orders", WithRegisterer(reg), WithClock(clk), WithBackOff(constBackOff(time.Second)), WithMaxAttempts(3))
	// A second policy on the same registry shares the collectors.
	tight := New("tight", WithRegisterer(reg), WithBackOff(zeroBackOff), WithBudget(NewBudget(2, 0.5)))
	ctx := context.Background()

	// Drive p's waits on the fake clock while the scripted calls run.
	stop := make(chan struct{})
	drove := make(chan struct{})
	go func() {
		defer close(drove)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if clk.Pending() > 0 {
				clk.Advance(time.Second)
			} else {
				clk.WaitForTimers(1)
			}
		}
	}()

	require.NoError(t, p.Do(ctx, func(context.Context) error { return nil })) // first_try: 1 attempt
	fn, _ := failing(1, errBoom)
	require.NoError(t, p.Do(ctx, fn)) // after_retry: 2 attempts, 1 wait
	fn, _ = failing(10, errBoom)
	requireRetryError(t, p.Do(ctx, fn), 3, Exhausted) // exhausted: 3 attempts, 2 waits
	requireRetryError(t, p.Do(ctx, func(context.Context) error { return errPermanent() }), 1, NotRetryable)
	canceled, cancel := context.WithCancel(ctx)
	requireRetryError(t, p.Do(canceled, func(context.Context) error { cancel(); return errBoom }), 1, Canceled)
	requireRetryError(t, tight.Do(ctx, func(context.Context) error { return errBoom }), 1, BudgetExhausted)
	close(stop)
	clk.NewTimer(time.Hour) // wake the driver if it waits for a timer
	<-drove

	calls := func(name, result string) float64 {
		t.Helper()
		return seriesValue(t, reg, "bulwark_retry_calls_total", map[string]string{"name": name, "result": result})
	}
	for result, want := range map[string]float64{
		"first_try": 1, "after_retry": 1, "exhausted": 1, "not_retryable": 1, "canceled": 1, "budget_exhausted": 0,
	} {
		require.Equal(t, want, calls("orders", result), result)
	}
	require.Equal(t, 1.0, calls("tight", "budget_exhausted"))

	// Budget of "orders": 10, -1 +0.1 (after_retry), -3 (exhausted); the not
	// retryable and canceled calls leave it alone.
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP bulwark_retry_attempts_total Attempts made by retry policies, first calls included; a call's attempts are counted when it ends.
# TYPE bulwark_retry_attempts_total counter
bulwark_retry_attempts_total{name="orders"} 8
bulwark_retry_attempts_total{name="tight"} 1
# HELP bulwark_retry_budget_tokens Tokens left in the retry budget of a retry policy; retries stop at half the capacity.
# TYPE bulwark_retry_budget_tokens gauge
bulwark_retry_budget_tokens{name="orders"} 6.1
bulwark_retry_budget_tokens{name="tight"} 1
`), "bulwark_retry_attempts_total", "bulwark_retry_budget_tokens"))

	// Three waits of a second each.
	require.Equal(t, 2, testutil.CollectAndCount(reg, "bulwark_retry_wait_seconds"))
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == "bulwark_retry_wait_seconds" {
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == "orders" {
					require.EqualValues(t, 3, m.GetHistogram().GetSampleCount())
					require.Equal(t, 3.0, m.GetHistogram().GetSampleSum())
				}
			}
		}
	}

	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
	runtime.KeepAlive(p) // collectors hold policies weakly
	runtime.KeepAlive(tight)
}

// Calls ending on many goroutines at once, each counted on the stripe its
// Loop's address picks, add up exactly: every first-try success, every retried
// success and all their attempts.
func TestMetricsCountsExactUnderConcurrency(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	p := New("busy", WithRegisterer(reg), WithBackOff(zeroBackOff), WithBudget(nil))
	const goroutines, calls = 64, 200
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range calls {
				failures := int64((g + i) % 2) // every other call succeeds on its second attempt
				fn, _ := failing(failures, errBoom)
				if err := p.Do(context.Background(), fn); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	half := float64(goroutines * calls / 2)
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(fmt.Sprintf(`
# HELP bulwark_retry_attempts_total Attempts made by retry policies, first calls included; a call's attempts are counted when it ends.
# TYPE bulwark_retry_attempts_total counter
bulwark_retry_attempts_total{name="busy"} %g
# HELP bulwark_retry_calls_total Calls through retry policies by result: first_try, after_retry, exhausted, not_retryable, budget_exhausted or canceled.
# TYPE bulwark_retry_calls_total counter
bulwark_retry_calls_total{name="busy",result="after_retry"} %g
bulwark_retry_calls_total{name="busy",result="budget_exhausted"} 0
bulwark_retry_calls_total{name="busy",result="canceled"} 0
bulwark_retry_calls_total{name="busy",result="exhausted"} 0
bulwark_retry_calls_total{name="busy",result="first_try"} %g
bulwark_retry_calls_total{name="busy",result="not_retryable"} 0
`, 3*half, half, half)), "bulwark_retry_attempts_total", "bulwark_retry_calls_total"))
	runtime.KeepAlive(p) // collectors hold policies weakly
}

// Policies that share a name on one registry are reported together, and a
// policy nobody holds any more leaves the output.
func TestMetricsPoliciesSharingAName(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	a := New("shared", WithRegisterer(reg))
	b := New("shared", WithRegisterer(reg))
	ctx := context.Background()
	require.NoError(t, a.Do(ctx, func(context.Context) error { return nil }))
	require.NoError(t, b.Do(ctx, func(context.Context) error { return nil }))
	require.Equal(t, 1, testutil.CollectAndCount(reg, "bulwark_retry_attempts_total"), "one series for the name")
	want := `
# HELP bulwark_retry_attempts_total Attempts made by retry policies, first calls included; a call's attempts are counted when it ends.
# TYPE bulwark_retry_attempts_total counter
bulwark_retry_attempts_total{name="shared"} 2
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want), "bulwark_retry_attempts_total"))
	runtime.KeepAlive(a)
	runtime.KeepAlive(b)
}

// When one of two policies sharing a name is garbage collected, the name's
// counters must not go down: Prometheus reads a decrease as a reset and
// rate() would count the whole total again.
func TestMetricsSharedNameMonotonicAcrossGC(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	a := New("gc", WithRegisterer(reg))
	ctx := context.Background()
	ok := func(context.Context) error { return nil }
	b := New("gc", WithRegisterer(reg))
	require.NoError(t, b.Do(ctx, ok))
	require.NoError(t, a.Do(ctx, ok))
	calls := func() float64 {
		t.Helper()
		return seriesValue(t, reg, "bulwark_retry_attempts_total", map[string]string{"name": "gc"})
	}
	// b lives through this scrape: what a policy counted after the last
	// scrape before its collection is lost, by design.
	require.Equal(t, 2.0, calls())
	wb := weak.Make(b)
	b = nil
	gctest.Collect(t, wb)
	require.Equal(t, 2.0, calls(), "the collected policy's attempts stay counted")
	runtime.KeepAlive(a)
}

// budgetTokens returns the value of bulwark_retry_budget_tokens{name=name}.
func budgetTokens(t *testing.T, reg prometheus.Gatherer, name string) float64 {
	t.Helper()
	return seriesValue(t, reg, "bulwark_retry_budget_tokens", map[string]string{"name": name})
}

// seriesValue returns the value of the counter or gauge series of metric
// whose labels are exactly labels.
func seriesValue(t *testing.T, reg prometheus.Gatherer, metric string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != metric {
			continue
		}
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			if maps.Equal(got, labels) {
				if c := m.GetCounter(); c != nil {
					return c.GetValue()
				}
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no series %s%v", metric, labels)
	return 0
}

// A policy that replaces another of the same name (a configuration reload, a
// policy per client) has its own budget exported, and the registry does not
// pin the replaced policy's budget: once that is garbage collected the gauge
// reports the budget of the policy in use.
func TestMetricsBudgetGaugeFollowsThePolicyInUse(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	old := New("svc", WithRegisterer(reg), WithBackOff(zeroBackOff))
	oldBudget := weak.Make(old.Budget())
	old = nil // replaced, e.g. on a configuration reload

	cur := New("svc", WithRegisterer(reg), WithBackOff(zeroBackOff), WithMaxAttempts(10))
	for range 3 {
		_ = cur.Do(context.Background(), func(context.Context) error { return errBoom })
	}
	require.Less(t, cur.Budget().Tokens(), 6.0) // the reserve is spent
	// Until the replaced policy is collected it is still a policy of the
	// name, and the gauge sums it in.
	gctest.Collect(t, oldBudget) // the replaced policy's budget is not pinned by the registry
	require.Equal(t, cur.Budget().Tokens(), budgetTokens(t, reg, "svc"),
		"the gauge reports the budget of the policy in use")
	runtime.KeepAlive(reg)
}

// Live policies that share a name are reported together, as the bulkhead's
// gauges are: the gauge is the sum of their budgets' tokens, and a budget
// that several of them share counts once.
func TestMetricsBudgetGaugeSumsPoliciesSharingAName(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	spend := func(p *Policy) {
		_ = p.Do(context.Background(), func(context.Context) error { return errBoom })
	}
	a := New("shared", WithRegisterer(reg), WithBackOff(zeroBackOff), WithMaxAttempts(2))
	b := New("shared", WithRegisterer(reg), WithBackOff(zeroBackOff), WithMaxAttempts(3))
	spend(a) // 10 - 2
	spend(b) // 10 - 3
	require.Equal(t, 15.0, budgetTokens(t, reg, "shared"))

	common := NewBudget(4, 0.5)
	c := New("common", WithRegisterer(reg), WithBudget(common))
	d := New("common", WithRegisterer(reg), WithBudget(common))
	e := New("other", WithRegisterer(reg), WithBudget(common))
	require.Equal(t, 4.0, budgetTokens(t, reg, "common"), "one budget, counted once")
	require.Equal(t, 4.0, budgetTokens(t, reg, "other"))

	// A policy without a budget adds nothing, and alone has no series.
	none := New("none", WithRegisterer(reg), WithBudget(nil))
	n := New("shared", WithRegisterer(reg), WithBudget(nil))
	require.Equal(t, 15.0, budgetTokens(t, reg, "shared"))
	require.Equal(t, 3, testutil.CollectAndCount(reg, "bulwark_retry_budget_tokens"))

	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
	for _, p := range []*Policy{a, b, c, d, e, none, n} {
		runtime.KeepAlive(p) // collectors hold policies weakly
	}
}
