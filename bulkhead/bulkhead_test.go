package bulkhead

import (
	"context"
	"errors"
	"math/rand/v2"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/bulwark-go/bulwark"
	"github.com/bulwark-go/bulwark/clock"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// acquireAsync starts Acquire in a goroutine and returns the channel its
// result arrives on.
type result struct {
	p   Permit
	err error
}

func acquireAsync(ctx context.Context, b *Bulkhead) <-chan result {
	ch := make(chan result, 1)
	go func() {
		p, err := b.Acquire(ctx)
		ch <- result{p, err}
	}()
	return ch
}

// hold acquires n slots that must be free.
func hold(t *testing.T, b *Bulkhead, n int) []Permit {
	t.Helper()
	ps := make([]Permit, n)
	for i := range ps {
		p, err := b.Acquire(context.Background())
		require.NoError(t, err)
		ps[i] = p
	}
	return ps
}

func requireEmpty(t *testing.T, b *Bulkhead) {
	t.Helper()
	require.Equal(t, 0, b.InFlight(), "in flight")
	require.Equal(t, 0, b.Queued(), "queued")
	require.Zero(t, b.state.Load()&queuedBit, "queued bit")
	require.Nil(t, b.head)
	require.Nil(t, b.tail)
}

// requireCapacity checks that exactly n slots are free: n acquisitions
// succeed at once and the next one does not. It uses a canceled context,
// which takes a free slot but never waits for one, and leaves the bulkhead
// as it found it.
func requireCapacity(t *testing.T, b *Bulkhead, n int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ps := make([]Permit, n)
	for i := range ps {
		p, err := b.Acquire(ctx)
		require.NoError(t, err)
		ps[i] = p
	}
	_, err := b.Acquire(ctx)
	require.Error(t, err)
	if b.queueSize > 0 {
		require.ErrorIs(t, err, context.Canceled)
	} else {
		require.ErrorIs(t, err, ErrFull)
	}
	for i := range ps {
		ps[i].Release()
	}
}

func TestDefaults(t *testing.T) {
	b := New("d")
	require.Equal(t, "d", b.Name())
	require.Equal(t, DefaultLimit, b.Limit())
	requireCapacity(t, b, DefaultLimit)
	requireEmpty(t, b)
}

func TestOptionValidation(t *testing.T) {
	type invalid struct {
		name string
		fn   func()
	}
	cases := []invalid{
		{"negative limit", func() { WithLimit(-1) }},
		{"negative queue", func() { WithQueue(-1) }},
		{"SetLimit negative", func() { New("x").SetLimit(-1) }},
	}
	if strconv.IntSize == 64 { // on 32-bit platforms no int exceeds MaxLimit
		over := int64(MaxLimit) + 1
		cases = append(cases, invalid{"limit too large", func() { WithLimit(int(over)) }})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { require.Panics(t, tc.fn) })
	}
	require.NotPanics(t, func() { New("x", WithLimit(MaxLimit)).SetLimit(0) })
}

func TestRejections(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		opts      []Option
		retryHint time.Duration
	}{
		{"no queue", []Option{WithLimit(1)}, DefaultRetryAfter},
		{"max wait zero disables the queue", []Option{WithLimit(1), WithQueue(4), WithMaxWait(0)}, DefaultRetryAfter},
		{"queue full", []Option{WithLimit(1), WithQueue(1), WithMaxWait(3 * time.Second)}, 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := clock.NewFake(time.Time{})
			b := New("r", append(tc.opts, WithClock(fc))...)
			held := hold(t, b, 1)
			var queued <-chan result
			if b.queueSize > 0 {
				queued = acquireAsync(ctx, b)
				fc.WaitForTimers(1)
			}
			_, err := b.Acquire(ctx)
			require.ErrorIs(t, err, ErrFull)
			require.NotErrorIs(t, err, ErrTimeout)
			re, ok := errors.AsType[*RejectedError](err)
			require.True(t, ok)
			require.Equal(t, "r", re.Name)
			require.Equal(t, `bulkhead "r": full`, err.Error())
			h, ok := bulwark.HintOf(err)
			require.True(t, ok)
			require.Equal(t, bulwark.Hint{RetryAfter: tc.retryHint}, h)

			held[0].Release()
			if queued != nil {
				r := <-queued
				require.NoError(t, r.err)
				r.p.Release()
			}
			requireEmpty(t, b)
			require.Equal(t, 0, fc.Pending())
		})
	}
}

