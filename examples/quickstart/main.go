// Command quickstart calls a dependency that goes down, through a retry
// policy outside a circuit breaker, and prints what each call saw. It needs
// nothing but Go:
//
//	go run ./examples/quickstart
package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bulwark-go/bulwark"
	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/retry"
	"github.com/cenkalti/backoff/v4"
)

func main() {
	// The dependency: healthy for 5 calls, then down.
	calls := 0
	quote := func(context.Context) (string, error) {
		calls++
		if calls > 5 {
			return "", errors.New("quotes: 503 Service Unavailable")
		}
		return fmt.Sprintf("quote #%d", calls), nil
	}

	b := breaker.New("quotes",
		breaker.WithFailureRate(0.5, 4), // open at 50% failures once 4 calls are in the window
		breaker.WithOpenDuration(time.Minute),
		breaker.OnStateChange(func(name string, from, to breaker.State) {
			fmt.Printf("  breaker %s: %v -> %v\n", name, from, to)
		}),
	)
	r := retry.New("quotes",
		retry.WithMaxAttempts(3), // three attempts in all: the call and two retries
		retry.WithBackOff(func() backoff.BackOff { return backoff.NewConstantBackOff(10 * time.Millisecond) }),
	)
	policy := bulwark.Chain(r, b) // every attempt asks the breaker first

	for i := 1; i <= 8; i++ {
		before := calls
		v, err := bulwark.Get(context.Background(), policy, quote)
		switch {
		case errors.Is(err, breaker.ErrOpen):
			fmt.Printf("request %d: failed fast, breaker open (upstream calls: %d)\n", i, calls-before)
		case err != nil:
			fmt.Printf("request %d: %v (upstream calls: %d)\n", i, err, calls-before)
		default:
			fmt.Printf("request %d: %s\n", i, v)
		}
	}
	fmt.Printf("upstream saw %d calls for 8 requests\n", calls)
}
