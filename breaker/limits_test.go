package breaker

import (
	"fmt"
	"math"
	"time"

	"testing"

	"github.com/stretchr/testify/require"
)

// A count window smaller than minCalls can never hold minCalls calls; the
// breaker must still be able to open on the failure rate, once the window is
// full.
func TestCountWindowSmallerThanMinCalls(t *testing.T) {
	tests := []struct {
		name   string
		opts   []Option
		script string
		want   State
	}{
		{"default min calls, window 10", []Option{WithCountWindow(10)}, "ffffffffff", Open},
		{"window 10 not yet full", []Option{WithCountWindow(10)}, "fffffffff", Closed},
		{"explicit min calls above window", []Option{WithCountWindow(4), WithFailureRate(0.5, 50)}, "sfsf", Open},
		{"rate below threshold over full window", []Option{WithCountWindow(4), WithFailureRate(0.75, 50)}, "sfsfsf", Closed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, clk := newTest(tt.opts...)
			feed(t, b, clk, tt.script)
			require.Equal(t, tt.want, b.State())
		})
	}
}

// A long outage keeps reopening the breaker from half-open. Once the grown
// duration no longer fits in a time.Duration (after 34 reopenings of 1s with
// factor 2) it must stay at the cap, not wrap around to the 1ms floor. The
// jitter spreads the capped duration to both sides of the cap.
func TestGrowingOpenDurationStaysCappedInLongOutage(t *testing.T) {
	for _, jitter := range []float64{0, 0.1} {
		t.Run(fmt.Sprint("jitter ", jitter), func(t *testing.T) {
			b, clk := newTest(WithFailureRate(0.5, 1), WithOpenDuration(time.Second),
				WithGrowingOpenDuration(2, time.Minute), WithHalfOpen(1, 1), WithJitter(jitter), withSeed(1))
			lo := time.Duration(float64(time.Minute) * (1 - jitter))
			hi := time.Duration(float64(time.Minute) * (1 + jitter))
			feed(t, b, clk, "f")
			above, below := 0, 0
			for i := range 2000 {
				d := b.Counts().RetryAfter
				if i >= 10 {
					require.GreaterOrEqual(t, d, lo, "reopening %d", i)
					if d > time.Minute {
						above++
					} else if d < time.Minute {
						below++
					}
				}
				require.LessOrEqual(t, d, hi, "reopening %d", i)
				clk.Advance(d)
				feed(t, b, clk, "f") // the probe fails: reopen
			}
			if jitter > 0 {
				require.Greater(t, above, 500, "openings above the cap")
				require.Greater(t, below, 500, "openings below the cap")
			}
		})
	}
}

// An open duration near the largest Duration, jittered upward, stays the
// largest Duration rather than wrapping around to a negative one.
func TestJitterBeyondDurationRange(t *testing.T) {
	b, _ := newTest(WithFailureRate(0.5, 1), WithOpenDuration(math.MaxInt64), WithJitter(0.5))
	b.cfg.random = func() float64 { return 0.99 }
	b.mu.Lock()
	d := b.openDuration()
	b.mu.Unlock()
	require.Equal(t, time.Duration(math.MaxInt64), d)
}
