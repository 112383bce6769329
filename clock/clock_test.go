package clock

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestFakeTimersFireInOrder(t *testing.T) {
	f := NewFake(time.Time{})
	t0 := f.Now()
	a := f.NewTimer(2 * time.Second)
	b := f.NewTimer(time.Second)
	c := f.NewTimer(3 * time.Second)
	require.Equal(t, 3, f.Pending())
	require.True(t, c.Stop())
	require.False(t, c.Stop())

	f.Advance(1500 * time.Millisecond)
	require.Equal(t, t0.Add(time.Second), <-b.C())
	select {
	case <-a.C():
		t.Fatal("a fired early")
	default:
	}
	f.Advance(time.Second)
	require.Equal(t, t0.Add(2*time.Second), <-a.C())
	require.Equal(t, 0, f.Pending())
	require.Equal(t, 3, f.Created())

	z := f.NewTimer(0)
	require.Equal(t, f.Now(), <-z.C())
	f.Set(t0) // backwards is ignored
	require.Equal(t, t0.Add(2500*time.Millisecond), f.Now())
}

func TestFakeWaitForTimers(t *testing.T) {
	f := NewFake(time.Time{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-f.NewTimer(time.Minute).C()
	}()
	f.WaitForTimers(1)
	f.Advance(time.Minute)
	wg.Wait()
}

func TestRealClock(t *testing.T) {
	c := Real()
	tm := c.NewTimer(time.Hour)
	require.True(t, tm.Stop())
	require.WithinDuration(t, time.Now(), c.Now(), time.Second)
}

func TestSince(t *testing.T) {
	f := NewFake(time.Time{})
	t0 := f.Now()
	f.Advance(3 * time.Second)
	require.Equal(t, 3*time.Second, f.Since(t0))
	start := Real().Now()
	require.GreaterOrEqual(t, Real().Since(start), time.Duration(0))
}
