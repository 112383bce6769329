package retry

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark"
)

const budgetCalls = 10_000

// reserve is the documented bound on retries with no successes: maxTokens/2.
func reserve(b *Budget) float64 { return b.MaxTokens() / 2 }

func TestBudgetReserve(t *testing.T) {
	b := NewBudget(10, 0.1)
	require.Equal(t, 10.0, b.Tokens())
	allowed := 0
	for range 100 {
		if b.failure() {
			allowed++
		}
	}
	require.LessOrEqual(t, float64(allowed), reserve(b))
	require.Equal(t, 4, allowed) // 9, 8, 7 and 6 tokens left are above 5
	require.Zero(t, b.Tokens(), "never below zero")
	for range 1000 {
		b.success()
	}
	require.Equal(t, 10.0, b.Tokens(), "never above max")
	require.Equal(t, 0.1, b.Ratio())

	var nilBudget *Budget
	require.True(t, nilBudget.failure())
	nilBudget.success()
	require.Zero(t, nilBudget.Tokens())
	var zero Budget
	require.False(t, zero.failure(), "the zero Budget allows no retries")
}

type budgetScenario struct {
	name string
	fail func(call int64) bool // whether the call-th attempt (1-based) fails
}

var budgetScenarios = []budgetScenario{
	{"always failing", func(int64) bool { return true }},
	{"failing 2 in 3", func(n int64) bool { return n%3 != 0 }},
	{"failing 1 in 2", func(n int64) bool { return n%2 == 0 }},
	{"failing 1 in 20", func(n int64) bool { return n%20 == 0 }},
}

// runBudget makes budgetCalls calls through a 5-attempt policy spread over
// goroutines and returns the attempts and successful attempts.
func runBudget(t *testing.T, b *Budget, goroutines int, fail func(int64) bool) (attempts, successes int64) {
	t.Helper()
	p := New("budget", WithMaxAttempts(5), WithBackOff(zeroBackOff), WithBudget(b))
	var n, ok atomic.Int64
	fn := func(context.Context) error {
		if fail(n.Add(1)) {
			return errBoom
		}
		ok.Add(1)
		return nil
	}
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := g; i < budgetCalls; i += goroutines {
				_ = p.Do(context.Background(), fn)
			}
		})
	}
	wg.Wait()
	return n.Load(), ok.Load()
}

func TestBudgetCapsRetriesUnderOutage(t *testing.T) {
	for _, goroutines := range []int{1, 64} {
		for _, sc := range budgetScenarios {
			t.Run(fmt.Sprintf("%s/%d goroutines", sc.name, goroutines), func(t *testing.T) {
				b := NewBudget(DefaultBudgetMaxTokens, DefaultBudgetRatio)
				attempts, successes := runBudget(t, b, goroutines, sc.fail)
				limit := (1+b.Ratio())*budgetCalls + reserve(b)
				t.Logf("%d attempts for %d calls (limit %.0f, %d successful attempts)", attempts, budgetCalls, limit, successes)
				require.LessOrEqual(t, float64(attempts), limit)
				// The sharper form of the bound: retries ≤ reserve + ratio × successes.
				require.LessOrEqual(t, float64(attempts-budgetCalls), reserve(b)+b.Ratio()*float64(successes)+1e-9)
				if sc.name == "failing 1 in 20" {
					// Below ratio/(1+ratio) failures, the budget lets retries through.
					require.Greater(t, attempts-budgetCalls, int64(400))
				}
			})
		}
	}
}

func TestBudgetStaysFullWhenCallsSucceed(t *testing.T) {
	for _, goroutines := range []int{1, 64} {
		b := NewBudget(DefaultBudgetMaxTokens, DefaultBudgetRatio)
		attempts, _ := runBudget(t, b, goroutines, func(int64) bool { return false })
		require.EqualValues(t, budgetCalls, attempts, "no retries")
		require.Equal(t, b.MaxTokens(), b.Tokens())
	}
}

func TestBudgetSharedBetweenPolicies(t *testing.T) {
	b := NewBudget(4, 0.5)
	p1 := New("a", WithMaxAttempts(3), WithBackOff(zeroBackOff), WithBudget(b))
	p2 := New("b", WithMaxAttempts(3), WithBackOff(zeroBackOff), WithBudget(b))
	require.Same(t, b, p1.Budget())
	fn, calls := failing(1000, errBoom)
	// p1 drains the reserve: 4 → 3 (retry) → 2 (exhausted at the threshold).
	requireRetryError(t, p1.Do(context.Background(), fn), 2, BudgetExhausted)
	require.EqualValues(t, 2, calls.Load())
	// so p2 cannot retry either.
	requireRetryError(t, p2.Do(context.Background(), fn), 1, BudgetExhausted)
	require.EqualValues(t, 3, calls.Load())
	require.Equal(t, 1.0, b.Tokens())

	// Non-retryable errors and cancellations neither take nor give tokens.
	b2 := NewBudget(4, 0.5)
	p3 := New("c", WithBackOff(zeroBackOff), WithBudget(b2))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = p3.Do(ctx, func(context.Context) error { return errBoom })
	_ = p3.Do(context.Background(), func(context.Context) error { return bulwark.Permanent(errBoom) })
	require.Equal(t, 4.0, b2.Tokens())
}
