package breaker_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bulwark-go/bulwark"
	"github.com/bulwark-go/bulwark/breaker"
	"github.com/prometheus/client_golang/prometheus"
)

func Example() {
	reg := prometheus.NewRegistry() // in a service: the registry /metrics serves
	b := breaker.New("payments",
		breaker.WithFailureRate(0.5, 4), // open at 50% failures once 4 calls are in the window
		breaker.WithOpenDuration(30*time.Second),
		breaker.WithRegisterer(reg),
	)
	charge := func(ctx context.Context) error {
		return errors.New("payments: 503 Service Unavailable")
	}
	for i := range 5 {
		err := b.Do(context.Background(), charge)
		switch {
		case errors.Is(err, breaker.ErrOpen):
			h, _ := bulwark.HintOf(err)
			fmt.Printf("call %d: rejected without calling, retry in about %v\n", i, h.RetryAfter.Round(10*time.Second))
		case err != nil:
			fmt.Printf("call %d: %v\n", i, err)
		}
	}
	fmt.Println("state:", b.State())
	// Output:
	// call 0: payments: 503 Service Unavailable
	// call 1: payments: 503 Service Unavailable
	// call 2: payments: 503 Service Unavailable
	// call 3: payments: 503 Service Unavailable
	// call 4: rejected without calling, retry in about 30s
	// state: open
}

// The two-phase API is what adapters use: the outcome is known only after
// the wrapped handler has run.
func ExampleBreaker_Allow() {
	b := breaker.New("inventory")
	p, err := b.Allow()
	if err != nil {
		fmt.Println("rejected:", err)
		return
	}
	status := 502 // the upstream's answer
	if status >= 500 {
		p.Report(breaker.Failure)
	} else {
		p.Report(breaker.Success)
	}
	fmt.Println(b.Counts().Calls, "call,", b.Counts().Failures, "failure")
	// Output: 1 call, 1 failure
}
