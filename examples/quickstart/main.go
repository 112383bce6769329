// Command quickstart wraps a flaky call in bulwark policies and prints what
// happened. It needs nothing but Go: go run ./examples/quickstart
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/bulwark-go/bulwark"
)

func main() {
	calls := 0
	flaky := func(context.Context) (string, error) {
		calls++
		if calls%3 == 0 {
			return "", errors.New("upstream: 503 Service Unavailable")
		}
		return fmt.Sprintf("quote #%d", calls), nil
	}
	policy := bulwark.Chain() // filled with a breaker and a retry as they land
	for range 6 {
		v, err := bulwark.Get(context.Background(), policy, flaky)
		if err != nil {
			fmt.Fprintln(os.Stdout, "error:", err)
			continue
		}
		fmt.Println("ok:", v)
	}
}
