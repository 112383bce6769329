package retry

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/bulwark-go/bulwark"
	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/clock"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var errBoom = errors.New("boom")

func zeroBackOff() backoff.BackOff { return &backoff.ZeroBackOff{} }

func constBackOff(d time.Duration) func() backoff.BackOff {
	return func() backoff.BackOff { return backoff.NewConstantBackOff(d) }
}

// failing returns a function that fails its first n calls with err and then
// succeeds, and the counter of its calls.
func failing(n int64, err error) (func(context.Context) error, *atomic.Int64) {
	var calls atomic.Int64
	return func(context.Context) error {
		if calls.Add(1) <= n {
			return err
		}
		return nil
	}, &calls
}

func requireRetryError(t *testing.T, err error, attempts int, reason Reason) *Error {
	t.Helper()
	re, ok := errors.AsType[*Error](err)
	require.True(t, ok, "want *retry.Error, got %T %v", err, err)
	require.Equal(t, attempts, re.Attempts)
	require.Equal(t, reason, re.Reason, "reason %v", re.Reason)
	return re
}

func TestAttemptsMeansTotalCalls(t *testing.T) {
	for _, n := range []int{1, 2, 3, 5, 10} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			t.Parallel()
			p := New("t", WithMaxAttempts(n), WithBackOff(zeroBackOff), WithBudget(nil))
			fn, calls := failing(1000, errBoom)
			err := p.Do(context.Background(), fn)
			require.EqualValues(t, n, calls.Load())
			requireRetryError(t, err, n, Exhausted)
			require.ErrorIs(t, err, errBoom)
		})
	}
}

func TestDefaultsMakeThreeAttemptsWithGrowingJitteredWaits(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	var delays []time.Duration
	p := New("t", WithClock(clk), WithOnRetry(func(_ int, _ error, d time.Duration) { delays = append(delays, d) }))
	fn, calls := failing(1000, errBoom)
	done := make(chan error)
	go func() { done <- p.Do(context.Background(), fn) }()
	for range 2 {
		clk.WaitForTimers(1)
		clk.Advance(time.Second)
	}
	err := <-done
	require.EqualValues(t, 3, calls.Load())
	requireRetryError(t, err, 3, Exhausted)
	require.Len(t, delays, 2)
	require.InDelta(t, 100*time.Millisecond, delays[0], float64(50*time.Millisecond))
	require.InDelta(t, 200*time.Millisecond, delays[1], float64(100*time.Millisecond))
}

func TestFirstTrySuccessCreatesNoSchedule(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	var made atomic.Int64
	p := New("t", WithClock(clk), WithBackOff(func() backoff.BackOff { made.Add(1); return zeroBackOff() }))
	fn, calls := failing(0, errBoom)
	require.NoError(t, p.Do(context.Background(), fn))
	require.EqualValues(t, 1, calls.Load())
	require.Zero(t, made.Load())
	require.Zero(t, clk.Created())
}

func TestSuccessAfterRetries(t *testing.T) {
	var made atomic.Int64
	p := New("t", WithMaxAttempts(5), WithBackOff(func() backoff.BackOff { made.Add(1); return zeroBackOff() }))
	fn, calls := failing(3, errBoom)
	require.NoError(t, p.Do(context.Background(), fn))
	require.EqualValues(t, 4, calls.Load())
	require.EqualValues(t, 1, made.Load(), "one schedule per call")
}

type rejection struct{ hint bulwark.Hint }

func (rejection) Error() string             { return "rejected" }
func (r rejection) RetryHint() bulwark.Hint { return r.hint }

