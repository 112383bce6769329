package breaker

import (
	"sync/atomic"

	"github.com/bulwark-go/bulwark/internal/metrics"
	"github.com/prometheus/client_golang/prometheus"
)

// stats are a breaker's call counters. They are plain atomics, read by the
// collector at scrape time; a success while closed touches none of them.
type stats struct {
	closedFailures atomic.Uint64 // failures recorded while closed
	otherSuccesses atomic.Uint64 // successes while half-open or disabled
	otherFailures  atomic.Uint64
	ignored        atomic.Uint64
	rejected       atomic.Uint64
	slow           atomic.Uint64
	reported       atomic.Uint64 // the last success count exported
}

// successes returns the number of successful calls, never less than it
// returned before. A closed success is seq minus closed failures; a failure
// moves seq before closedFailures, so a scrape between the two sees one
// success too many for a moment. Clamping keeps the exported counter
// monotonic, and it is exact again at the next quiet moment.
func (b *Breaker) successes() uint64 {
	cf := b.st.closedFailures.Load()
	v := b.seq.Load() - cf + b.st.otherSuccesses.Load()
	for {
		prev := b.st.reported.Load()
		if v <= prev {
			return prev
		}
		if b.st.reported.CompareAndSwap(prev, v) {
			return v
		}
	}
}

// instruments are the metrics a breaker updates itself: only transitions,
// which are rare. Everything else is read by stateCollector at scrape time.
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
		metrics.Register(reg, newStateCollector()).add(b)
	}
	return &instruments{name: b.name, transitions: transitions}
}

// transition counts a state change; it runs only on transitions, so the label
// lookup is not on any call's path.
func (m *instruments) transition(from, to State) {
	m.transitions.WithLabelValues(m.name, from.String(), to.String()).Inc()
}

// stateCollector reports, for every breaker registered with it, its calls,
// slow calls, state and window failure ratio, read at scrape time so that no
// call pays for keeping a metric up to date. It holds breakers weakly: a
// breaker that is no longer used disappears from the metrics. Breakers that
// share a name are reported together: their counters are summed, the state
// gauge counts how many are in each state, and the failure ratio is that of
// their closed windows taken together.
type stateCollector struct {
	calls, slow, state, ratio *prometheus.Desc
	breakers                  metrics.WeakSet[Breaker]
}

func newStateCollector() *stateCollector {
	return &stateCollector{
		calls: prometheus.NewDesc("bulwark_breaker_calls_total",
			"Calls seen by the circuit breaker, by outcome: success, failure, ignored (not counted toward the breaker's decisions), rejected (not admitted).",
			[]string{"name", "outcome"}, nil),
		slow: prometheus.NewDesc("bulwark_breaker_slow_calls_total",
			"Calls that took at least the breaker's slow-call threshold.",
			[]string{"name"}, nil),
		state: prometheus.NewDesc("bulwark_breaker_state",
			"Circuit breaker state: 1 for the current state, 0 for the others.",
			[]string{"name", "state"}, nil),
		ratio: prometheus.NewDesc("bulwark_breaker_failure_ratio",
			"Failed calls over all calls in the closed breaker's current window (0 when not closed).",
			[]string{"name"}, nil),
	}
}

// add registers b beside the breakers already there, whatever their names.
func (c *stateCollector) add(b *Breaker) { c.breakers.Add(b) }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.calls
	ch <- c.slow
	ch <- c.state
	ch <- c.ratio
}

// family is what the breakers of one name add up to in one scrape.
type family struct {
	success, failure, ignored, rejected, slow uint64
	states                                    [Disabled + 1]float64
	windowCalls, windowFailures               int64
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	live := c.breakers.Live()
	// Reading a breaker may run its state-change hook; no lock is held here.
	var names []string
	families := map[string]*family{}
	for _, b := range live {
		f := families[b.name]
		if f == nil {
			f = &family{}
			families[b.name] = f
			names = append(names, b.name)
		}
		f.success += b.successes()
		f.failure += b.st.closedFailures.Load() + b.st.otherFailures.Load()
		f.ignored += b.st.ignored.Load()
		f.rejected += b.st.rejected.Load()
		f.slow += b.st.slow.Load()
		counts := b.Counts()
		if counts.State >= Closed && counts.State <= Disabled {
			f.states[counts.State]++
		}
		f.windowCalls += counts.Calls
		f.windowFailures += counts.Failures
	}
	for _, name := range names {
		f := families[name]
		counter := func(desc *prometheus.Desc, v uint64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), append([]string{name}, labels...)...)
		}
		counter(c.calls, f.success, "success")
		counter(c.calls, f.failure, "failure")
		counter(c.calls, f.ignored, "ignored")
		counter(c.calls, f.rejected, "rejected")
		counter(c.slow, f.slow)
		for s := Closed; s <= Disabled; s++ {
			ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, f.states[s], name, s.String())
		}
		ratio := Counts{Calls: f.windowCalls, Failures: f.windowFailures}.FailureRate()
		ch <- prometheus.MustNewConstMetric(c.ratio, prometheus.GaugeValue, ratio, name)
	}
}
