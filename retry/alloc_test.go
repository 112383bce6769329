//go:build !race

package retry

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
)

func TestFirstTrySuccessDoesNotAllocate(t *testing.T) {
	p := New("allocs", WithRegisterer(prometheus.NewRegistry()))
	ctx := context.Background()
	ok := func(context.Context) error { return nil }
	require.Zero(t, testing.AllocsPerRun(1000, func() {
		if p.Do(ctx, ok) != nil {
			t.Fatal("failed")
		}
	}), "Do")
	require.Zero(t, testing.AllocsPerRun(1000, func() {
		l := p.Begin(ctx)
		for {
			actx, cancel := l.Context()
			err := ok(actx)
			cancel()
			if !l.Next(err) {
				break
			}
		}
		if l.Err() != nil {
			t.Fatal("failed")
		}
	}), "Loop")
}
