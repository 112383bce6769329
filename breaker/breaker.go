package breaker

import (
	"cmp"
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bulwark-go/bulwark/clock"
)

// State is the state of a [Breaker].
type State int32

// States. Closed, Open and HalfOpen are the breaker's own; ForcedOpen and
// Disabled are set and cleared by an operator.
const (
	// Closed admits every call and watches the outcomes.
	Closed State = iota
	// Open rejects every call until the open duration has passed.
	Open
	// HalfOpen admits a bounded number of probe calls to test the dependency.
	HalfOpen
	// ForcedOpen rejects every call until [Breaker.Reset].
	ForcedOpen
	// Disabled admits every call and counts nothing until [Breaker.Reset].
	Disabled
)

var stateNames = [...]string{"closed", "open", "half_open", "forced_open", "disabled"}

// String returns the state's name as used in metric labels: "closed",
// "open", "half_open", "forced_open" or "disabled".
func (s State) String() string {
	if s < 0 || int(s) >= len(stateNames) {
		return "unknown"
	}
	return stateNames[s]
}

// Breaker is a circuit breaker. Create one with [New]; the zero value is not
// usable. It is safe for concurrent use by multiple goroutines.
type Breaker struct {
	name string
	cfg  config
	clk  clock.Clock
	// timed says whether a permit must read the clock when admitted: for
	// slow-call accounting or a time-based window.
	timed bool
	epoch time.Time // permits keep their start as a duration since epoch

	// seq counts the outcomes recorded while closed; count windows take
	// their slot from it. Successes while closed are seq minus closed
	// failures, so the hot path pays for no separate success counter (see
	// successes for how the two are read without overcounting). It is
	// written by every call: the padding keeps it off the cache lines of
	// the fields every call reads (cfg, timed, epoch, gen).
	_   [64]byte
	seq atomic.Uint64
	_   [64]byte
	st  stats

	// gen is the current generation: a state and the counters that belong
	// to it. A transition replaces it, so that an outcome recorded through
	// an older generation lands in a window nobody reads any more.
	gen atomic.Pointer[generation]

	mu    sync.Mutex // serialises transitions
	trips int        // consecutive openings without a close in between; under mu

	events      []event // state changes waiting for the hook; under mu
	dispatching atomic.Bool

	m *instruments
}

// generation is one stay in one state.
type generation struct {
	b     *Breaker
	state State
	win   window    // Closed: the sliding window
	until time.Time // Open: when probes may start

	consecutive atomic.Int64 // Closed: failures in a row
	probes      atomic.Int64 // HalfOpen: probes admitted and not yet done
	successes   atomic.Int64 // HalfOpen: successful probes
}

type event struct{ from, to State }

// New returns a breaker named name (the value of the name label on its
// metrics: keep it short and low-cardinality, such as the dependency's name).
// Without options it uses a window of the last 100 calls, opens at a 50%
// failure rate once 20 calls are in the window, stays open 30s (±10% jitter),
// then admits one probe at a time and closes after 3 successful probes.
func New(name string, opts ...Option) *Breaker {
	cfg := defaults()
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.classify == nil {
		cfg.classify = DefaultClassifier
	}
	if cfg.maxOpen < cfg.openDuration {
		cfg.maxOpen = cfg.openDuration
	}
	if cfg.windowDuration == 0 && cfg.minCalls > cfg.windowSize {
		// A count window never holds more than its size: a full window is
		// enough to decide, or the failure rate could never open the breaker.
		cfg.minCalls = cfg.windowSize
	}
	b := &Breaker{name: name, cfg: cfg, clk: cmp.Or(cfg.clock, clock.Real())}
	b.timed = cfg.slowThreshold > 0 || cfg.windowDuration > 0
	b.epoch = b.clk.Now()
	b.gen.Store(b.newGeneration(Closed, time.Time{}))
	b.m = newInstruments(b)
	return b
}