func TestNotRetryableStopsAfterOneAttempt(t *testing.T) {
	cases := []struct {
		name    string
		err     error
		wantErr error // what the returned *Error's Err must be
	}{
		{"bulwark.Permanent", bulwark.Permanent(errBoom), nil},
		{"backoff.Permanent", backoff.Permanent(errBoom), errBoom},
		{"wrapped backoff.Permanent", fmt.Errorf("op: %w", backoff.Permanent(errBoom)), nil},
		{"no-retry hint", bulwark.WithHint(errBoom, bulwark.Hint{NoRetry: true}), nil},
		{"rejection with NoRetry", fmt.Errorf("call: %w", rejection{bulwark.Hint{NoRetry: true, RetryAfter: time.Second}}), nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := New("t", WithMaxAttempts(5), WithBackOff(zeroBackOff))
			var calls int
			err := p.Do(context.Background(), func(context.Context) error { calls++; return tc.err })
			require.Equal(t, 1, calls)
			re := requireRetryError(t, err, 1, NotRetryable)
			if tc.wantErr != nil {
				require.Same(t, tc.wantErr, re.Err, "a top-level backoff.PermanentError is unwrapped")
			} else {
				require.Same(t, tc.err, re.Err)
			}
			if tc.name == "rejection with NoRetry" {
				require.ErrorAs(t, err, new(rejection))
			} else {
				require.ErrorIs(t, err, errBoom)
			}
		})
	}
}

func TestClassifier(t *testing.T) {
	errBad := errors.New("bad request")
	p := New("t", WithMaxAttempts(4), WithBackOff(zeroBackOff), WithClassifier(func(err error) bool {
		return Retryable(err) && !errors.Is(err, errBad)
	}))
	fn, calls := failing(10, errBad)
	requireRetryError(t, p.Do(context.Background(), fn), 1, NotRetryable)
	require.EqualValues(t, 1, calls.Load())

	// A classifier may retry what the default would not.
	p = New("t", WithMaxAttempts(4), WithBackOff(zeroBackOff), WithClassifier(func(error) bool { return true }))
	fn, calls = failing(2, bulwark.Permanent(errBoom))
	require.NoError(t, p.Do(context.Background(), fn))
	require.EqualValues(t, 3, calls.Load())

	require.False(t, Retryable(nil))
	require.True(t, Retryable(errBoom))
	require.False(t, Retryable(bulwark.WithHint(bulwark.Permanent(errBoom), bulwark.Hint{RetryAfter: time.Second})),
		"a permanent error stays permanent under a server's hint")
	require.True(t, Retryable(context.DeadlineExceeded), "only the caller's own context stops retrying")
}

func TestAttemptTimeoutCancelsOnlyTheAttempt(t *testing.T) {
	p := New("t", WithMaxAttempts(3), WithBackOff(zeroBackOff), WithAttemptTimeout(20*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var calls int
	err := p.Do(ctx, func(actx context.Context) error {
		calls++
		dl, ok := actx.Deadline()
		require.True(t, ok)
		require.Less(t, time.Until(dl), time.Second)
		if calls == 1 {
			<-actx.Done() // the attempt hangs until its own timeout
			return actx.Err()
		}
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, 2, calls)
	require.NoError(t, ctx.Err(), "the caller's context is untouched")
}

func TestAttemptTimeoutCallerDeadlineWins(t *testing.T) {
	p := New("t", WithAttemptTimeout(time.Hour))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	want, _ := ctx.Deadline()
	require.NoError(t, p.Do(ctx, func(actx context.Context) error {
		dl, ok := actx.Deadline()
		require.True(t, ok)
		require.Equal(t, want, dl)
		return nil
	}))
}

func TestCallerCancelDuringWaitReturnsPromptly(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	p := New("t", WithClock(clk), WithMaxAttempts(5), WithBackOff(constBackOff(10*time.Second)))
	ctx, cancel := context.WithCancel(context.Background())
	fn, calls := failing(1000, errBoom)
	done := make(chan error)
	go func() { done <- p.Do(ctx, fn) }()
	clk.WaitForTimers(1) // Do is waiting before attempt 2
	cancel()
	err := <-done
	re := requireRetryError(t, err, 1, Canceled)
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorIs(t, err, errBoom)
	require.Same(t, errBoom, re.Err)
	require.Zero(t, clk.Pending(), "the wait's timer is stopped")
	clk.Advance(time.Hour) // nothing is left to continue the call
	require.EqualValues(t, 1, calls.Load())
}

func TestCallerCancelDuringAttemptStops(t *testing.T) {
	for _, tc := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"canceled", func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) }, context.Canceled},
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 10*time.Millisecond)
		}, context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := tc.ctx()
			defer cancel()
			p := New("t", WithMaxAttempts(5), WithBackOff(zeroBackOff), WithAttemptTimeout(time.Hour))
			var calls int
			err := p.Do(ctx, func(actx context.Context) error {
				calls++
				if tc.want == context.Canceled {
					cancel()
				}
				<-actx.Done()
				return fmt.Errorf("attempt: %w", actx.Err())
			})
			require.Equal(t, 1, calls)
			requireRetryError(t, err, 1, Canceled)
			require.ErrorIs(t, err, tc.want)
		})
	}
}

