package breaker

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// OnStateChange is "called after every state change" and
// bulwark_breaker_transitions_total counts "state changes". Reset on a breaker
// that is already closed (an operator's "reset all" button, a config reload)
// changes no state, yet the hook is told closed->closed and the counter gains
// a {from="closed",to="closed"} series; likewise ForceOpen twice.
func TestResetOfClosedBreakerIsNoStateChange(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	var changes []string
	b, _ := newTest(WithRegisterer(reg), OnStateChange(func(_ string, from, to State) {
		changes = append(changes, from.String()+"->"+to.String())
	}))
	b.Reset()
	b.ForceOpen()
	b.ForceOpen()
	require.Equal(t, []string{"closed->forced_open"}, changes)
	n, err := testutil.GatherAndCount(reg, "bulwark_breaker_transitions_total")
	require.NoError(t, err)
	require.Equal(t, 1, n, "one transition series: closed->forced_open")
}