// Name returns the breaker's name.
func (b *Breaker) Name() string { return b.name }

func (b *Breaker) newGeneration(s State, until time.Time) *generation {
	g := &generation{b: b, state: s, until: until}
	if s == Closed {
		if b.cfg.windowDuration > 0 {
			g.win = newTimeWindow(b.cfg.windowDuration, b.cfg.windowBuckets, &b.seq)
		} else {
			g.win = newCountWindow(b.cfg.windowSize, &b.seq)
		}
	}
	return g
}

// Permit is a call admitted by [Breaker.Allow]. Report its outcome exactly
// once with [Permit.Done] or [Permit.Report]. The zero Permit reports nothing.
type Permit struct {
	g     *generation
	start time.Duration // since the breaker's epoch, when the breaker is timed
}

// Allow asks for a permit to make one call. When the breaker rejects the
// call it returns an error that matches [ErrOpen] or [ErrHalfOpenFull] with
// errors.Is, and carries the time until a probe may be admitted as a
// [github.com/bulwark-go/bulwark.Hint]. Allow does not allocate unless it
// rejects.
func (b *Breaker) Allow() (Permit, error) {
	for {
		g := b.gen.Load()
		switch g.state {
		case Closed, Disabled:
			p := Permit{g: g}
			if b.timed && g.state == Closed {
				p.start = b.clk.Since(b.epoch)
			}
			return p, nil
		case HalfOpen:
			if g.probes.Add(1) > int64(b.cfg.probes) {
				g.probes.Add(-1)
				b.st.rejected.Add(1)
				return Permit{}, &OpenError{Name: b.name, State: HalfOpen}
			}
			p := Permit{g: g}
			if b.timed {
				p.start = b.clk.Since(b.epoch)
			}
			return p, nil
		case Open:
			now := b.clk.Now()
			if !now.Before(g.until) {
				b.transition(g, HalfOpen, now)
				continue
			}
			b.st.rejected.Add(1)
			return Permit{}, &OpenError{Name: b.name, State: Open, RetryAfter: g.until.Sub(now)}
		default: // ForcedOpen
			b.st.rejected.Add(1)
			return Permit{}, &OpenError{Name: b.name, State: ForcedOpen}
		}
	}
}

// Done reports the call's error, classified by the breaker's classifier.
func (p Permit) Done(err error) {
	if p.g != nil {
		p.Report(p.g.b.cfg.classify(err))
	}
}

// Report reports the call's outcome directly, for adapters that classify
// outcomes themselves (by HTTP status, say). The call's duration, for
// slow-call accounting, is measured from Allow.
func (p Permit) Report(o Outcome) {
	g := p.g
	if g == nil {
		return
	}
	b := g.b
	if o != Success && o != Failure {
		b.st.ignored.Add(1)
		if g.state == HalfOpen {
			g.probes.Add(-1)
		}
		return
	}
	var now time.Time
	var elapsed time.Duration
	slow := false
	if b.timed && g.state != Disabled {
		// One reading of the clock, monotonic on the real one; now keeps
		// the monotonic reading of the epoch it is built on.
		elapsed = b.clk.Since(b.epoch)
		now = b.epoch.Add(elapsed)
		if b.cfg.slowThreshold > 0 && elapsed-p.start >= b.cfg.slowThreshold {
			slow = true
			b.st.slow.Add(1)
		}
	}
	failed := o == Failure
	switch g.state {
	case Closed:
		if b.gen.Load() == g {
			if failed {
				b.st.closedFailures.Add(1) // before seq moves: see Breaker.successes
			}
			b.recordClosed(g, now, elapsed, failed, slow)
			return
		}
		// A late outcome of a closed period that has ended: nobody reads its
		// window any more, and recording it there would take a slot number
		// from the current window's sequence. Count it, nothing else.
	case HalfOpen:
		b.recordProbe(g, now, failed || slow)
	}
	if failed {
		b.st.otherFailures.Add(1)
	} else {
		b.st.otherSuccesses.Add(1)
	}
}

