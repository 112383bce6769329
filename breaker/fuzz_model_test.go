package breaker

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/bulwark-go/bulwark/clock"
)

// refBreaker is the reference model FuzzStateMachine checks a Breaker
// against: the documented state machine written as plainly as possible,
// for one goroutine and a fake clock, with no atomics, no generations shared
// by pointer and no ring arithmetic.
//
// A late outcome of an ended period is counted but recorded nowhere: the
// count window holds exactly the last N outcomes of the current period.
type refBreaker struct {
	cfg   config
	timed bool

	state State
	gen   int // bumped by every change of state
	until time.Time
	trips int

	seq         uint64          // closed-state outcomes recorded in current periods
	ring        map[uint64]slot // count window: seq mod N -> outcome, this period
	events      []timedOutcome  // time window: outcomes of this period
	consecutive int64
	probes      int64
	successes   int64
}

type slot struct{ failed, slow bool }

type timedOutcome struct {
	bucket int64
	slot
}

type refPermit struct {
	gen   int
	state State
	start time.Time
}

func newRef(cfg config) *refBreaker {
	r := &refBreaker{cfg: cfg, timed: cfg.slowThreshold > 0 || cfg.windowDuration > 0}
	r.enter(Closed, time.Time{})
	return r
}

func (r *refBreaker) enter(s State, until time.Time) {
	r.state, r.until = s, until
	r.gen++
	r.ring, r.events = map[uint64]slot{}, nil
	r.consecutive, r.probes, r.successes = 0, 0, 0
}

func (r *refBreaker) open(now time.Time) {
	d := min(float64(r.cfg.openDuration)*math.Pow(r.cfg.openFactor, float64(r.trips)), float64(r.cfg.maxOpen))
	dur := max(time.Duration(d), time.Millisecond)
	r.trips++
	r.enter(Open, now.Add(dur))
}

func (r *refBreaker) set(s State) {
	r.trips = 0
	r.enter(s, time.Time{})
}

// observe moves an open breaker whose time is up to half-open, as State,
// Counts and Allow do.
func (r *refBreaker) observe(now time.Time) State {
	if r.state == Open && !now.Before(r.until) {
		r.enter(HalfOpen, time.Time{})
	}
	return r.state
}

// allow returns the permit, or the rejecting state and the retry-after.
func (r *refBreaker) allow(now time.Time) (refPermit, bool, State, time.Duration) {
	switch r.observe(now) {
	case Closed, Disabled:
		return refPermit{gen: r.gen, state: r.state, start: now}, true, 0, 0
	case HalfOpen:
		if r.probes+1 > int64(r.cfg.probes) {
			return refPermit{}, false, HalfOpen, 0
		}
		r.probes++
		return refPermit{gen: r.gen, state: HalfOpen, start: now}, true, 0, 0
	case Open:
		return refPermit{}, false, Open, r.until.Sub(now)
	}
	return refPermit{}, false, ForcedOpen, 0
}

