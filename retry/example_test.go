package retry_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/bulwark-go/bulwark"
	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/retry"
)

var errUnavailable = errors.New("inventory unavailable")

// flaky fails its first n calls.
func flaky(n int) func(context.Context) error {
	calls := 0
	return func(context.Context) error {
		calls++
		if calls <= n {
			return errUnavailable
		}
		fmt.Println("call", calls, "succeeded")
		return nil
	}
}

// shortWaits keeps the examples fast; the default schedule starts at 100 ms.
func shortWaits() backoff.BackOff { return backoff.NewConstantBackOff(time.Millisecond) }

func logRetry(attempt int, err error, _ time.Duration) {
	fmt.Printf("attempt %d failed: %v\n", attempt, err)
}

func ExampleNew() {
	p := retry.New("inventory",
		retry.WithMaxAttempts(3), // three calls in total, the first included
		retry.WithBackOff(shortWaits),
		retry.WithOnRetry(logRetry),
	)
	err := p.Do(context.Background(), flaky(2))
	fmt.Println("err:", err)
	// Output:
	// attempt 1 failed: inventory unavailable
	// attempt 2 failed: inventory unavailable
	// call 3 succeeded
	// err: <nil>
}

// A retry outside a breaker: every attempt asks the breaker for a permit, and
// when the breaker is open its rejection's retry-after hint paces the retries.
func ExampleNew_outsideBreaker() {
	b := breaker.New("inventory")
	r := retry.New("inventory", retry.WithBackOff(shortWaits), retry.WithOnRetry(logRetry))
	p := bulwark.Chain(r, b)
	err := p.Do(context.Background(), flaky(1))
	fmt.Println("err:", err)
	// Output:
	// attempt 1 failed: inventory unavailable
	// call 2 succeeded
	// err: <nil>
}

func ExampleError() {
	p := retry.New("inventory", retry.WithBackOff(shortWaits))
	err := p.Do(context.Background(), flaky(10))
	var re *retry.Error
	if errors.As(err, &re) {
		fmt.Println(re.Attempts, re.Reason, errors.Is(err, errUnavailable))
	}
	fmt.Println(err)
	// Output:
	// 3 attempts exhausted true
	// retry: attempts exhausted after 3 attempts: inventory unavailable
}

// An adapter drives the attempts itself, with no closure per call, and runs
// its own code between attempts.
func ExamplePolicy_Begin() {
	p := retry.New("inventory", retry.WithBackOff(shortWaits))
	call := flaky(1)

	l := p.Begin(context.Background())
	for {
		ctx, cancel := l.Context()
		err := call(ctx)
		cancel()
		if !l.Decide(err) {
			break
		}
		fmt.Println("attempt", l.Attempt(), "failed; release its resources, then wait")
		if !l.Wait() {
			break
		}
		fmt.Println("rewind the request for attempt", l.Attempt())
	}
	fmt.Println("err:", l.Err())
	// Output:
	// attempt 1 failed; release its resources, then wait
	// rewind the request for attempt 2
	// call 2 succeeded
	// err: <nil>
}

func ExampleNewBudget() {
	// One budget for every policy that calls the inventory service.
	budget := retry.NewBudget(10, 0.1)
	reads := retry.New("inventory_read", retry.WithBudget(budget), retry.WithBackOff(shortWaits))
	writes := retry.New("inventory_write", retry.WithBudget(budget), retry.WithBackOff(shortWaits))

	// During an outage the shared reserve (10/2 tokens) is spent once, then
	// every call makes a single attempt.
	attempts := 0
	down := func(context.Context) error { attempts++; return errUnavailable }
	for range 50 {
		_ = reads.Do(context.Background(), down)
		_ = writes.Do(context.Background(), down)
	}
	fmt.Printf("100 calls, %d attempts, %.0f tokens left\n", attempts, budget.Tokens())
	// Output: 100 calls, 103 attempts, 0 tokens left
}
