package breaker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwark-go/bulwark"
	"github.com/bulwark-go/bulwark/clock"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var errBoom = errors.New("boom")

// feed reports one admitted call per letter: s success, f failure,
// i ignored, S slow success (the fake clock moves 2s during the call).
func feed(t *testing.T, b *Breaker, clk *clock.Fake, script string) {
	t.Helper()
	for i, c := range script {
		p, err := b.Allow()
		require.NoError(t, err, "call %d (%q) rejected in %v", i, c, b.State())
		switch c {
		case 's':
			p.Done(nil)
		case 'f':
			p.Done(errBoom)
		case 'i':
			p.Done(context.Canceled)
		case 'S':
			clk.Advance(2 * time.Second)
			p.Done(nil)
		default:
			t.Fatalf("bad script letter %q", c)
		}
	}
}

func newTest(opts ...Option) (*Breaker, *clock.Fake) {
	clk := clock.NewFake(time.Time{})
	opts = append([]Option{WithClock(clk), WithJitter(0)}, opts...)
	return New("test", opts...), clk
}

func TestStateMachine(t *testing.T) {
	tests := []struct {
		name   string
		opts   []Option
		script string
		want   State
	}{
		{"below min calls never trips", []Option{WithFailureRate(0.5, 10)}, "fffffffff", Closed},
		{"trips at min calls", []Option{WithFailureRate(0.5, 10)}, "ffffffffff", Open},
		{"rate just below threshold", []Option{WithFailureRate(0.5, 10)}, "sfsfsfsfss", Closed},
		{"rate exactly at threshold", []Option{WithFailureRate(0.5, 10)}, "sfsfsfsfsf", Open},
		{"success reaching min calls trips a failing window", []Option{WithFailureRate(0.5, 4)}, "fffs", Open},
		{"ignored calls do not count", []Option{WithFailureRate(0.5, 4)}, "fiiisss", Closed},
		{"count window forgets old failures", []Option{WithCountWindow(4), WithFailureRate(0.75, 4)}, "ffsssssfsfs", Closed},
		{"count window trips on recent failures", []Option{WithCountWindow(4), WithFailureRate(0.75, 4)}, "ssssfff", Open},
		{"consecutive failures", []Option{WithFailureRate(1, 100), WithConsecutiveFailures(3)}, "ffsfff", Open},
		{"consecutive broken by success", []Option{WithFailureRate(1, 100), WithConsecutiveFailures(3)}, "ffsffsff", Closed},
		{"slow calls trip", []Option{WithFailureRate(1, 4), WithSlowCalls(time.Second, 0.5)}, "sSsS", Open},
		{"slow calls below rate", []Option{WithFailureRate(1, 4), WithSlowCalls(time.Second, 0.75)}, "sSsS", Closed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, clk := newTest(tt.opts...)
			feed(t, b, clk, tt.script)
			require.Equal(t, tt.want, b.State())
		})
	}
}

func TestOpenRejectsWithTimeLeft(t *testing.T) {
	b, clk := newTest(WithFailureRate(0.5, 2), WithOpenDuration(10*time.Second))
	feed(t, b, clk, "ff")
	require.Equal(t, Open, b.State())

	clk.Advance(4 * time.Second)
	_, err := b.Allow()
	require.ErrorIs(t, err, ErrOpen)
	require.NotErrorIs(t, err, ErrHalfOpenFull)
	var oe *OpenError
	require.ErrorAs(t, err, &oe)
	require.Equal(t, 6*time.Second, oe.RetryAfter)
	h, ok := bulwark.HintOf(fmt.Errorf("calling payments: %w", err))
	require.True(t, ok)
	require.Equal(t, bulwark.Hint{RetryAfter: 6 * time.Second}, h)
	require.Equal(t, 6*time.Second, b.Counts().RetryAfter)

	clk.Advance(6*time.Second - time.Nanosecond)
	_, err = b.Allow()
	require.ErrorIs(t, err, ErrOpen)

	// State reports half-open as soon as the duration has passed, with no call.
	clk.Advance(time.Nanosecond)
	require.Equal(t, HalfOpen, b.State())
}

