package clock_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/clock"
)

// A test of code that uses a breaker moves a fake clock instead of sleeping
// through the open duration.
func ExampleFake() {
	clk := clock.NewFake(time.Time{})
	b := breaker.New("payments", breaker.WithClock(clk), breaker.WithConsecutiveFailures(1),
		breaker.WithOpenDuration(30*time.Second), breaker.WithJitter(0), breaker.WithHalfOpen(1, 1))
	down := errors.New("payments down")
	_ = b.Do(context.Background(), func(context.Context) error { return down })
	fmt.Println(b.State())
	clk.Advance(30 * time.Second)
	err := b.Do(context.Background(), func(context.Context) error { return nil }) // the probe
	fmt.Println(err, b.State())
	// Output:
	// open
	// <nil> closed
}