func TestTimeout(t *testing.T) {
	fc := clock.NewFake(time.Time{})
	b := New("t", WithLimit(1), WithQueue(2), WithMaxWait(time.Second), WithClock(fc))
	held := hold(t, b, 1)
	ch := acquireAsync(context.Background(), b)
	fc.WaitForTimers(1)
	require.Equal(t, 1, b.Queued())
	fc.Advance(999 * time.Millisecond)
	require.Equal(t, 1, b.Queued())
	fc.Advance(time.Millisecond)
	r := <-ch
	require.ErrorIs(t, r.err, ErrTimeout)
	require.NotErrorIs(t, r.err, ErrFull)
	require.Equal(t, `bulkhead "t": timed out waiting for a slot`, r.err.Error())
	h, _ := bulwark.HintOf(r.err)
	require.Equal(t, time.Second, h.RetryAfter)
	require.Equal(t, Permit{}, r.p)
	r.p.Release() // the zero permit releases nothing

	require.Equal(t, 1, b.InFlight())
	require.Equal(t, 0, b.Queued())
	held[0].Release()
	requireEmpty(t, b)
	requireCapacity(t, New("c", WithLimit(1)), 1)
}

func TestCancel(t *testing.T) {
	fc := clock.NewFake(time.Time{})
	b := New("c", WithLimit(1), WithQueue(2), WithMaxWait(time.Minute), WithClock(fc))
	held := hold(t, b, 1)

	ctx, cancel := context.WithCancel(context.Background())
	first := acquireAsync(ctx, b)
	fc.WaitForTimers(1)
	second := acquireAsync(context.Background(), b)
	fc.WaitForTimers(2)
	require.Equal(t, 2, b.Queued())

	cancel()
	r := <-first
	require.ErrorIs(t, r.err, context.Canceled)
	require.Contains(t, r.err.Error(), `bulkhead "c"`)
	_, ok := bulwark.HintOf(r.err)
	require.False(t, ok, "a caller's own cancellation carries no hint")
	require.Equal(t, 1, b.Queued())
	require.Equal(t, 1, fc.Pending(), "the canceled waiter stopped its timer")

	// The slot goes to the caller who is still waiting.
	held[0].Release()
	r = <-second
	require.NoError(t, r.err)
	r.p.Release()
	requireEmpty(t, b)
}

func TestContextAlreadyDone(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	past, cancelPast := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancelPast()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		want error
	}{
		{"canceled", canceled, context.Canceled},
		{"deadline passed", past, context.DeadlineExceeded},
		{"deadline passed, timer not fired", deadlineOnly{time.Now().Add(-time.Millisecond)}, context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := clock.NewFake(time.Time{})
			b := New("a", WithLimit(1), WithQueue(1), WithClock(fc))
			held := hold(t, b, 1)
			_, err := b.Acquire(tc.ctx)
			require.ErrorIs(t, err, tc.want)
			require.Equal(t, 0, fc.Created(), "rejected without starting a wait")
			require.Equal(t, 0, b.Queued())
			held[0].Release()
			requireEmpty(t, b)

			// A free slot is taken whatever the context says, as with x/sync/semaphore.
			p, err := b.Acquire(tc.ctx)
			require.NoError(t, err)
			p.Release()
		})
	}
}

// deadlineOnly is a context whose deadline has passed but whose Done channel
// has not been closed yet.
type deadlineOnly struct{ dl time.Time }

func (d deadlineOnly) Deadline() (time.Time, bool) { return d.dl, true }
func (deadlineOnly) Done() <-chan struct{}         { return nil }
func (deadlineOnly) Err() error                    { return nil }
func (deadlineOnly) Value(any) any                 { return nil }

