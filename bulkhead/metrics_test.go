package bulkhead

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/clock"
)

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	fc := clock.NewFake(time.Time{})
	b := New("api", WithLimit(2), WithQueue(2), WithMaxWait(time.Second), WithClock(fc), WithRegisterer(reg))
	m := registerMetrics(reg) // the shared collectors
	require.Same(t, m.rejected, registerMetrics(reg).rejected)

	gauges := func() [3]float64 {
		return [3]float64{testutil.ToFloat64(m.inFlight), testutil.ToFloat64(m.queued), testutil.ToFloat64(m.limit)}
	}
	rejected := func(reason string) float64 {
		return testutil.ToFloat64(m.rejected.WithLabelValues("api", reason))
	}
	require.Equal(t, [3]float64{0, 0, 2}, gauges())

	held := hold(t, b, 2)
	require.Equal(t, [3]float64{2, 0, 2}, gauges())

	// One waiter gets a slot after 250 ms, one times out after 1 s, one is
	// canceled, one finds the queue full.
	granted := acquireAsync(context.Background(), b)
	fc.WaitForTimers(1)
	fc.Advance(250 * time.Millisecond)
	held[0].Release()
	r := <-granted
	require.NoError(t, r.err)
	require.Equal(t, [3]float64{2, 0, 2}, gauges())

	timedOut := acquireAsync(context.Background(), b)
	fc.WaitForTimers(1)
	ctx, cancel := context.WithCancel(context.Background())
	canceled := acquireAsync(ctx, b)
	fc.WaitForTimers(2)
	require.Equal(t, [3]float64{2, 2, 2}, gauges())
	_, err := b.Acquire(context.Background())
	require.ErrorIs(t, err, ErrFull)
	cancel()
	require.ErrorIs(t, (<-canceled).err, context.Canceled)
	fc.Advance(time.Second)
	require.ErrorIs(t, (<-timedOut).err, ErrTimeout)
	require.Equal(t, [3]float64{2, 0, 2}, gauges())

	require.Equal(t, 1.0, rejected("full"))
	require.Equal(t, 1.0, rejected("timeout"))
	require.Equal(t, 1.0, rejected("canceled"))

	b.SetLimit(5)
	require.Equal(t, [3]float64{2, 0, 5}, gauges())
	r.p.Release()
	held[1].Release()
	require.Equal(t, [3]float64{0, 0, 5}, gauges())

	// Waits observed: 0.25 s (granted), 0 s (canceled at once), 1 s
	// (timed out); calls admitted at once are not observed.
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP bulwark_bulkhead_wait_seconds Time calls spent in the bulkhead's queue, whatever ended the wait; calls admitted at once are not observed.
# TYPE bulwark_bulkhead_wait_seconds histogram
bulwark_bulkhead_wait_seconds_bucket{name="api",le="0.0001"} 1
bulwark_bulkhead_wait_seconds_bucket{name="api",le="0.0005"} 1
bulwark_bulkhead_wait_seconds_bucket{name="api",le="0.001"} 1
bulwark_bulkhead_wait_seconds_bucket{name="api",le="0.0025"} 1
bulwark_bulkhead_wait_seconds_bucket{name="api",le="0.005"} 1
bulwark_bulkhead_wait_seconds_bucket{name="api",le="0.01"} 1
bulwark_bulkhead_wait_seconds_bucket{name="api",le="0.025"} 1
bulwark_bulkhead_wait_seconds_bucket{name="api",le="0.05"} 1
bulwark_bulkhead_wait_seconds_bucket{name="api",le="0.1"} 1
bulwark_bulkhead_wait_seconds_bucket{name="api",le="0.25"} 2
bulwark_bulkhead_wait_seconds_bucket{name="api",le="0.5"} 2
bulwark_bulkhead_wait_seconds_bucket{name="api",le="1"} 3
bulwark_bulkhead_wait_seconds_bucket{name="api",le="2.5"} 3
bulwark_bulkhead_wait_seconds_bucket{name="api",le="5"} 3
bulwark_bulkhead_wait_seconds_bucket{name="api",le="10"} 3
bulwark_bulkhead_wait_seconds_bucket{name="api",le="30"} 3
bulwark_bulkhead_wait_seconds_bucket{name="api",le="+Inf"} 3
bulwark_bulkhead_wait_seconds_sum{name="api"} 1.25
bulwark_bulkhead_wait_seconds_count{name="api"} 3
`), "bulwark_bulkhead_wait_seconds"))

	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
	for _, c := range []prometheus.Collector{m.inFlight, m.queued, m.limit, m.rejected, m.wait} {
		problems, err := testutil.CollectAndLint(c)
		require.NoError(t, err)
		require.Empty(t, problems)
	}
	runtime.KeepAlive(b)
}

func TestMetricsSharedRegistry(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	a := New("a", WithLimit(3), WithRegisterer(reg))
	b1 := New("b", WithLimit(1), WithRegisterer(reg))
	b2 := New("b", WithLimit(2), WithRegisterer(reg)) // same name: reported together
	pa, pb1, pb2 := hold(t, a, 1), hold(t, b1, 1), hold(t, b2, 2)
	_, err := b1.Acquire(context.Background())
	require.ErrorIs(t, err, ErrFull)
	_, err = b2.Acquire(context.Background())
	require.ErrorIs(t, err, ErrFull)

	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP bulwark_bulkhead_in_flight Calls holding a slot in the bulkhead.
# TYPE bulwark_bulkhead_in_flight gauge
bulwark_bulkhead_in_flight{name="a"} 1
bulwark_bulkhead_in_flight{name="b"} 3
# HELP bulwark_bulkhead_limit Limit on calls in flight in the bulkhead.
# TYPE bulwark_bulkhead_limit gauge
bulwark_bulkhead_limit{name="a"} 3
bulwark_bulkhead_limit{name="b"} 3
# HELP bulwark_bulkhead_queued Calls waiting in the bulkhead's queue for a slot.
# TYPE bulwark_bulkhead_queued gauge
bulwark_bulkhead_queued{name="a"} 0
bulwark_bulkhead_queued{name="b"} 0
# HELP bulwark_bulkhead_rejected_total Calls the bulkhead refused, by reason: full (no slot and no room in the queue), timeout (maximum wait elapsed) or canceled (the caller's context ended first).
# TYPE bulwark_bulkhead_rejected_total counter
bulwark_bulkhead_rejected_total{name="a",reason="canceled"} 0
bulwark_bulkhead_rejected_total{name="a",reason="full"} 0
bulwark_bulkhead_rejected_total{name="a",reason="timeout"} 0
bulwark_bulkhead_rejected_total{name="b",reason="canceled"} 0
bulwark_bulkhead_rejected_total{name="b",reason="full"} 2
bulwark_bulkhead_rejected_total{name="b",reason="timeout"} 0
`), "bulwark_bulkhead_in_flight", "bulwark_bulkhead_limit", "bulwark_bulkhead_queued", "bulwark_bulkhead_rejected_total"))
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)

	for _, ps := range [][]Permit{pa, pb1, pb2} {
		for i := range ps {
			ps[i].Release()
		}
	}
	runtime.KeepAlive(a)
	runtime.KeepAlive(b1)
	runtime.KeepAlive(b2)
}

func TestMetricsForgetCollectedBulkheads(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	keep := New("keep", WithRegisterer(reg))
	func() { New("gone", WithRegisterer(reg)) }()
	runtime.GC()
	runtime.GC()
	m := registerMetrics(reg)
	require.Equal(t, 1, testutil.CollectAndCount(m.limit))
	require.Equal(t, float64(DefaultLimit), testutil.ToFloat64(m.limit))
	require.Len(t, m.limit.members.Live(), 1)
	runtime.KeepAlive(keep)
}

func TestNoRegisterer(t *testing.T) {
	b := New("quiet", WithLimit(1))
	require.NoError(t, b.Do(context.Background(), func(context.Context) error { return nil }))
	_, err := b.Acquire(context.Background())
	require.NoError(t, err)
	_, err = b.Acquire(context.Background())
	require.ErrorIs(t, err, ErrFull)
	require.Equal(t, 1.0, testutil.ToFloat64(b.rejectedFull))
}
