package retry

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/clock"
)

// An adapter's loop: it keeps the last "response" when no retry follows,
// releases it before waiting when one does, and rewinds its "body" before the
// next attempt.
func TestLoopTwoPhase(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	p := New("t", WithClock(clk), WithBackOff(constBackOff(time.Second)))
	type response struct {
		status  int
		drained bool
	}
	statuses := []int{503, 503, 503}
	var (
		log       []string
		responses []*response
	)
	done := make(chan *response)
	go func() {
		l := p.Begin(context.Background())
		for {
			actx, cancel := l.Context()
			require.NoError(t, actx.Err())
			resp := &response{status: statuses[l.Attempt()-1]}
			responses = append(responses, resp)
			cancel()
			var err error
			if resp.status >= 500 {
				err = errors.New("status 503")
			}
			if !l.Decide(err) {
				done <- resp
				return
			}
			resp.drained = true
			log = append(log, "drained before waiting "+l.Delay().String())
			if !l.Wait() {
				done <- nil
				return
			}
			log = append(log, "rewound")
		}
	}()
	for range 2 {
		clk.WaitForTimers(1)
		clk.Advance(time.Second)
	}
	last := <-done
	require.Len(t, responses, 3)
	require.Same(t, responses[2], last)
	require.False(t, last.drained, "the final response is kept for the caller")
	require.True(t, responses[0].drained && responses[1].drained)
	require.Equal(t, []string{"drained before waiting 1s", "rewound", "drained before waiting 1s", "rewound"}, log)
}

func TestLoopStates(t *testing.T) {
	p := New("t", WithBackOff(zeroBackOff))
	l := p.Begin(context.Background())
	require.Equal(t, 1, l.Attempt())
	require.False(t, l.Wait(), "Wait before Decide")
	require.True(t, l.Decide(errBoom))
	require.True(t, l.Decide(errBoom), "a repeated Decide keeps its answer")
	require.True(t, l.Wait())
	require.Equal(t, 2, l.Attempt())
	require.False(t, l.Next(nil))
	require.NoError(t, l.Err())
	require.False(t, l.Next(errBoom), "the loop is over")
	require.False(t, l.Decide(errBoom))
	require.NoError(t, l.Err())

	l = p.Begin(context.Background())
	require.False(t, l.Next(errPermanent()))
	requireRetryError(t, l.Err(), 1, NotRetryable)
	require.False(t, l.Wait())
}

func TestLoopContextCanceledBeforeWait(t *testing.T) {
	var hooked bool
	p := New("t", WithBackOff(zeroBackOff), WithOnRetry(func(int, error, time.Duration) { hooked = true }))
	ctx, cancel := context.WithCancel(context.Background())
	l := p.Begin(ctx)
	require.True(t, l.Decide(errBoom))
	cancel()
	require.False(t, l.Wait())
	requireRetryError(t, l.Err(), 1, Canceled)
	require.ErrorIs(t, l.Err(), context.Canceled)
	require.False(t, hooked, "no hook for a wait that does not happen")
}

func TestLoopAttemptContextWithTimeout(t *testing.T) {
	p := New("t", WithAttemptTimeout(time.Hour))
	l := p.Begin(context.Background())
	actx, cancel := l.Context()
	_, ok := actx.Deadline()
	require.True(t, ok)
	cancel()
	require.ErrorIs(t, actx.Err(), context.Canceled)
}

// A per-call cap lowers the policy's attempts, never raises them, and ends
// the call as exhausted (not as a non-retryable error).
func TestBeginIn(t *testing.T) {
	boom := errors.New("boom")
	for _, tt := range []struct{ n, want int }{{1, 1}, {2, 2}, {5, 3}, {0, 3}, {-1, 3}} {
		p := New("t", WithMaxAttempts(3), WithBackOff(constBackOff(0)), WithBudget(nil))
		var l Loop
		p.BeginIn(context.Background(), &l, tt.n)
		calls := 0
		for {
			calls++
			if !l.Next(boom) {
				break
			}
		}
		require.Equal(t, tt.want, calls, "BeginIn(%d)", tt.n)
		var re *Error
		require.ErrorAs(t, l.Err(), &re)
		require.Equal(t, Exhausted, re.Reason, "BeginIn(%d)", tt.n)
		require.Equal(t, tt.want, re.Attempts)
	}
}

// A call recorded by FirstTrySucceeded counts in the metrics and refills the
// budget as a Loop decided with a nil error does, also when many goroutines
// record at once on their own stripes.
func TestFirstTrySucceededCountsAsALoopWould(t *testing.T) {
	const goroutines, calls = 64, 200
	run := func(name string, call func(p *Policy)) *prometheus.Registry {
		reg := prometheus.NewPedanticRegistry()
		p := New(name, WithRegisterer(reg), WithBudget(NewBudget(10, 0.5)))
		require.True(t, p.Budget().failure())
		require.Equal(t, 9.0, p.Budget().Tokens())
		var wg sync.WaitGroup
		for range goroutines {
			wg.Go(func() {
				for range calls {
					call(p)
				}
			})
		}
		wg.Wait()
		require.Equal(t, 10.0, p.Budget().Tokens(), "successes refill the budget")
		runtime.KeepAlive(p) // collectors hold policies weakly
		return reg
	}
	loop := run("p", func(p *Policy) {
		var l Loop
		p.BeginIn(context.Background(), &l, 0)
		if l.Decide(nil) {
			t.Error("Decide(nil) asked for a retry")
		}
	})
	first := run("p", (*Policy).FirstTrySucceeded)
	want, err := testutil.GatherAndCount(loop)
	require.NoError(t, err)
	got, err := testutil.GatherAndCount(first)
	require.NoError(t, err)
	require.Equal(t, want, got)
	for _, reg := range []prometheus.Gatherer{loop, first} {
		require.Equal(t, float64(goroutines*calls), seriesValue(t, reg, "bulwark_retry_calls_total", map[string]string{"name": "p", "result": "first_try"}))
		require.Equal(t, float64(goroutines*calls), seriesValue(t, reg, "bulwark_retry_attempts_total", map[string]string{"name": "p"}))
	}
}

// The first attempt's context, taken from the policy before any Loop, has the
// attempt timeout as a Loop's attempts do, and is the call's context without.
func TestPolicyAttemptContext(t *testing.T) {
	ctx := context.Background()
	actx, cancel := New("t").AttemptContext(ctx)
	require.Equal(t, ctx, actx)
	cancel()
	require.Zero(t, New("t").AttemptTimeout())
	require.Equal(t, time.Hour, New("t", WithAttemptTimeout(time.Hour)).AttemptTimeout())

	actx, cancel = New("t", WithAttemptTimeout(time.Hour)).AttemptContext(ctx)
	dl, ok := actx.Deadline()
	require.True(t, ok)
	require.WithinDuration(t, time.Now().Add(time.Hour), dl, time.Minute)
	cancel()
	require.ErrorIs(t, actx.Err(), context.Canceled)
}