func TestContextDeadlineEndsWait(t *testing.T) {
	// The context's deadline comes before the max wait: the context wins.
	b := New("dl", WithLimit(1), WithQueue(1), WithMaxWait(time.Hour))
	held := hold(t, b, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	_, err := b.Acquire(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	held[0].Release()
	requireEmpty(t, b)
}

func TestFIFO(t *testing.T) {
	const n = 20
	fc := clock.NewFake(time.Time{})
	b := New("f", WithLimit(1), WithQueue(n), WithMaxWait(time.Minute), WithClock(fc))
	held := hold(t, b, 1)
	order := make(chan int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			require.NoError(t, b.Do(context.Background(), func(context.Context) error {
				order <- i
				return nil
			}))
		})
		fc.WaitForTimers(i + 1) // i+1 callers are queued, in order
	}
	require.Equal(t, n, b.Queued())
	held[0].Release()
	wg.Wait()
	close(order)
	want := 0
	for got := range order {
		require.Equal(t, want, got)
		want++
	}
	require.Equal(t, n, want)
	requireEmpty(t, b)
}

func TestNewcomerDoesNotOvertakeQueue(t *testing.T) {
	fc := clock.NewFake(time.Time{})
	b := New("o", WithLimit(1), WithQueue(1), WithMaxWait(time.Minute), WithClock(fc))
	held := hold(t, b, 1)
	ch := acquireAsync(context.Background(), b)
	fc.WaitForTimers(1)
	held[0].Release() // handed to the waiter, never free in between
	require.Equal(t, 1, b.InFlight())
	require.Equal(t, 0, b.Queued())
	requireCapacity(t, b, 0)
	r := <-ch
	require.NoError(t, r.err)
	r.p.Release()
	requireEmpty(t, b)
}

func TestNeverExceedsLimit(t *testing.T) {
	const (
		goroutines = 1000
		limit      = 8
	)
	b := New("hw", WithLimit(limit), WithQueue(goroutines), WithMaxWait(time.Minute))
	var cur, high atomic.Int64
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			err := b.Do(context.Background(), func(context.Context) error {
				n := cur.Add(1)
				for h := high.Load(); n > h && !high.CompareAndSwap(h, n); h = high.Load() {
				}
				runtime.Gosched()
				cur.Add(-1)
				return nil
			})
			require.NoError(t, err)
		})
	}
	wg.Wait()
	require.LessOrEqual(t, high.Load(), int64(limit))
	require.Positive(t, high.Load())
	requireEmpty(t, b)
}

func TestNeverExceedsLimitWithGivingUp(t *testing.T) {
	// Callers that time out or cancel while others are admitted leak no slot.
	const (
		goroutines = 1000
		limit      = 4
	)
	b := New("mix", WithLimit(limit), WithQueue(goroutines/2), WithMaxWait(time.Millisecond))
	var cur, high, ok, full, timeout, canceled atomic.Int64
	var wg sync.WaitGroup
	for i := range goroutines {
		wg.Go(func() {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if i%3 == 0 {
				go cancel()
			}
			err := b.Do(ctx, func(context.Context) error {
				n := cur.Add(1)
				for h := high.Load(); n > h && !high.CompareAndSwap(h, n); h = high.Load() {
				}
				runtime.Gosched()
				cur.Add(-1)
				return nil
			})
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, ErrFull):
				full.Add(1)
			case errors.Is(err, ErrTimeout):
				timeout.Add(1)
			case errors.Is(err, context.Canceled):
				canceled.Add(1)
			default:
				t.Errorf("unexpected error %v", err)
			}
		})
	}
	wg.Wait()
	require.LessOrEqual(t, high.Load(), int64(limit))
	require.Equal(t, int64(goroutines), ok.Load()+full.Load()+timeout.Load()+canceled.Load())
	t.Logf("ok %d, full %d, timeout %d, canceled %d", ok.Load(), full.Load(), timeout.Load(), canceled.Load())
	requireEmpty(t, b)
	requireCapacity(t, b, limit)
}

