package breaker

import (
	"runtime"
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
// call pays for keeping a metric up to date. It holds breakers weakly, so a
// breaker nobody uses any more is garbage collected. Breakers that share a
// name are reported together: the state gauge counts how many live ones are
// in each state, the failure ratio is that of their closed windows taken
// together, and their counters are summed.
//
// A name's counters never go down when one of its breakers is collected
// (Prometheus would read a reset, and rate() would count the whole total
// again): the collector remembers what it last read from each breaker and
// keeps that in the name's total while another breaker of the name lives.
// Calls a collected breaker saw after the last scrape before its collection
// are not counted. A name whose breakers are all gone leaves the output and
// what was kept for it is forgotten, so memory follows the live breakers; a
// breaker given the name later starts its series again from its own counts.
type stateCollector struct {
	calls, slow, state, ratio *prometheus.Desc

	mu      sync.Mutex
	members []*member
	retired map[string]*totals // read from collected breakers, by name
}

// totals are what the collector reads of one breaker's counters, or the sum
// of several breakers'.
type totals struct {
	success, failure, ignored, rejected, slow uint64
}

func (t *totals) add(o *totals) {
	t.success += o.success
	t.failure += o.failure
	t.ignored += o.ignored
	t.rejected += o.rejected
	t.slow += o.slow
}

// raise moves each count of t up to o's: scrapes running at once read a
// breaker concurrently and may store their readings out of order.
func (t *totals) raise(o *totals) {
	t.success = max(t.success, o.success)
	t.failure = max(t.failure, o.failure)
	t.ignored = max(t.ignored, o.ignored)
	t.rejected = max(t.rejected, o.rejected)
	t.slow = max(t.slow, o.slow)
}

// totals reads b's counters. Each only grows, so a later reading is never
// below an earlier one.
func (b *Breaker) totals() totals {
	return totals{
		success:  b.successes(),
		failure:  b.st.closedFailures.Load() + b.st.otherFailures.Load(),
		ignored:  b.st.ignored.Load(),
		rejected: b.st.rejected.Load(),
		slow:     b.st.slow.Load(),
	}
}

// member is one breaker registered with the collector.
type member struct {
	b    weak.Pointer[Breaker]
	name string
	last totals // the highest reading of b so far; under the collector's mu
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
		retired: map[string]*totals{},
	}
}

// add registers b beside the breakers already there, whatever their names.
func (c *stateCollector) add(b *Breaker) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pruneLocked() // memory follows the live breakers even without scrapes
	c.members = append(c.members, &member{b: weak.Make(b), name: b.name})
}

// reading is one live breaker as one scrape sees it.
type reading struct {
	m      *member
	b      *Breaker
	totals totals
	counts Counts
}

// pruneLocked drops the collected breakers, keeping what was last read from
// each in its name's retired total while the name has a live breaker, and
// forgets the retired totals of names that have none. It returns the live
// breakers; c.mu is held.
func (c *stateCollector) pruneLocked() []reading {
	var live []reading
	liveNames := map[string]bool{}
	kept := c.members[:0]
	var dead []*member
	for _, m := range c.members {
		b := m.b.Value()
		if b == nil {
			dead = append(dead, m)
			continue
		}
		live = append(live, reading{m: m, b: b})
		liveNames[m.name] = true
		kept = append(kept, m)
	}
	clear(c.members[len(kept):])
	c.members = kept
	for _, m := range dead {
		if !liveNames[m.name] {
			continue
		}
		r := c.retired[m.name]
		if r == nil {
			r = &totals{}
			c.retired[m.name] = r
		}
		r.add(&m.last)
	}
	for name := range c.retired {
		if !liveNames[name] {
			delete(c.retired, name)
		}
	}
	return live
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.calls
	ch <- c.slow
	ch <- c.state
	ch <- c.ratio
}

// family is what the breakers of one name add up to in one scrape.
type family struct {
	totals
	states                      [Disabled + 1]float64
	windowCalls, windowFailures int64
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	live := c.pruneLocked()
	c.mu.Unlock()
	// Reading a breaker may run its state-change hook: no lock is held.
	for i := range live {
		r := &live[i]
		r.totals = r.b.totals()
		r.counts = r.b.Counts()
	}
	var names []string
	families := map[string]*family{}
	for i := range live {
		r := &live[i]
		f := families[r.m.name]
		if f == nil {
			f = &family{}
			families[r.m.name] = f
			names = append(names, r.m.name)
		}
		if s := r.counts.State; s >= Closed && s <= Disabled {
			f.states[s]++
		}
		f.windowCalls += r.counts.Calls
		f.windowFailures += r.counts.Failures
	}
	c.mu.Lock()
	for i := range live {
		live[i].m.last.raise(&live[i].totals)
	}
	// The counters add up every member's last reading, collected or not,
	// and the name's retired total. A prune meanwhile moves a reading from
	// one to the other under c.mu, so nothing is counted twice or missed.
	for _, m := range c.members {
		if f := families[m.name]; f != nil {
			f.add(&m.last)
		}
	}
	for name, r := range c.retired {
		if f := families[name]; f != nil {
			f.add(r)
		}
	}
	c.mu.Unlock()
	// Until here the breakers read stay alive, so no prune meanwhile finds
	// every breaker of a reported name gone and forgets its total.
	runtime.KeepAlive(live)
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
