package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// source is an instance the test counts for by hand; gone stands for its
// collection by the garbage collector.
type source struct {
	n    [2]uint64
	gone bool
}

func (s *source) read(dst []uint64) bool {
	if s.gone {
		return false
	}
	dst[0] += s.n[0]
	dst[1] += s.n[1]
	return true
}

func newTestCounters() *Counters {
	return NewCounters("bulwark_test_events_total", "Events.", "kind", "good", "bad")
}

func expectEvents(t *testing.T, reg prometheus.Gatherer, lines ...string) {
	t.Helper()
	want := "# HELP bulwark_test_events_total Events.\n# TYPE bulwark_test_events_total counter\n" +
		strings.Join(lines, "\n") + "\n"
	if len(lines) == 0 {
		want = ""
	}
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want), "bulwark_test_events_total"))
}

func TestCountersSumInstancesOfAName(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	a, b, c := &source{n: [2]uint64{1, 2}}, &source{n: [2]uint64{10, 20}}, &source{n: [2]uint64{5, 0}}
	Register(reg, newTestCounters()).Add("x", a.read)
	Register(reg, newTestCounters()).Add("x", b.read) // the same collector
	Register(reg, newTestCounters()).Add("y", c.read)
	expectEvents(t, reg,
		`bulwark_test_events_total{kind="bad",name="x"} 22`,
		`bulwark_test_events_total{kind="good",name="x"} 11`,
		`bulwark_test_events_total{kind="bad",name="y"} 0`,
		`bulwark_test_events_total{kind="good",name="y"} 5`,
	)
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
}

// When one of two instances of a name goes, what was last read from it stays
// in the name's total: a counter that went down would read as a reset.
func TestCountersNeverGoDownWhenAnInstanceGoes(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	cs := Register(reg, newTestCounters())
	a, b := &source{n: [2]uint64{3, 1}}, &source{n: [2]uint64{4, 0}}
	cs.Add("x", a.read)
	cs.Add("x", b.read)
	expectEvents(t, reg,
		`bulwark_test_events_total{kind="bad",name="x"} 1`,
		`bulwark_test_events_total{kind="good",name="x"} 7`,
	)
	a.gone = true
	b.n[0]++
	expectEvents(t, reg,
		`bulwark_test_events_total{kind="bad",name="x"} 1`,
		`bulwark_test_events_total{kind="good",name="x"} 8`,
	)
	// A new instance of the name adds to the total too.
	cs.Add("x", (&source{n: [2]uint64{0, 2}}).read)
	expectEvents(t, reg,
		`bulwark_test_events_total{kind="bad",name="x"} 3`,
		`bulwark_test_events_total{kind="good",name="x"} 8`,
	)
}

// A name whose instances are all gone leaves the output and the collector's
// memory, also when nobody scrapes: Add forgets the gone instances.
func TestCountersForgetNamesWithNoInstance(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	cs := Register(reg, newTestCounters())
	a := &source{n: [2]uint64{1, 1}}
	cs.Add("x", a.read)
	expectEvents(t, reg,
		`bulwark_test_events_total{kind="bad",name="x"} 1`,
		`bulwark_test_events_total{kind="good",name="x"} 1`,
	)
	a.gone = true
	for range 100 {
		s := &source{}
		cs.Add("y", s.read)
		s.gone = true
	}
	cs.mu.Lock()
	require.LessOrEqual(t, len(cs.members), 1)
	require.Empty(t, cs.retired)
	cs.mu.Unlock()
	expectEvents(t, reg)
}