// raceCtx lets a test make the grant and the cancellation both ready before
// the waiter reaches its select: Done blocks until the test says go.
type raceCtx struct {
	context.Context
	done    chan struct{}
	called  chan struct{}
	proceed chan struct{}
	err     atomic.Pointer[error]
}

func (c *raceCtx) Done() <-chan struct{} {
	close(c.called)
	<-c.proceed
	return c.done
}

func (c *raceCtx) Err() error {
	if e := c.err.Load(); e != nil {
		return *e
	}
	return nil
}

func (c *raceCtx) cancel() {
	err := context.Canceled
	c.err.Store(&err)
	close(c.done)
}

func TestGrantCancelRace(t *testing.T) {
	// Over many rounds the waiter's select sees a grant and a cancellation
	// at once and picks either. Either way no slot is lost or invented.
	fc := clock.NewFake(time.Time{})
	b := New("race", WithLimit(1), WithQueue(1), WithMaxWait(time.Minute), WithClock(fc))
	var won, gaveBack int
	for range 200 {
		held := hold(t, b, 1)
		ctx := &raceCtx{Context: context.Background(), done: make(chan struct{}), called: make(chan struct{}), proceed: make(chan struct{})}
		ch := acquireAsync(ctx, b)
		<-ctx.called // queued, timer started, about to select
		ctx.cancel()
		held[0].Release() // grants the slot to the waiter
		close(ctx.proceed)
		r := <-ch
		if r.err == nil {
			won++
			require.Equal(t, 1, b.InFlight())
			r.p.Release()
		} else {
			gaveBack++
			require.ErrorIs(t, r.err, context.Canceled)
		}
		requireEmpty(t, b)
	}
	require.Positive(t, won)
	require.Positive(t, gaveBack)
	require.Equal(t, float64(gaveBack), testutil.ToFloat64(b.rejectedCanceled))
}

func TestGrantCancelRaceHandsSlotOn(t *testing.T) {
	// A waiter that gives up after being granted passes the slot to the next
	// waiter rather than freeing it to newcomers.
	fc := clock.NewFake(time.Time{})
	b := New("pass", WithLimit(1), WithQueue(2), WithMaxWait(time.Minute), WithClock(fc))
	for {
		held := hold(t, b, 1)
		ctx := &raceCtx{Context: context.Background(), done: make(chan struct{}), called: make(chan struct{}), proceed: make(chan struct{})}
		first := acquireAsync(ctx, b)
		<-ctx.called
		second := acquireAsync(context.Background(), b)
		fc.WaitForTimers(2)
		ctx.cancel()
		held[0].Release()
		close(ctx.proceed)
		r := <-first
		if r.err == nil {
			// The first waiter kept its slot; try again.
			r.p.Release()
			r = <-second
			require.NoError(t, r.err)
			r.p.Release()
			continue
		}
		r = <-second
		require.NoError(t, r.err)
		require.Equal(t, 1, b.InFlight())
		r.p.Release()
		requireEmpty(t, b)
		return
	}
}

func TestConcurrentReleaseAndCancel(t *testing.T) {
	// Stress the same race with real scheduling.
	b := New("stress", WithLimit(2), WithQueue(4), WithMaxWait(time.Minute))
	for range 500 {
		held := hold(t, b, 2)
		ctx, cancel := context.WithCancel(context.Background())
		ch1 := acquireAsync(ctx, b)
		ch2 := acquireAsync(ctx, b)
		var wg sync.WaitGroup
		wg.Go(cancel)
		wg.Go(held[0].Release)
		wg.Go(held[1].Release)
		wg.Wait()
		for _, ch := range []<-chan result{ch1, ch2} {
			r := <-ch
			if r.err == nil {
				r.p.Release()
			} else {
				require.True(t, errors.Is(r.err, context.Canceled) || errors.Is(r.err, ErrFull), r.err)
			}
		}
		requireEmpty(t, b)
	}
}

