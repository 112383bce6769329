package bulwark

import "context"

// Policy runs a function under a resilience rule: a circuit breaker, a retry
// loop, a bulkhead, a rate limit. Every primitive in bulwark implements it.
//
// Do calls fn at most as often as the rule allows and returns fn's error, or
// the rule's own error when it refused to call fn. The context passed to fn is
// derived from ctx. Implementations are safe for concurrent use.
type Policy interface {
	Do(ctx context.Context, fn func(context.Context) error) error
}

// PolicyFunc adapts an ordinary function to a [Policy].
type PolicyFunc func(ctx context.Context, fn func(context.Context) error) error

// Do calls f(ctx, fn).
func (f PolicyFunc) Do(ctx context.Context, fn func(context.Context) error) error {
	return f(ctx, fn)
}

// Chain composes policies into one, outermost first: Chain(retry, breaker)
// retries calls that go through the breaker, so every attempt asks the breaker
// for a permit and a rejection by the breaker is seen (and classified) by the
// retry policy. Nil policies are skipped, but only a nil interface value: a
// typed nil pointer such as (*breaker.Breaker)(nil) is a policy, and panics
// when the chain runs. Chain() runs fn directly.
func Chain(policies ...Policy) Policy {
	var ps []Policy
	for _, p := range policies {
		if p != nil {
			ps = append(ps, p)
		}
	}
	switch len(ps) {
	case 0:
		return PolicyFunc(func(ctx context.Context, fn func(context.Context) error) error { return fn(ctx) })
	case 1:
		return ps[0]
	}
	// Build from the inside out so each link holds the rest of the chain.
	p := ps[len(ps)-1]
	for i := len(ps) - 2; i >= 0; i-- {
		p = link{outer: ps[i], inner: p}
	}
	return p
}

type link struct{ outer, inner Policy }

func (l link) Do(ctx context.Context, fn func(context.Context) error) error {
	return l.outer.Do(ctx, func(ctx context.Context) error { return l.inner.Do(ctx, fn) })
}

// Get runs fn under p and returns its value. When p refuses the call or fn
// fails on its last try, Get returns the zero T and the error. A value from an
// attempt that failed is never returned.
func Get[T any](ctx context.Context, p Policy, fn func(context.Context) (T, error)) (T, error) {
	var out T
	err := p.Do(ctx, func(ctx context.Context) error {
		v, err := fn(ctx)
		if err != nil {
			return err
		}
		out = v
		return nil
	})
	if err != nil {
		var zero T
		return zero, err
	}
	return out, nil
}