func TestHintReplacesSchedule(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	var delays []time.Duration
	p := New("t", WithClock(clk), WithBackOff(constBackOff(time.Second)),
		WithOnRetry(func(_ int, _ error, d time.Duration) { delays = append(delays, d) }))
	fn, calls := failing(1, bulwark.WithHint(errBoom, bulwark.Hint{RetryAfter: 5 * time.Second}))
	done := make(chan error)
	go func() { done <- p.Do(context.Background(), fn) }()
	clk.WaitForTimers(1)
	clk.Advance(time.Second) // the schedule's delay is not what is waited
	require.Equal(t, 1, clk.Pending())
	require.EqualValues(t, 1, calls.Load())
	clk.Advance(4 * time.Second)
	require.NoError(t, <-done)
	require.EqualValues(t, 2, calls.Load())
	require.Equal(t, []time.Duration{5 * time.Second}, delays)
}

// A hint longer than WithMaxHintWait stops retrying at once: a shorter wait
// would be refused again (an open breaker refuses until its probe time).
// A hint within it is waited in full.
func TestHintBeyondMaxHintWaitStops(t *testing.T) {
	for _, tc := range []struct {
		name   string
		max    time.Duration // < 0: the default
		hint   time.Duration
		waited bool
	}{
		{"default, hint beyond", -1, DefaultMaxHintWait + time.Millisecond, false},
		{"default, hint at it", -1, DefaultMaxHintWait, true},
		{"custom, hint beyond", 3 * time.Second, 20 * time.Second, false},
		{"none", 0, 20 * time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := clock.NewFake(time.Time{})
			retrying := make(chan time.Duration, 1)
			opts := []Option{WithClock(clk), WithMaxElapsed(0), WithOnRetry(func(_ int, _ error, d time.Duration) { retrying <- d })}
			if tc.max >= 0 {
				opts = append(opts, WithMaxHintWait(tc.max))
			}
			p := New("t", opts...)
			fn, calls := failing(1, bulwark.WithHint(errBoom, bulwark.Hint{RetryAfter: tc.hint}))
			done := make(chan error, 1)
			go func() { done <- p.Do(context.Background(), fn) }()
			select {
			case d := <-retrying:
				require.True(t, tc.waited, "a retry after %v", d)
				require.Equal(t, tc.hint, d)
				clk.WaitForTimers(1)
				clk.Advance(tc.hint - 1)
				require.Equal(t, 1, clk.Pending(), "the hint is waited in full")
				clk.Advance(1)
				require.NoError(t, <-done)
			case err := <-done: // without anyone advancing the clock
				require.False(t, tc.waited, "no retry: %v", err)
				requireRetryError(t, err, 1, NotRetryable)
				require.EqualValues(t, 1, calls.Load())
				require.Zero(t, clk.Created(), "no wait started")
			}
		})
	}
}