func TestDoubleRelease(t *testing.T) {
	b := New("dr", WithLimit(2))
	p, err := b.Acquire(context.Background())
	require.NoError(t, err)
	other := hold(t, b, 1)
	p.Release()
	p.Release() // no-op: p was cleared
	require.Equal(t, 1, b.InFlight(), "the other caller's slot is still held")
	require.Equal(t, Permit{}, p)
	other[0].Release()
	requireEmpty(t, b)

	var zero Permit
	zero.Release()
	requireEmpty(t, b)

	// A released copy frees a slot that is not held: caught, not counted.
	p, err = b.Acquire(context.Background())
	require.NoError(t, err)
	cp := p
	p.Release()
	require.Panics(t, cp.Release)
	requireEmpty(t, b)
}

// A release that finds no slot held wraps the in-flight count alone: while
// it is undone, other callers still read the right limit and queued bit.
func TestReleaseBelowZeroKeepsLimitAndQueue(t *testing.T) {
	for _, s := range []uint64{0, queuedBit, 5, queuedBit | MaxLimit} {
		w := s + releaseOne
		require.Equal(t, uint64(belowZero), inFlightOf(w), "%#x", s)
		require.Equal(t, limitOf(s), limitOf(w), "%#x", s)
		require.Equal(t, s&queuedBit, w&queuedBit, "%#x", s)
		require.Equal(t, s, w+oneInFlight, "%#x", s)
	}
}

// A released copy of a permit, with a caller queued and the limit lowered
// to zero: the panic leaves the limit, the queue and the waiter's turn as
// they were.
func TestReleasedCopyWithQueue(t *testing.T) {
	fc := clock.NewFake(time.Time{})
	b := New("copy", WithLimit(1), WithQueue(1), WithMaxWait(time.Hour), WithClock(fc))
	p := hold(t, b, 1)[0]
	cp := p
	ch := acquireAsync(context.Background(), b)
	fc.WaitForTimers(1)
	b.SetLimit(0)
	p.Release()
	require.Panics(t, cp.Release)
	require.Equal(t, 0, b.Limit())
	require.Equal(t, 0, b.InFlight())
	require.Equal(t, 1, b.Queued())
	b.SetLimit(1)
	r := <-ch
	require.NoError(t, r.err)
	require.Equal(t, 1, b.InFlight())
	r.p.Release()
	requireEmpty(t, b)
}

func TestDoReleasesOnPanic(t *testing.T) {
	b := New("p", WithLimit(1))
	require.PanicsWithValue(t, "boom", func() {
		_ = b.Do(context.Background(), func(context.Context) error { panic("boom") })
	})
	requireEmpty(t, b)

	sentinel := errors.New("fn failed")
	require.ErrorIs(t, b.Do(context.Background(), func(context.Context) error { return sentinel }), sentinel)
	requireEmpty(t, b)
}

func TestSetLimitRaiseWakesInFIFOOrder(t *testing.T) {
	fc := clock.NewFake(time.Time{})
	b := New("up", WithLimit(1), WithQueue(3), WithMaxWait(time.Minute), WithClock(fc))
	held := hold(t, b, 1)
	chans := make([]<-chan result, 3)
	for i := range chans {
		chans[i] = acquireAsync(context.Background(), b)
		fc.WaitForTimers(i + 1)
	}
	b.SetLimit(3)
	require.Equal(t, 3, b.Limit())
	require.Equal(t, 3, b.InFlight())
	require.Equal(t, 1, b.Queued())
	r0, r1 := <-chans[0], <-chans[1]
	require.NoError(t, r0.err)
	require.NoError(t, r1.err)

	b.SetLimit(10) // the last waiter gets a slot too
	r2 := <-chans[2]
	require.NoError(t, r2.err)
	require.Equal(t, 4, b.InFlight())
	for _, p := range []*Permit{&held[0], &r0.p, &r1.p, &r2.p} {
		p.Release()
	}
	requireEmpty(t, b)
}

