package bulwark_test

import (
	"context"
	"fmt"

	"github.com/bulwark-go/bulwark"
)

func ExampleChain() {
	logging := func(name string) bulwark.Policy {
		return bulwark.PolicyFunc(func(ctx context.Context, fn func(context.Context) error) error {
			fmt.Println("enter", name)
			defer fmt.Println("leave", name)
			return fn(ctx)
		})
	}
	// In a real service: bulwark.Chain(retryPolicy, breaker, bulkhead).
	p := bulwark.Chain(logging("retry"), logging("breaker"))
	_ = p.Do(context.Background(), func(context.Context) error {
		fmt.Println("call")
		return nil
	})
	// Output:
	// enter retry
	// enter breaker
	// call
	// leave breaker
	// leave retry
}

func ExampleGet() {
	p := bulwark.Chain() // any Policy: a breaker, a retry, a chain of them
	price, err := bulwark.Get(context.Background(), p, func(context.Context) (int, error) {
		return 42, nil
	})
	fmt.Println(price, err)
	// Output: 42 <nil>
}