// openBreaker returns a breaker on clk that has just opened for 30 s.
func openBreaker(t *testing.T, clk clock.Clock) *breaker.Breaker {
	t.Helper()
	b := breaker.New("open", breaker.WithClock(clk), breaker.WithConsecutiveFailures(1),
		breaker.WithOpenDuration(30*time.Second), breaker.WithJitter(0))
	_ = b.Do(context.Background(), func(context.Context) error { return errBoom })
	require.Equal(t, breaker.Open, b.State())
	return b
}

// An open breaker in a chain under retry: the time until its probe is past
// WithMaxHintWait, so the call fails fast instead of waiting to be refused.
func TestOpenBreakerBeyondMaxHintWaitFailsFast(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	b := openBreaker(t, clk)
	p := New("t", WithClock(clk))
	err := bulwark.Chain(p, b).Do(context.Background(), func(context.Context) error { return nil })
	require.ErrorIs(t, err, breaker.ErrOpen)
	requireRetryError(t, err, 1, NotRetryable)
	require.Zero(t, clk.Created(), "no wait started")
}

func TestWaitPastDeadlineOrElapsedCapStopsAtOnce(t *testing.T) {
	hinted := bulwark.WithHint(errBoom, bulwark.Hint{RetryAfter: 20 * time.Second})
	for _, tc := range []struct {
		name     string
		opts     []Option
		deadline time.Duration
		err      error
	}{
		{"hint past deadline", []Option{WithMaxHintWait(time.Minute)}, 10 * time.Second, hinted},
		{"hint past elapsed cap", []Option{WithMaxHintWait(time.Minute), WithMaxElapsed(5 * time.Second)}, 0, hinted},
		{"schedule past deadline", []Option{WithBackOff(constBackOff(20 * time.Second))}, 10 * time.Second, errBoom},
		{"schedule past elapsed cap", []Option{WithBackOff(constBackOff(20 * time.Second)), WithMaxElapsed(10 * time.Second)}, 0, errBoom},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Context deadlines are real times, so the fake clock starts now.
			clk := clock.NewFake(time.Now())
			ctx := context.Background()
			if tc.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.deadline)
				defer cancel()
			}
			p := New("t", append([]Option{WithClock(clk)}, tc.opts...)...)
			fn, calls := failing(10, tc.err)
			err := p.Do(ctx, fn) // returns without anyone advancing the clock
			requireRetryError(t, err, 1, OutOfTime)
			require.ErrorIs(t, err, errBoom)
			require.EqualValues(t, 1, calls.Load())
			require.Zero(t, clk.Created(), "no wait started")
		})
	}
}

func TestElapsedCapCountsFromFirstFailure(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	p := New("t", WithClock(clk), WithMaxAttempts(10), WithBackOff(constBackOff(4*time.Second)), WithMaxElapsed(10*time.Second))
	fn, calls := failing(1000, errBoom)
	done := make(chan error)
	go func() { done <- p.Do(context.Background(), fn) }()
	for range 2 { // waits end at 4 s and 8 s; one ending at 12 s is refused
		clk.WaitForTimers(1)
		clk.Advance(4 * time.Second)
	}
	requireRetryError(t, <-done, 3, OutOfTime)
	require.EqualValues(t, 3, calls.Load())
}

func TestScheduleStop(t *testing.T) {
	p := New("t", WithBackOff(func() backoff.BackOff { return &backoff.StopBackOff{} }))
	fn, calls := failing(10, errBoom)
	requireRetryError(t, p.Do(context.Background(), fn), 1, Exhausted)
	require.EqualValues(t, 1, calls.Load())

	p = New("t", WithMaxAttempts(10), WithBackOff(func() backoff.BackOff { return backoff.WithMaxRetries(zeroBackOff(), 2) }))
	fn, calls = failing(10, errBoom)
	requireRetryError(t, p.Do(context.Background(), fn), 3, Exhausted)
	require.EqualValues(t, 3, calls.Load())
}

