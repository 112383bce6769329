package retry

import (
	"fmt"
	"math"
	"sync/atomic"
)

// Budget limits retries to a fraction of recent traffic, so that a fleet of
// clients cannot multiply the load on an upstream that is failing. It follows
// gRPC's retry throttling: a bucket holds up to maxTokens tokens and starts
// full;
//
//   - every attempt that fails with a retryable error takes one token (never
//     going below zero),
//   - every attempt that succeeds gives back ratio tokens (never above
//     maxTokens),
//   - a retry is allowed only when the failure that asks for it leaves more
//     than maxTokens/2 tokens in the bucket.
//
// Errors that are not retryable and calls ended by the caller's context
// neither take nor give tokens.
//
// Bound. Let E be the tokens above maxTokens/2. E starts at maxTokens/2, each
// success raises it by at most ratio and each allowed retry lowers it by one,
// and it is never negative. So over any run of S successful attempts
//
//	retries ≤ maxTokens/2 + ratio × S
//
// and N calls make at most (1 + ratio) × N + maxTokens/2 attempts in total,
// however many attempts a policy allows. During a total outage S is zero: the
// whole fleet-side amplification is the reserve, fewer than maxTokens/2
// retries (4 of the default 10 tokens: a retry must leave more than half),
// after which every call makes a single attempt until successes refill the
// bucket.
// In steady state retries keep flowing only while the failure rate stays below
// about ratio/(1+ratio).
//
// Tokens are counted in thousandths, like gRPC, so ratio has three decimal
// places. The budget is one atomic integer: a success with a full bucket is a
// single atomic load, and every other update is a compare-and-swap loop.
//
// A Budget may be shared by any number of policies and goroutines; it is safe
// for concurrent use. The zero Budget has no tokens and allows no retries; a
// nil *Budget allows every retry. Create one with [NewBudget].
type Budget struct {
	tokens    atomic.Int64 // thousandths of a token
	max       int64
	threshold int64
	ratio     int64
}

// Default budget of a policy built without [WithBudget]: gRPC's example
// throttling configuration.
const (
	DefaultBudgetMaxTokens = 10
	DefaultBudgetRatio     = 0.1
)

const milli = 1000

// NewBudget returns a full budget of maxTokens tokens that gives back ratio
// tokens per successful attempt; see [Budget] for the formula. maxTokens must
// be at least 1 and ratio within [0.001, 1]: other values are a programming
// mistake and NewBudget panics.
func NewBudget(maxTokens, ratio float64) *Budget {
	if !(maxTokens >= 1 && maxTokens <= 1e12) {
		panic(fmt.Sprintf("retry: NewBudget: maxTokens %v out of range [1, 1e12]", maxTokens))
	}
	if !(ratio >= 0.001 && ratio <= 1) {
		panic(fmt.Sprintf("retry: NewBudget: ratio %v out of range [0.001, 1]", ratio))
	}
	b := &Budget{
		max:   int64(math.Round(maxTokens * milli)),
		ratio: int64(math.Round(ratio * milli)),
	}
	b.threshold = b.max / 2
	b.tokens.Store(b.max)
	return b
}

// Tokens returns the number of tokens in the bucket now.
func (b *Budget) Tokens() float64 {
	if b == nil {
		return 0
	}
	return float64(b.tokens.Load()) / milli
}

// MaxTokens returns the capacity of the bucket.
func (b *Budget) MaxTokens() float64 {
	if b == nil {
		return 0
	}
	return float64(b.max) / milli
}

// Ratio returns the tokens a successful attempt gives back.
func (b *Budget) Ratio() float64 {
	if b == nil {
		return 0
	}
	return float64(b.ratio) / milli
}

// success records a successful attempt. With a full bucket, the common case,
// it only reads.
func (b *Budget) success() {
	if b == nil {
		return
	}
	for {
		v := b.tokens.Load()
		if v >= b.max {
			return
		}
		if b.tokens.CompareAndSwap(v, min(v+b.ratio, b.max)) {
			return
		}
	}
}

// failure records an attempt that failed with a retryable error and reports
// whether a retry is allowed. Taking the token and testing the threshold is
// one atomic step, so concurrent failures cannot overdraw the reserve.
func (b *Budget) failure() bool {
	if b == nil {
		return true
	}
	for {
		v := b.tokens.Load()
		n := max(v-milli, 0)
		if b.tokens.CompareAndSwap(v, n) {
			return n > b.threshold
		}
	}
}
