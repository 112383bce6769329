package ratelimit_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bulwark-go/bulwark"
	"github.com/bulwark-go/bulwark/ratelimit"
	"golang.org/x/time/rate"
)

func ExampleLocal_Allow() {
	// One request a minute per client, bursts of two.
	l := ratelimit.NewLocal("api", rate.Every(time.Minute), 2)
	ctx := context.Background()
	for range 3 {
		d, err := l.Allow(ctx, "client-42", 1)
		if err != nil {
			panic(err)
		}
		fmt.Printf("allowed=%v remaining=%d retry-after=%v\n", d.Allowed, d.Remaining, d.RetryAfter.Round(time.Second))
	}
	// Output:
	// allowed=true remaining=1 retry-after=0s
	// allowed=true remaining=0 retry-after=0s
	// allowed=false remaining=0 retry-after=1m0s
}

func ExampleFor() {
	l := ratelimit.NewLocal("reports", rate.Every(time.Hour), 1)
	p := ratelimit.For(l, "tenant-7") // a bulwark.Policy for one key
	run := func(context.Context) error { fmt.Println("report generated"); return nil }
	ctx := context.Background()
	fmt.Println(p.Do(ctx, run))
	err := p.Do(ctx, run)
	h, _ := bulwark.HintOf(err)
	fmt.Println(errors.Is(err, ratelimit.ErrLimited), h.RetryAfter.Round(time.Minute))
	// Output:
	// report generated
	// <nil>
	// true 1h0m0s
}