func TestOnRetryHook(t *testing.T) {
	type call struct {
		attempt int
		err     error
		delay   time.Duration
	}
	var got []call
	clk := clock.NewFake(time.Time{})
	e1, e2 := errors.New("e1"), errors.New("e2")
	errs := []error{e1, e2, nil}
	p := New("t", WithClock(clk), WithBackOff(constBackOff(time.Second)),
		WithOnRetry(func(a int, err error, d time.Duration) { got = append(got, call{a, err, d}) }))
	done := make(chan error)
	var i int
	go func() {
		done <- p.Do(context.Background(), func(context.Context) error { i++; return errs[i-1] })
	}()
	for range 2 {
		clk.WaitForTimers(1)
		clk.Advance(time.Second)
	}
	require.NoError(t, <-done)
	require.Equal(t, []call{{1, e1, time.Second}, {2, e2, time.Second}}, got)
}

func TestErrorFormatting(t *testing.T) {
	e := &Error{Attempts: 3, Reason: Exhausted, Err: errBoom}
	require.Equal(t, "retry: attempts exhausted after 3 attempts: boom", e.Error())
	e = &Error{Attempts: 1, Reason: Canceled, Err: errBoom, ctxErr: context.Canceled}
	require.Equal(t, "retry: canceled after 1 attempt (context canceled): boom", e.Error())
	require.ErrorIs(t, e, context.Canceled)
	for r := NotRetryable; r <= Canceled; r++ {
		require.NotContains(t, r.String(), "Reason(")
	}
	require.Equal(t, "Reason(0)", Reason(0).String())
}

func TestInvalidOptionsPanic(t *testing.T) {
	require.Panics(t, func() { WithMaxAttempts(0) })
	require.Panics(t, func() { NewBudget(0, 0.1) })
	require.Panics(t, func() { NewBudget(10, 0) })
	require.Panics(t, func() { NewBudget(10, 1.5) })
}

func TestConcurrentDoUnderRace(t *testing.T) {
	p := New("t", WithMaxAttempts(3), WithBackOff(zeroBackOff), WithBudget(nil))
	var calls atomic.Int64
	errs := make(chan error, 64)
	for g := range 64 {
		go func() {
			var err error
			for range 100 {
				err = p.Do(context.Background(), func(context.Context) error {
					if calls.Add(1)%3 != 0 || g%2 == 0 {
						return errBoom
					}
					return nil
				})
				if err != nil && !errors.Is(err, errBoom) {
					break
				}
			}
			errs <- err
		}()
	}
	for range 64 {
		<-errs
	}
	require.LessOrEqual(t, calls.Load(), int64(64*100*3))
}

func errPermanent() error { return bulwark.Permanent(errBoom) }

// A hint beyond WithMaxHintWait stops the call as surely as a NoRetry hint,
// and like it (and like httpmw's Transport) takes no token from the shared
// budget: no retry follows. Otherwise every call an open breaker refused
// would drain the fleet's budget although nothing reached the upstream, and
// after recovery transient failures would not be retried until successes
// refilled it.
func TestHintBeyondMaxHintWaitTakesNoBudgetToken(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	b := openBreaker(t, clk)

	budget := NewBudget(DefaultBudgetMaxTokens, DefaultBudgetRatio)
	p := New("t", WithClock(clk), WithBudget(budget))
	var reasons []Reason
	for range 6 {
		err := bulwark.Chain(p, b).Do(context.Background(), func(context.Context) error { return nil })
		re, ok := errors.AsType[*Error](err)
		require.True(t, ok)
		require.Equal(t, 1, re.Attempts)
		reasons = append(reasons, re.Reason)
	}
	require.Equal(t, float64(DefaultBudgetMaxTokens), budget.Tokens(),
		"calls stopped by a hint beyond WithMaxHintWait drained the retry budget; reasons %v", reasons)
	require.Equal(t, []Reason{NotRetryable, NotRetryable, NotRetryable, NotRetryable, NotRetryable, NotRetryable}, reasons)
}