func (b *Breaker) recordClosed(g *generation, now time.Time, elapsed time.Duration, failed, slow bool) {
	t := g.win.record(elapsed, failed, slow)
	if !failed {
		if g.consecutive.Load() != 0 {
			g.consecutive.Store(0)
		}
		if t.failures == 0 && t.slow == 0 {
			return
		}
	} else if b.cfg.consecutive > 0 && g.consecutive.Add(1) >= int64(b.cfg.consecutive) {
		b.trip(g, now)
		return
	}
	if t.calls >= int64(b.cfg.minCalls) &&
		(float64(t.failures) >= b.cfg.failureRate*float64(t.calls) ||
			(b.cfg.slowThreshold > 0 && float64(t.slow) >= b.cfg.slowRate*float64(t.calls))) {
		b.trip(g, now)
	}
}

func (b *Breaker) recordProbe(g *generation, now time.Time, failed bool) {
	if failed {
		b.trip(g, now)
		return
	}
	g.probes.Add(-1)
	if g.successes.Add(1) >= int64(b.cfg.closeAfter) {
		b.transition(g, Closed, now)
	}
}

func (b *Breaker) trip(g *generation, now time.Time) {
	if now.IsZero() {
		now = b.clk.Now()
	}
	b.transition(g, Open, now)
}

// Do calls fn if the breaker admits the call and reports its outcome. A
// panic in fn counts as a failure and is raised again. When the breaker
// rejects the call Do returns the rejection without calling fn. An error
// that fn returns because ctx, the caller's own context, was cancelled is
// reported as [Ignored], whatever the classifier says.
func (b *Breaker) Do(ctx context.Context, fn func(context.Context) error) error {
	p, err := b.Allow()
	if err != nil {
		return err
	}
	finished := false
	defer func() {
		if !finished {
			p.Report(Failure)
		}
	}()
	err = fn(ctx)
	finished = true
	if err != nil && ctx.Err() == context.Canceled {
		p.Report(Ignored)
		return err
	}
	p.Done(err)
	return err
}

// State returns the current state. An open breaker whose open duration has
// passed reports HalfOpen, without waiting for a call to notice.
func (b *Breaker) State() State {
	g := b.gen.Load()
	if g.state == Open {
		if now := b.clk.Now(); !now.Before(g.until) {
			b.transition(g, HalfOpen, now)
			g = b.gen.Load()
		}
	}
	return g.state
}

// Counts is a snapshot of a breaker's counters in its current state.
type Counts struct {
	State State
	// Calls, Failures and Slow are the calls in the closed state's window.
	Calls, Failures, Slow int64
	// ConsecutiveFailures is the current run of failures while closed.
	ConsecutiveFailures int64
	// Probes is the number of probes in flight and ProbeSuccesses the
	// successful ones so far, while half-open.
	Probes, ProbeSuccesses int64
	// RetryAfter is the time left until an open breaker admits a probe.
	RetryAfter time.Duration
}

// FailureRate returns Failures/Calls, or 0 when the window is empty.
func (c Counts) FailureRate() float64 {
	if c.Calls == 0 {
		return 0
	}
	return float64(c.Failures) / float64(c.Calls)
}

// Counts returns a snapshot of the breaker's counters.
func (b *Breaker) Counts() Counts {
	b.State() // moves an expired Open to HalfOpen
	g := b.gen.Load()
	c := Counts{State: g.state}
	switch g.state {
	case Closed:
		t := g.win.tally(b.clk.Since(b.epoch))
		c.Calls, c.Failures, c.Slow = t.calls, t.failures, t.slow
		c.ConsecutiveFailures = g.consecutive.Load()
	case HalfOpen:
		c.Probes, c.ProbeSuccesses = g.probes.Load(), g.successes.Load()
	case Open:
		c.RetryAfter = max(0, g.until.Sub(b.clk.Now()))
	}
	return c
}