func TestHalfOpenAdmitsExactlyP(t *testing.T) {
	const probes = 3
	b, clk := newTest(WithFailureRate(0.5, 1), WithOpenDuration(time.Second), WithHalfOpen(probes, 2))
	feed(t, b, clk, "f")
	clk.Advance(time.Second)

	var admitted, full atomic.Int64
	permits := make(chan Permit, 100)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			p, err := b.Allow()
			if err != nil {
				if errors.Is(err, ErrHalfOpenFull) {
					full.Add(1)
				}
				return
			}
			admitted.Add(1)
			permits <- p
		}()
	}
	close(start)
	wg.Wait()
	require.EqualValues(t, probes, admitted.Load())
	require.EqualValues(t, 100-probes, full.Load())
	require.Equal(t, HalfOpen, b.State())

	// One success of two needed: still half-open; a finished probe frees a slot.
	(<-permits).Done(nil)
	require.Equal(t, HalfOpen, b.State())
	require.EqualValues(t, 1, b.Counts().ProbeSuccesses)
	p, err := b.Allow()
	require.NoError(t, err)
	_, err = b.Allow()
	require.ErrorIs(t, err, ErrHalfOpenFull)
	p.Done(context.Canceled) // ignored: frees the slot, counts nothing
	require.EqualValues(t, 1, b.Counts().ProbeSuccesses)

	(<-permits).Done(nil)
	require.Equal(t, Closed, b.State())
	// The last probe of the old half-open generation is stale: it must not
	// count in the new closed window.
	(<-permits).Done(errBoom)
	require.Equal(t, Closed, b.State())
	require.Zero(t, b.Counts().Calls)
}

func TestHalfOpenFailureReopens(t *testing.T) {
	b, clk := newTest(WithFailureRate(0.5, 1), WithOpenDuration(time.Second), WithHalfOpen(2, 2))
	feed(t, b, clk, "f")
	clk.Advance(time.Second)
	feed(t, b, clk, "s")
	require.Equal(t, HalfOpen, b.State())
	feed(t, b, clk, "f")
	require.Equal(t, Open, b.State())
	require.Equal(t, time.Second, b.Counts().RetryAfter)
}

func TestSlowProbeReopens(t *testing.T) {
	b, clk := newTest(WithFailureRate(1, 1), WithSlowCalls(time.Second, 1), WithOpenDuration(time.Second))
	feed(t, b, clk, "S")
	require.Equal(t, Open, b.State())
	clk.Advance(time.Second)
	feed(t, b, clk, "S")
	require.Equal(t, Open, b.State())
}

func TestGrowingOpenDurationCaps(t *testing.T) {
	b, clk := newTest(WithFailureRate(0.5, 1), WithOpenDuration(time.Second),
		WithGrowingOpenDuration(2, 5*time.Second), WithHalfOpen(1, 1))
	feed(t, b, clk, "f")
	var got []time.Duration
	for range 5 {
		d := b.Counts().RetryAfter
		got = append(got, d)
		clk.Advance(d)
		feed(t, b, clk, "f") // the probe fails: reopen for longer
	}
	require.Equal(t, []time.Duration{1, 2, 4, 5, 5}, scale(got, time.Second))

	// Closing resets the growth.
	clk.Advance(5 * time.Second)
	feed(t, b, clk, "s")
	require.Equal(t, Closed, b.State())
	feed(t, b, clk, "f")
	require.Equal(t, time.Second, b.Counts().RetryAfter)
}

func scale(ds []time.Duration, unit time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d / unit
	}
	return out
}

func TestJitterSpreadsOpenDuration(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	seen := map[time.Duration]bool{}
	for range 50 {
		b := New("j", WithClock(clk), WithFailureRate(0.5, 1), WithOpenDuration(10*time.Second), WithJitter(0.2))
		p, _ := b.Allow()
		p.Done(errBoom)
		d := b.Counts().RetryAfter
		require.GreaterOrEqual(t, d, 8*time.Second)
		require.LessOrEqual(t, d, 12*time.Second)
		seen[d] = true
	}
	require.Greater(t, len(seen), 10, "jitter should spread open durations")
}

// withSeed makes the jitter draw from a source seeded with seed, so that a
// test of its distribution is deterministic. Breakers given the same Option
// share the source: use them from one goroutine.
func withSeed(seed uint64) Option {
	r := rand.New(rand.NewPCG(seed, seed))
	return func(c *config) { c.random = r.Float64 }
}

