package clock_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/clock"
)

// The zero Fake works, as a user who writes &clock.Fake{} expects: making a
// timer and moving the clock do not need NewFake.
func TestZeroFakeIsUsable(t *testing.T) {
	var f clock.Fake
	require.NotPanics(t, func() {
		tm := f.NewTimer(time.Second)
		f.Advance(time.Second)
		<-tm.C()
	})
	before := f.Now()
	f.Advance(-time.Hour)
	require.Equal(t, before, f.Now(), "the time never goes back")
}