func (r *refBreaker) tally(now time.Time) (calls, failures, slow int64) {
	if r.cfg.windowDuration > 0 {
		head := now.UnixNano() / (int64(r.cfg.windowDuration) / int64(r.cfg.windowBuckets))
		for _, e := range r.events {
			if e.bucket > head-int64(r.cfg.windowBuckets) {
				calls++
				failures += b2i(e.failed)
				slow += b2i(e.slow)
			}
		}
		return
	}
	for _, s := range r.ring {
		calls++
		failures += b2i(s.failed)
		slow += b2i(s.slow)
	}
	return
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

func (r *refBreaker) report(p refPermit, o Outcome, now time.Time) {
	current := p.gen == r.gen
	if o == Ignored {
		if current && p.state == HalfOpen {
			r.probes--
		}
		return
	}
	failed := o == Failure
	slow := r.cfg.slowThreshold > 0 && p.state != Disabled && now.Sub(p.start) >= r.cfg.slowThreshold
	switch p.state {
	case Closed:
		if !current {
			return
		}
		r.seq++
		if r.cfg.windowDuration > 0 {
			r.events = append(r.events, timedOutcome{now.UnixNano() / (int64(r.cfg.windowDuration) / int64(r.cfg.windowBuckets)), slot{failed, slow}})
		} else {
			r.ring[(r.seq-1)%uint64(r.cfg.windowSize)] = slot{failed, slow}
		}
		if !failed {
			r.consecutive = 0
		} else if r.cfg.consecutive > 0 {
			r.consecutive++
			if r.consecutive >= int64(r.cfg.consecutive) {
				r.open(now)
				return
			}
		}
		calls, failures, slows := r.tally(now)
		if calls >= int64(r.cfg.minCalls) && (float64(failures) >= r.cfg.failureRate*float64(calls) ||
			(r.cfg.slowThreshold > 0 && float64(slows) >= r.cfg.slowRate*float64(calls))) {
			r.open(now)
		}
	case HalfOpen:
		if !current {
			return
		}
		if failed || slow {
			r.open(now)
			return
		}
		r.probes--
		r.successes++
		if r.successes >= int64(r.cfg.closeAfter) {
			r.trips = 0
			r.enter(Closed, time.Time{})
		}
	}
}

// fuzzConfig turns c into a breaker configuration, each field from its own
// bits.
func fuzzConfig(c uint64) []Option {
	rates := [...]float64{0.25, 0.5, 0.75, 1}
	opts := []Option{WithJitter(0), WithOpenDuration(time.Second),
		WithFailureRate(rates[c&3], 1+int(c>>2&7)),
		WithHalfOpen(1+int(c>>5&3), 1+int(c>>7&3))}
	if c>>9&1 == 0 {
		opts = append(opts, WithCountWindow(1+int(c>>10&15)))
	} else {
		opts = append(opts, WithTimeWindow(time.Duration(1+c>>10&7)*time.Second, 1+int(c>>13&7)))
	}
	if k := int(c >> 16 & 7); k > 0 {
		opts = append(opts, WithConsecutiveFailures(k))
	}
	if c>>19&1 == 1 {
		opts = append(opts, WithSlowCalls(time.Duration(1+c>>20&3)*100*time.Millisecond, rates[c>>22&3]))
	}
	if c>>24&1 == 1 {
		opts = append(opts, WithGrowingOpenDuration(2, 5*time.Second))
	}
	return opts
}

// FuzzStateMachine drives a Breaker on a fake clock with a sequence of
// operations — admit a call, report a pending call's outcome (success,
// failure, ignored; in any order, late ones included), move the clock,
// reset, force open, disable — and checks every answer, state and count
// against refBreaker.
func FuzzStateMachine(f *testing.F) {
	// Operation bytes, two per operation: see the switch below.
	f.Add(uint64(0), []byte{0, 0, 0, 0, 3, 1, 3, 1, 3, 1, 6, 0, 5, 150, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0, 3, 0, 6, 0})
	f.Add(uint64(1<<19|1<<9|3<<10), []byte{0, 0, 5, 20, 3, 0, 0, 0, 5, 30, 3, 0, 0, 0, 3, 1, 6, 0, 5, 200, 0, 0, 5, 50, 3, 0, 6, 0})
	f.Add(uint64(2<<16|1<<24), []byte{0, 0, 0, 0, 3, 1, 3, 1, 6, 0, 5, 100, 0, 0, 3, 1, 6, 0, 5, 250, 0, 0, 3, 1, 6, 0, 7, 0, 6, 0})
	f.Add(uint64(3<<5|2<<7), []byte{0, 0, 3, 1, 5, 100, 0, 0, 0, 0, 0, 0, 0, 0, 3, 2, 11, 0, 19, 0, 6, 0, 7, 1, 0, 0, 7, 2, 0, 0, 3, 1, 7, 3})
	f.Add(uint64(1<<2|1<<10), []byte{0, 0, 0, 0, 8, 1, 5, 120, 0, 0, 3, 0, 3, 0, 0, 0, 3, 0, 6, 0})
	f.Fuzz(func(t *testing.T, conf uint64, ops []byte) {
		if len(ops) > 400 {
			ops = ops[:400]
		}
		clk := clock.NewFake(time.Time{})
		b := New("fuzz", append(fuzzConfig(conf), WithClock(clk))...)
		ref := newRef(b.cfg)
		type pending struct {
			p   Permit
			ref refPermit
		}
		var calls []pending
		check := func(step int) {
			t.Helper()
			now := clk.Now()
			want := ref.observe(now)
			if got := b.State(); got != want {
				t.Fatalf("step %d: state %v, model %v", step, got, want)
			}
			c := b.Counts()
			switch want {
			case Closed:
				calls, failures, slow := ref.tally(now)
				if c.Calls != calls || c.Failures != failures || c.Slow != slow || c.ConsecutiveFailures != ref.consecutive {
					t.Fatalf("step %d: counts %+v, model calls %d failures %d slow %d consecutive %d",
						step, c, calls, failures, slow, ref.consecutive)
				}
			case HalfOpen:
				if c.Probes != ref.probes || c.ProbeSuccesses != ref.successes {
					t.Fatalf("step %d: counts %+v, model probes %d successes %d", step, c, ref.probes, ref.successes)
				}
			case Open:
				if c.RetryAfter != ref.until.Sub(now) {
					t.Fatalf("step %d: retry after %v, model %v", step, c.RetryAfter, ref.until.Sub(now))
				}
			}
		}
		for i := 0; i+1 < len(ops); i += 2 {
			op, arg := ops[i], ops[i+1]
			switch op % 8 {
			case 0, 1, 2:
				now := clk.Now()
				p, err := b.Allow()
				rp, ok, rejState, retryAfter := ref.allow(now)
				if (err == nil) != ok {
					t.Fatalf("step %d: Allow error %v, model admits %v", i, err, ok)
				}
				if ok {
					calls = append(calls, pending{p, rp})
					break
				}
				var oe *OpenError
				if !errors.As(err, &oe) || oe.State != rejState || oe.RetryAfter != retryAfter {
					t.Fatalf("step %d: rejection %#v, model state %v retry after %v", i, err, rejState, retryAfter)
				}
				if errors.Is(err, ErrHalfOpenFull) != (rejState == HalfOpen) {
					t.Fatalf("step %d: %v does not match the model's sentinel", i, err)
				}
			case 3, 4:
				if len(calls) == 0 {
					break
				}
				j := int(op/8) % len(calls)
				o := Outcome(arg % 3)
				c := calls[j]
				calls = append(calls[:j], calls[j+1:]...)
				c.p.Report(o)
				ref.report(c.ref, o, clk.Now())
			case 5:
				clk.Advance(time.Duration(arg) * 10 * time.Millisecond)
			case 6:
				// Only a check.
			case 7:
				switch arg % 16 {
				case 0:
					b.Reset()
					ref.set(Closed)
				case 1:
					b.ForceOpen()
					ref.set(ForcedOpen)
				case 2:
					b.Disable()
					ref.set(Disabled)
				default:
					clk.Advance(time.Duration(arg) * time.Millisecond)
				}
			}
			check(i)
		}
	})
}