// The jitter is ±fraction, as WithJitter says: about as many openings are
// longer than the base as shorter, and the base itself is no more likely
// than any other nanosecond. (Capping the jittered duration at the base
// used to turn every upward draw into exactly the base.)
func TestJitterIsTwoSided(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	const base, n = 10 * time.Second, 1000
	seed := withSeed(1)
	above, below, exact := 0, 0, 0
	for range n {
		b := New("j", WithClock(clk), WithFailureRate(0.5, 1), WithOpenDuration(base), WithJitter(0.2), seed)
		p, _ := b.Allow()
		p.Done(errBoom)
		d := b.Counts().RetryAfter
		require.GreaterOrEqual(t, d, 8*time.Second)
		require.LessOrEqual(t, d, 12*time.Second)
		switch {
		case d > base:
			above++
		case d < base:
			below++
		default:
			exact++
		}
	}
	require.Positive(t, above, "no open duration above the base: jitter is one-sided (%d of %d exactly 10s)", exact, n)
	// Each side is a fair coin over n draws: 400 is 6 standard deviations
	// below the mean. One draw in 4e9 lands on a given nanosecond.
	require.Greater(t, above, 400, "above %d, below %d, exact %d", above, below, exact)
	require.Greater(t, below, 400, "above %d, below %d, exact %d", above, below, exact)
	require.Zero(t, exact, "open durations exactly at the base")
}

func TestForcedOpenAndDisabled(t *testing.T) {
	b, clk := newTest(WithFailureRate(0.5, 1))
	b.ForceOpen()
	_, err := b.Allow()
	require.ErrorIs(t, err, ErrOpen)
	var oe *OpenError
	require.ErrorAs(t, err, &oe)
	require.Equal(t, ForcedOpen, oe.State)
	clk.Advance(time.Hour)
	require.Equal(t, ForcedOpen, b.State(), "forced open does not expire")

	b.Disable()
	feed(t, b, clk, "ffffffffff")
	require.Equal(t, Disabled, b.State())
	require.Zero(t, b.Counts().Calls)

	b.Reset()
	require.Equal(t, Closed, b.State())
	feed(t, b, clk, "f")
	require.Equal(t, Open, b.State())
}

func TestStaleGenerationIsDropped(t *testing.T) {
	b, clk := newTest(WithFailureRate(0.5, 2), WithOpenDuration(time.Second), WithHalfOpen(1, 1))
	early, err := b.Allow() // admitted while closed
	require.NoError(t, err)
	feed(t, b, clk, "ff")
	require.Equal(t, Open, b.State())
	clk.Advance(time.Second)
	feed(t, b, clk, "s")
	require.Equal(t, Closed, b.State())

	// The early call fails now, after two transitions: it belongs to the
	// first closed period and must not count in this one.
	early.Done(errBoom)
	require.Zero(t, b.Counts().Calls)
	feed(t, b, clk, "f")
	require.Equal(t, Closed, b.State(), "a single failure is below min calls")
}

func TestTimeWindow(t *testing.T) {
	b, clk := newTest(WithTimeWindow(10*time.Second, 10), WithFailureRate(0.5, 4))
	feed(t, b, clk, "fff")
	clk.Advance(11 * time.Second) // the three failures leave the window
	feed(t, b, clk, "sss")
	require.Equal(t, Closed, b.State())
	require.EqualValues(t, 3, b.Counts().Calls)
	clk.Advance(5 * time.Second)
	feed(t, b, clk, "ff")
	require.EqualValues(t, 5, b.Counts().Calls)
	require.Equal(t, Closed, b.State())
	feed(t, b, clk, "f")
	require.Equal(t, Open, b.State())
}

