package breaker

import (
	"sync/atomic"

	"github.com/bulwark-go/bulwark/internal/metrics"
	"github.com/prometheus/client_golang/prometheus"
)

// stats are a breaker's call counters. They are plain atomics, read by the
// collector at scrape time; a success while closed touches none of them.
type stats struct {
	closedFailures atomic.Uint64 // failures while closed; added before seq moves
	otherSuccesses atomic.Uint64 // successes while half-open or disabled
	otherFailures  atomic.Uint64
	ignored        atomic.Uint64
	rejected       atomic.Uint64
	slow           atomic.Uint64
}

// successes returns the number of successful calls. A success while closed
// is counted by nothing but seq, which counts every outcome recorded while
// closed: closed successes are seq minus closedFailures. Read while calls
// run, that difference must never be too high, because metrics.Counters
// keeps the highest reading of a counter for good: a failure read as a
// success would stay a success. So
//
//   - a failure adds to closedFailures before it moves seq ([Permit.Report]),
//   - successes loads seq before closedFailures,
//
// and Go's atomics are sequentially consistent. Every failure that the load
// of seq sees had added to closedFailures before, so the later load of
// closedFailures sees it too: the difference is at most the successes
// recorded by the time seq was loaded. It falls short by the failures that
// have added to closedFailures and not yet moved seq, or that were reported
// between the two loads; it can even be negative, and is then clamped to
// zero, which is still no more than the truth. A reading that falls short is
// harmless: the highest reading kept never exceeds the successes reported,
// and a reading taken while no failure is being reported is exact.
func (b *Breaker) successes() uint64 {
	calls := b.seq.Load()
	failures := b.st.closedFailures.Load()
	return calls - min(failures, calls) + b.st.otherSuccesses.Load()
}

// readCounters adds b's calls by outcome (success, failure, ignored,
// rejected), then its slow calls, to dst.
func (b *Breaker) readCounters(dst []uint64) {
	dst[0] += b.successes()
	dst[1] += b.st.closedFailures.Load() + b.st.otherFailures.Load()
	dst[2] += b.st.ignored.Load()
	dst[3] += b.st.rejected.Load()
	dst[4] += b.st.slow.Load()
}

// newCounters returns the collector of calls_total and slow_calls_total, in
// the order readCounters fills. It reads the breakers at scrape time, so that
// no call pays for keeping a metric up to date, and sums those sharing a
// name; see [metrics.Counters] for what happens to a collected breaker's
// counts.
func newCounters() *metrics.Counters {
	return metrics.NewCounters(
		metrics.Family{
			Name:  "bulwark_breaker_calls_total",
			Help:  "Calls seen by the circuit breaker, by outcome: success, failure, ignored (not counted toward the breaker's decisions), rejected (not admitted).",
			Label: "outcome",
			Kinds: []string{"success", "failure", "ignored", "rejected"},
		},
		metrics.Family{
			Name: "bulwark_breaker_slow_calls_total",
			Help: "Calls that took at least the breaker's slow-call threshold.",
		},
	)
}

// instruments are the metrics a breaker updates itself: only transitions,
// which are rare. Everything else is read at scrape time.
type instruments struct {
	transitions *prometheus.CounterVec
	name        string
}

func newInstruments(b *Breaker) *instruments {
	reg := b.cfg.reg
	transitions := metrics.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bulwark_breaker_transitions_total",
		Help: "State changes of the circuit breaker.",
	}, []string{"name", "from", "to"}))
	if reg != nil {
		metrics.AddInstance(metrics.Register(reg, newCounters()), b.name, b, (*Breaker).readCounters)
		metrics.Register(reg, newStateCollector()).breakers.Add(b)
	}
	return &instruments{name: b.name, transitions: transitions}
}

// transition counts a state change; it runs only on transitions, so the label
// lookup is not on any call's path.
func (m *instruments) transition(from, to State) {
	m.transitions.WithLabelValues(m.name, from.String(), to.String()).Inc()
}

// stateCollector reports, for every live breaker registered with it, its
// state and window failure ratio, read at scrape time. It holds breakers
// weakly, so a breaker nobody uses any more is garbage collected and drops
// out. Breakers that share a name are reported together: the state gauge
// counts how many live ones are in each state, and the failure ratio is that
// of their closed windows taken together.
type stateCollector struct {
	state, ratio *prometheus.Desc
	breakers     metrics.WeakSet[Breaker]
}

func newStateCollector() *stateCollector {
	return &stateCollector{
		state: prometheus.NewDesc("bulwark_breaker_state",
			"Circuit breaker state: 1 for the current state, 0 for the others.",
			[]string{"name", "state"}, nil),
		ratio: prometheus.NewDesc("bulwark_breaker_failure_ratio",
			"Failed calls over all calls in the closed breaker's current window (0 when not closed).",
			[]string{"name"}, nil),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.state
	ch <- c.ratio
}

// family is what the breakers of one name add up to in one scrape.
type family struct {
	states                      [Disabled + 1]float64
	windowCalls, windowFailures int64
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	var names []string
	families := map[string]*family{}
	// Counts may run a breaker's state-change hook: the set holds no lock.
	for _, b := range c.breakers.Live() {
		f := families[b.name]
		if f == nil {
			f = &family{}
			families[b.name] = f
			names = append(names, b.name)
		}
		counts := b.Counts()
		if s := counts.State; s >= Closed && s <= Disabled {
			f.states[s]++
		}
		f.windowCalls += counts.Calls
		f.windowFailures += counts.Failures
	}
	for _, name := range names {
		f := families[name]
		for s := Closed; s <= Disabled; s++ {
			ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, f.states[s], name, s.String())
		}
		ratio := Counts{Calls: f.windowCalls, Failures: f.windowFailures}.FailureRate()
		ch <- prometheus.MustNewConstMetric(c.ratio, prometheus.GaugeValue, ratio, name)
	}
}
