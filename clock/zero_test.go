package clock_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/clock"
)

// Fake is public now: a user who writes &clock.Fake{} (the zero value, as
// with most Go types whose docs do not say otherwise) and hands it to a
// bulkhead or a retry policy must not get a nil-pointer panic the first time
// a timer is made or the clock is moved. Either the zero Fake works, or its
// doc must say to use NewFake (and this test goes).
func TestZeroFakeIsUsable(t *testing.T) {
	var f clock.Fake
	require.NotPanics(t, func() {
		tm := f.NewTimer(time.Second)
		f.Advance(time.Second)
		<-tm.C()
	})
}