func TestTimeWindowBuckets(t *testing.T) {
	w := newTimeWindow(4*time.Second, 4, new(atomic.Uint64))
	t0 := 1000 * time.Second // since the breaker's epoch
	w.record(t0, true, false)
	w.record(t0+time.Second, false, true)
	w.record(t0+2*time.Second, true, false)
	require.Equal(t, tally{3, 2, 1}, w.tally(t0+3*time.Second))
	require.Equal(t, tally{2, 1, 1}, w.tally(t0+4*time.Second))
	// A call that ended earlier than the window is not counted.
	require.Equal(t, tally{2, 1, 1}, w.record(t0, true, false))
	// A late call still inside the window counts in its own bucket.
	require.Equal(t, tally{3, 2, 1}, w.record(t0+1500*time.Millisecond, true, false))
	require.Equal(t, tally{1, 1, 0}, w.tally(t0+5*time.Second))
	require.Equal(t, tally{}, w.tally(t0+time.Hour))
}

func TestDo(t *testing.T) {
	b, _ := newTest(WithFailureRate(0.5, 3))
	require.NoError(t, b.Do(context.Background(), func(context.Context) error { return nil }))
	require.ErrorIs(t, b.Do(context.Background(), func(context.Context) error { return errBoom }), errBoom)
	require.EqualValues(t, 2, b.Counts().Calls)

	// The caller's own cancellation is not the dependency's failure, even
	// when fn wraps it into something the classifier would count.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := b.Do(ctx, func(ctx context.Context) error { return fmt.Errorf("request: %w", errors.New("socket closed")) })
	require.Error(t, err)
	require.EqualValues(t, 2, b.Counts().Calls)

	// A panic counts as a failure and is raised again.
	require.PanicsWithValue(t, "kaboom", func() {
		_ = b.Do(context.Background(), func(context.Context) error { panic("kaboom") })
	})
	require.Equal(t, Open, b.State())
	called := false
	err = b.Do(context.Background(), func(context.Context) error { called = true; return nil })
	require.ErrorIs(t, err, ErrOpen)
	require.False(t, called)
}

func TestClassifier(t *testing.T) {
	notFound := errors.New("not found")
	b, clk := newTest(WithFailureRate(0.5, 2), WithClassifier(func(err error) Outcome {
		if errors.Is(err, notFound) {
			return Success
		}
		return DefaultClassifier(err)
	}))
	for range 10 {
		p, err := b.Allow()
		require.NoError(t, err)
		p.Done(notFound)
	}
	require.Equal(t, Closed, b.State())
	p, _ := b.Allow()
	p.Report(Failure)
	require.EqualValues(t, 1, b.Counts().Failures)
	_ = clk
	require.Equal(t, Success, DefaultClassifier(nil))
	require.Equal(t, Ignored, DefaultClassifier(fmt.Errorf("x: %w", context.Canceled)))
	require.Equal(t, Failure, DefaultClassifier(context.DeadlineExceeded))
	var zero Permit
	zero.Done(errBoom) // the zero permit reports nothing and does not panic
}

func TestHookMayCallBackWithoutDeadlock(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	var (
		b   *Breaker
		log []string
	)
	b = New("hooked", WithClock(clk), WithJitter(0), WithFailureRate(0.5, 1), WithOpenDuration(time.Second), WithHalfOpen(1, 1),
		OnStateChange(func(name string, from, to State) {
			// Everything a hook may reasonably do, including changing the state.
			log = append(log, fmt.Sprintf("%s:%v->%v(now %v, calls %d)", name, from, to, b.State(), b.Counts().Calls))
			if to == Closed && from == HalfOpen {
				b.ForceOpen()
			}
		}))
	feed(t, b, clk, "f")
	clk.Advance(time.Second)
	feed(t, b, clk, "s")
	require.Equal(t, []string{
		"hooked:closed->open(now open, calls 0)",
		"hooked:open->half_open(now half_open, calls 0)",
		"hooked:half_open->closed(now closed, calls 0)",
		"hooked:closed->forced_open(now forced_open, calls 0)",
	}, log)
}

func TestHookCalledInOrderUnderConcurrency(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	var mu sync.Mutex
	var seen []event
	b := New("c", WithClock(clk), WithJitter(0), WithCountWindow(10), WithFailureRate(0.3, 5), WithOpenDuration(time.Millisecond), WithHalfOpen(4, 2),
		OnStateChange(func(_ string, from, to State) {
			mu.Lock()
			seen = append(seen, event{from, to})
			mu.Unlock()
		}))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for range 2000 {
				if r.IntN(10) == 0 {
					clk.Advance(time.Millisecond)
				}
				if p, err := b.Allow(); err == nil {
					if r.IntN(2) == 0 {
						p.Done(errBoom)
					} else {
						p.Done(nil)
					}
				}
			}
		}()
	}
	wg.Wait()
	b.State()
	mu.Lock()
	defer mu.Unlock()
	require.NotEmpty(t, seen)
	// Delivered in order: each change starts where the previous one ended.
	require.Equal(t, Closed, seen[0].from)
	for i := 1; i < len(seen); i++ {
		require.Equal(t, seen[i-1].to, seen[i].from, "event %d", i)
	}
}

