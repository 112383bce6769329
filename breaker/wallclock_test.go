package breaker

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwark-go/bulwark/clock"
	"github.com/stretchr/testify/require"
)

// steppedClock is a clock.Fake whose wall-clock reading can be stepped back,
// as an NTP correction or a VM resume steps time.Now's wall reading on a real
// machine, while elapsed time (the monotonic clock) keeps going forward.
type steppedClock struct {
	*clock.Fake
	back atomic.Int64 // nanoseconds the wall clock was stepped back
}

func (c *steppedClock) Now() time.Time {
	return c.Fake.Now().Add(-time.Duration(c.back.Load()))
}

// A time window must keep counting after the machine's wall clock steps
// back. It used to index its buckets by now.UnixNano(), the wall clock, so
// after a step back longer than the window every outcome was "older than the
// window" and dropped: the breaker stopped counting, and could not open, until
// the wall clock had caught up again (here an hour; in production as long as
// the step was).
func TestTimeWindowKeepsCountingAfterWallClockStepsBack(t *testing.T) {
	clk := &steppedClock{Fake: clock.NewFake(time.Time{})}
	b := New("wall", WithClock(clk), WithJitter(0),
		WithTimeWindow(10*time.Second, 10), WithFailureRate(0.5, 4))

	for range 2 {
		p, err := b.Allow()
		require.NoError(t, err)
		p.Done(errBoom)
	}
	require.EqualValues(t, 2, b.Counts().Calls)

	clk.back.Store(int64(time.Hour)) // NTP steps the wall clock back an hour
	clk.Advance(time.Second)

	for range 2 {
		p, err := b.Allow()
		require.NoError(t, err)
		p.Done(errBoom)
	}
	require.Equal(t, Open, b.State(),
		"4 failures out of 4 calls within one second: the breaker must open (window holds %d calls)", b.Counts().Calls)
}