// ForceOpen opens the breaker until [Breaker.Reset]: every call is rejected
// with an error that matches [ErrOpen].
func (b *Breaker) ForceOpen() { b.set(ForcedOpen) }

// Disable lets every call through, counting nothing, until [Breaker.Reset].
func (b *Breaker) Disable() { b.set(Disabled) }

// Reset closes the breaker with an empty window, from any state, and forgets
// earlier trips. Reset of a closed breaker, like ForceOpen of a forced-open
// one, is no state change: hooks and the transitions metric do not see it.
func (b *Breaker) Reset() { b.set(Closed) }

func (b *Breaker) set(s State) {
	b.mu.Lock()
	from := b.gen.Load().state
	b.trips = 0
	b.gen.Store(b.newGeneration(s, time.Time{}))
	if from != s { // Reset of a closed breaker empties its window: no state change
		b.changedLocked(from, s)
	}
	b.mu.Unlock()
	b.dispatch()
}

// transition moves from generation g to state to, unless another goroutine
// has already replaced g.
func (b *Breaker) transition(g *generation, to State, now time.Time) {
	b.mu.Lock()
	if b.gen.Load() != g {
		b.mu.Unlock()
		return
	}
	var until time.Time
	switch to {
	case Open:
		until = now.Add(b.openDuration())
		b.trips++
	case Closed:
		b.trips = 0
	}
	b.gen.Store(b.newGeneration(to, until))
	b.changedLocked(g.state, to)
	b.mu.Unlock()
	b.dispatch()
}

// openDuration returns the duration of the next opening: the base duration,
// grown by the factor for each reopening and capped at maxOpen, then spread
// uniformly over ±jitter of itself. The jitter comes after the cap, so that
// it stays two-sided at the cap too: a fleet whose openings have all grown
// to the cap still probes at different times. b.mu is held.
func (b *Breaker) openDuration() time.Duration {
	// Grow and cap in float64: after enough reopenings the growth exceeds
	// the range of a Duration (or is +Inf), and converting it would wrap
	// around.
	d := min(float64(b.cfg.openDuration)*math.Pow(b.cfg.openFactor, float64(b.trips)), float64(b.cfg.maxOpen))
	if j := b.cfg.jitter; j > 0 {
		d *= 1 + j*(2*b.cfg.random()-1)
	}
	if d >= math.MaxInt64 { // 2^63 as a float64, past a Duration: by the jitter, or a cap of MaxInt64 rounded up
		return math.MaxInt64
	}
	return max(time.Duration(d), time.Millisecond)
}

func (b *Breaker) changedLocked(from, to State) {
	b.m.transition(from, to)
	if b.cfg.onStateChange != nil {
		b.events = append(b.events, event{from, to})
	}
}

// dispatch calls the state-change hook for queued events, in order, from
// one goroutine at a time and without holding b.mu, so a hook may call back
// into the breaker. A goroutine that finds another dispatching leaves its
// events to that one.
func (b *Breaker) dispatch() {
	if b.cfg.onStateChange == nil {
		return
	}
	for b.dispatching.CompareAndSwap(false, true) {
		b.drain()
		b.dispatching.Store(false)
		b.mu.Lock()
		more := len(b.events) > 0
		b.mu.Unlock()
		if !more {
			return
		}
	}
}

func (b *Breaker) drain() {
	defer func() {
		if r := recover(); r != nil {
			b.dispatching.Store(false)
			panic(r)
		}
	}()
	for {
		b.mu.Lock()
		if len(b.events) == 0 {
			b.mu.Unlock()
			return
		}
		e := b.events[0]
		b.events = b.events[1:]
		b.mu.Unlock()
		b.cfg.onStateChange(b.name, e.from, e.to)
	}
}