func TestConcurrentTotals(t *testing.T) {
	const goroutines, calls = 64, 10000
	b, _ := newTest(WithCountWindow(1000), WithFailureRate(1, 1000000))
	var wg sync.WaitGroup
	var failures atomic.Int64
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 2))
			for range calls {
				p, err := b.Allow()
				if err != nil {
					t.Error(err)
					return
				}
				if r.IntN(4) == 0 {
					failures.Add(1)
					p.Done(errBoom)
				} else {
					p.Done(nil)
				}
			}
		}()
	}
	wg.Wait()
	g := b.gen.Load()
	w := g.win.(*countWindow)
	require.EqualValues(t, goroutines*calls, b.seq.Load())
	// The running totals equal what the ring holds.
	var ringFailures int64
	for i := range w.slots {
		if w.slots[i].Load()&slotFailure != 0 {
			ringFailures++
		}
	}
	c := b.Counts()
	require.EqualValues(t, 1000, c.Calls)
	require.Equal(t, ringFailures, c.Failures)
	require.Equal(t, Closed, c.State)
}

func TestConcurrentTripsAndProbes(t *testing.T) {
	// Many goroutines drive the breaker through all its states; no half-open
	// period may ever run more than its probe limit at once.
	clk := clock.NewFake(time.Time{})
	const probes = 2
	b := New("race", WithClock(clk), WithFailureRate(0.5, 10), WithCountWindow(20),
		WithOpenDuration(time.Millisecond), WithHalfOpen(probes, 3), WithSlowCalls(time.Hour, 1))
	var running sync.Map // *generation -> *atomic.Int64 probes running in it
	var worst, periods atomic.Int64
	var wg sync.WaitGroup
	for g := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 3))
			for range 2000 {
				if r.IntN(50) == 0 {
					clk.Advance(time.Millisecond)
				}
				p, err := b.Allow()
				if err != nil {
					continue
				}
				var n *atomic.Int64
				if p.g.state == HalfOpen {
					v, loaded := running.LoadOrStore(p.g, new(atomic.Int64))
					if !loaded {
						periods.Add(1)
					}
					n = v.(*atomic.Int64)
					if c := n.Add(1); c > worst.Load() {
						worst.Store(c) // racy max is fine: any c > probes fails below
						if c > probes {
							t.Errorf("half-open period ran %d probes at once", c)
						}
					}
				}
				outcome := error(nil)
				if r.IntN(2) == 0 {
					outcome = errBoom
				}
				if n != nil {
					n.Add(-1) // leave before reporting: the report may admit the next
				}
				p.Done(outcome)
			}
		}()
	}
	wg.Wait()
	require.Positive(t, periods.Load(), "the scenario should reach half-open")
	require.LessOrEqual(t, worst.Load(), int64(probes))
}

func TestStateString(t *testing.T) {
	require.Equal(t, "half_open", HalfOpen.String())
	require.Equal(t, "unknown", State(42).String())
}

// A late outcome of an ended closed period must not take a place in the
// current window: the window still holds exactly the last N calls.
func TestStaleOutcomeKeepsWindowExact(t *testing.T) {
	b, clk := newTest(WithCountWindow(4), WithFailureRate(1, 4), WithOpenDuration(time.Second), WithHalfOpen(1, 1))
	late, err := b.Allow()
	require.NoError(t, err)
	b.ForceOpen()
	b.Reset() // a new closed period
	feed(t, b, clk, "sfff")
	require.Equal(t, Closed, b.State(), "3 failures of 4 is below the rate of 1")
	late.Done(errBoom) // belongs to the first closed period
	feed(t, b, clk, "f")
	// The last four calls are f f f f: the success has left the window.
	require.Equal(t, Open, b.State())
}