func TestSetLimitLower(t *testing.T) {
	fc := clock.NewFake(time.Time{})
	b := New("down", WithLimit(3), WithQueue(1), WithMaxWait(time.Minute), WithClock(fc))
	held := hold(t, b, 3)
	b.SetLimit(1)
	require.Equal(t, 3, b.InFlight(), "calls in flight finish")
	ch := acquireAsync(context.Background(), b)
	fc.WaitForTimers(1)

	held[0].Release()
	require.Equal(t, 2, b.InFlight())
	require.Equal(t, 1, b.Queued())
	held[1].Release()
	require.Equal(t, 1, b.InFlight())
	require.Equal(t, 1, b.Queued(), "not admitted until in flight < new limit")
	held[2].Release()
	r := <-ch
	require.NoError(t, r.err)
	require.Equal(t, 1, b.InFlight())
	require.Equal(t, 0, b.Queued())
	r.p.Release()
	requireEmpty(t, b)

	b.SetLimit(0)
	requireCapacity(t, b, 0)
	b.SetLimit(2)
	requireCapacity(t, b, 2)
}

func TestSetLimitUnderLoad(t *testing.T) {
	const (
		goroutines = 1000
		maxLimit   = 16
	)
	b := New("load", WithLimit(4), WithQueue(goroutines), WithMaxWait(time.Minute))
	var cur, high atomic.Int64
	var violations atomic.Int64
	stop := make(chan struct{})
	var changer sync.WaitGroup
	changer.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			b.SetLimit(1 + rand.IntN(maxLimit))
			runtime.Gosched()
		}
	})
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			err := b.Do(context.Background(), func(context.Context) error {
				n := cur.Add(1)
				for h := high.Load(); n > h && !high.CompareAndSwap(h, n); h = high.Load() {
				}
				// The bulkhead's own count covers at least this call and
				// never more than the largest limit.
				if f := b.InFlight(); f < 1 || f > maxLimit {
					violations.Add(1)
				}
				runtime.Gosched()
				cur.Add(-1)
				return nil
			})
			require.NoError(t, err)
		})
	}
	wg.Wait()
	close(stop)
	changer.Wait()
	require.Zero(t, violations.Load())
	require.LessOrEqual(t, high.Load(), int64(maxLimit))
	requireEmpty(t, b)

	// No slot lost or invented: exactly the limit is admitted.
	for _, n := range []int{1, 7, maxLimit} {
		b.SetLimit(n)
		requireCapacity(t, b, n)
	}
}

func TestZeroAllocsWhenFree(t *testing.T) {
	b := New("alloc", WithLimit(4))
	ctx := context.Background()
	allocs := testing.AllocsPerRun(1000, func() {
		p, err := b.Acquire(ctx)
		if err != nil {
			panic(err)
		}
		p.Release()
	})
	require.Zero(t, allocs)
	allocs = testing.AllocsPerRun(1000, func() {
		_ = b.Do(ctx, func(context.Context) error { return nil })
	})
	require.Zero(t, allocs)
	held := hold(t, b, 4)
	allocs = testing.AllocsPerRun(1000, func() { _, _ = b.Acquire(ctx) })
	require.Zero(t, allocs, "rejecting when full does not allocate either")
	for i := range held {
		held[i].Release()
	}
}

// pausingCtx blocks in Deadline, the last thing Acquire asks before it takes
// the lock to queue, until the test lets it go on.
type pausingCtx struct {
	context.Context
	called, proceed chan struct{}
}

func (c pausingCtx) Deadline() (time.Time, bool) {
	close(c.called)
	<-c.proceed
	return time.Time{}, false
}

func TestSlotFreedBeforeQueueing(t *testing.T) {
	// A slot freed after the fast path failed, but before the caller took
	// the lock, is taken instead of queueing.
	fc := clock.NewFake(time.Time{})
	b := New("gap", WithLimit(1), WithQueue(1), WithClock(fc))
	held := hold(t, b, 1)
	ctx := pausingCtx{context.Background(), make(chan struct{}), make(chan struct{})}
	ch := acquireAsync(ctx, b)
	<-ctx.called
	held[0].Release()
	close(ctx.proceed)
	r := <-ch
	require.NoError(t, r.err)
	require.Equal(t, 0, fc.Created(), "no wait began")
	r.p.Release()
	requireEmpty(t, b)
}
