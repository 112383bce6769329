package breaker

import (
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
