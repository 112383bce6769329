package metrics

import (
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

func counter() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bulwark_test_things_total", Help: "Things."}, []string{"name"})
}

func TestRegisterSharesCollectors(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	a := Register(reg, counter())
	b := Register(reg, counter())
	require.Same(t, a, b)
	a.WithLabelValues("x").Inc()
	b.WithLabelValues("y").Add(2)
	require.Equal(t, 2, testutil.CollectAndCount(reg))
}

func TestRegisterNilRegisterer(t *testing.T) {
	c := counter()
	require.Same(t, c, Register(nil, c))
}

func TestRegisterConflictPanics(t *testing.T) {
	reg := prometheus.NewRegistry()
	Register(reg, counter())
	other := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bulwark_test_things_total", Help: "Things."}, []string{"name", "other"})
	require.Panics(t, func() { Register(reg, other) })
}

func TestWeakSetDropsCollected(t *testing.T) {
	type instance struct{ name string } // big enough to stay out of the tiny allocator
	var s WeakSet[instance]
	kept := &instance{name: "kept"}
	s.Add(kept)
	s.Add(&instance{name: "dropped"}) // unreachable from here on
	runtime.GC()
	live := s.Live()
	require.Len(t, live, 1)
	require.Same(t, kept, live[0])
	runtime.KeepAlive(kept)
}
