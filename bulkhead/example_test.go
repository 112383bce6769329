package bulkhead_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bulwark-go/bulwark"
	"github.com/bulwark-go/bulwark/bulkhead"
)

func Example() {
	reg := prometheus.NewRegistry()
	b := bulkhead.New("inventory",
		bulkhead.WithLimit(2),                     // two calls at once
		bulkhead.WithQueue(8),                     // up to eight more wait...
		bulkhead.WithMaxWait(50*time.Millisecond), // ...for 50 ms at most
		bulkhead.WithRegisterer(reg),
	)

	err := b.Do(context.Background(), func(ctx context.Context) error {
		fmt.Println("calling the inventory service")
		return nil
	})
	fmt.Println("err:", err)

	// Hold both slots: the next caller waits 50 ms, then is turned away
	// with a hint that an adapter turns into Retry-After.
	p1, _ := b.Acquire(context.Background())
	p2, _ := b.Acquire(context.Background())
	_, err = b.Acquire(context.Background())
	h, _ := bulwark.HintOf(err)
	fmt.Println(errors.Is(err, bulkhead.ErrTimeout), h.RetryAfter)
	p1.Release()
	p2.Release()
	fmt.Println("in flight:", b.InFlight())
	// Output:
	// calling the inventory service
	// err: <nil>
	// true 50ms
	// in flight: 0
}

func ExamplePermit_Release() {
	b := bulkhead.New("uploads", bulkhead.WithLimit(1))
	p, err := b.Acquire(context.Background())
	if err != nil {
		fmt.Println(err)
		return
	}
	// Another caller is turned away at once: there is no queue by default.
	_, err = b.Acquire(context.Background())
	fmt.Println(err, errors.Is(err, bulkhead.ErrFull))
	p.Release()
	p.Release() // harmless: p was cleared by the first call
	fmt.Println("in flight:", b.InFlight())
	// Output:
	// bulkhead "uploads": full true
	// in flight: 0
}
