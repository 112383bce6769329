package breaker

import (
	"sync"
	"sync/atomic"
	"weak"

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
// breaker that is no longer used disappears from the metrics.
type stateCollector struct {
	calls, slow, state, ratio *prometheus.Desc

	mu       sync.Mutex
	breakers map[string]weak.Pointer[Breaker]
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
		breakers: map[string]weak.Pointer[Breaker]{},
	}
}

// add registers b; a later breaker with the same name replaces an earlier one.
func (c *stateCollector) add(b *Breaker) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.breakers[b.name] = weak.Make(b)
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.calls
	ch <- c.slow
	ch <- c.state
	ch <- c.ratio
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	live := make([]*Breaker, 0, len(c.breakers))
	for name, wp := range c.breakers {
		if b := wp.Value(); b != nil {
			live = append(live, b)
		} else {
			delete(c.breakers, name)
		}
	}
	c.mu.Unlock()
	// Reading a breaker may run its state-change hook; no lock is held here.
	for _, b := range live {
		counter := func(desc *prometheus.Desc, v uint64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), append([]string{b.name}, labels...)...)
		}
		counter(c.calls, b.successes(), "success")
		counter(c.calls, b.st.closedFailures.Load()+b.st.otherFailures.Load(), "failure")
		counter(c.calls, b.st.ignored.Load(), "ignored")
		counter(c.calls, b.st.rejected.Load(), "rejected")
		counter(c.slow, b.st.slow.Load())

		counts := b.Counts()
		for s := Closed; s <= Disabled; s++ {
			v := 0.0
			if s == counts.State {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, v, b.name, s.String())
		}
		ch <- prometheus.MustNewConstMetric(c.ratio, prometheus.GaugeValue, counts.FailureRate(), b.name)
	}
}
