package bulwark_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/bulwark-go/bulwark"
	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tracer is a policy that records when it enters and leaves.
func tracer(name string, log *[]string) bulwark.Policy {
	return bulwark.PolicyFunc(func(ctx context.Context, fn func(context.Context) error) error {
		*log = append(*log, name+">")
		err := fn(ctx)
		*log = append(*log, "<"+name)
		return err
	})
}

func TestChainOrderOutermostFirst(t *testing.T) {
	var log []string
	p := bulwark.Chain(tracer("a", &log), nil, tracer("b", &log), tracer("c", &log))
	err := p.Do(context.Background(), func(context.Context) error { log = append(log, "fn"); return nil })
	require.NoError(t, err)
	require.Equal(t, []string{"a>", "b>", "c>", "fn", "<c", "<b", "<a"}, log)
}

func TestChainEmptyAndSingle(t *testing.T) {
	calls := 0
	fn := func(context.Context) error { calls++; return nil }
	require.NoError(t, bulwark.Chain().Do(context.Background(), fn))
	require.NoError(t, bulwark.Chain(nil, nil).Do(context.Background(), fn))
	var log []string
	one := tracer("one", &log)
	require.NoError(t, bulwark.Chain(one).Do(context.Background(), fn))
	require.Equal(t, 3, calls)
	require.Equal(t, []string{"one>", "<one"}, log)
}

func TestChainPassesContextInward(t *testing.T) {
	type key struct{}
	outer := bulwark.PolicyFunc(func(ctx context.Context, fn func(context.Context) error) error {
		return fn(context.WithValue(ctx, key{}, "outer"))
	})
	inner := bulwark.PolicyFunc(func(ctx context.Context, fn func(context.Context) error) error { return fn(ctx) })
	var got any
	_ = bulwark.Chain(outer, inner).Do(context.Background(), func(ctx context.Context) error {
		got = ctx.Value(key{})
		return nil
	})
	require.Equal(t, "outer", got)
}

func TestGet(t *testing.T) {
	// A policy that tries twice: the value of the failed first attempt must
	// not leak into the result.
	twice := bulwark.PolicyFunc(func(ctx context.Context, fn func(context.Context) error) error {
		if err := fn(ctx); err == nil {
			return nil
		}
		return fn(ctx)
	})
	n := 0
	v, err := bulwark.Get(context.Background(), twice, func(context.Context) (int, error) {
		n++
		if n == 1 {
			return 99, errors.New("first fails")
		}
		return 7, nil
	})
	require.NoError(t, err)
	require.Equal(t, 7, v)

	boom := errors.New("boom")
	v, err = bulwark.Get(context.Background(), bulwark.Chain(), func(context.Context) (int, error) { return 5, boom })
	require.ErrorIs(t, err, boom)
	require.Zero(t, v)
}

func TestHints(t *testing.T) {
	base := errors.New("upstream said no")
	require.Nil(t, bulwark.WithHint(nil, bulwark.Hint{NoRetry: true}))
	require.Nil(t, bulwark.Permanent(nil))

	_, ok := bulwark.HintOf(nil)
	require.False(t, ok)
	_, ok = bulwark.HintOf(base)
	require.False(t, ok)

	hinted := fmt.Errorf("call: %w", bulwark.WithHint(base, bulwark.Hint{RetryAfter: 3 * time.Second}))
	h, ok := bulwark.HintOf(hinted)
	require.True(t, ok)
	require.Equal(t, 3*time.Second, h.RetryAfter)
	require.False(t, h.NoRetry)
	require.ErrorIs(t, hinted, base)
	require.Equal(t, "call: upstream said no", hinted.Error())
	require.False(t, bulwark.IsPermanent(hinted))

	perm := fmt.Errorf("wrapped: %w", bulwark.Permanent(base))
	require.True(t, bulwark.IsPermanent(perm))
	require.ErrorIs(t, perm, base)

	// backoff.Permanent is the retry package's business, not a root hint.
	require.False(t, bulwark.IsPermanent(backoff.Permanent(base)))
}

// IsPermanent looks at every hint in the tree, not only the first that
// HintOf finds: a permanent error that an adapter later wraps with a
// server's Retry-After hint is still permanent, so retry.Retryable does not
// retry it.
func TestIsPermanentSeesPermanentUnderAnotherHint(t *testing.T) {
	base := errors.New("invalid argument")
	err := bulwark.WithHint(bulwark.Permanent(base), bulwark.Hint{RetryAfter: time.Second})
	require.True(t, bulwark.IsPermanent(err), "err wraps an error whose hint says NoRetry")
}

// asHinter is an error that is no Hinter itself but hands one out through
// an As method, as errors.As allows.
type asHinter struct{ hint bulwark.Hint }

func (e asHinter) Error() string { return "as hinter" }

func (e asHinter) As(target any) bool {
	if p, ok := target.(*bulwark.Hinter); ok {
		*p = bulwark.WithHint(errors.New("inner"), e.hint).(bulwark.Hinter)
		return true
	}
	return false
}

// IsPermanent walks the tree as errors.As does: through Unwrap() error,
// through every branch of Unwrap() []error, and into As methods.
func TestIsPermanentWalksTheTree(t *testing.T) {
	base := errors.New("upstream said no")
	retryAfter := bulwark.Hint{RetryAfter: time.Second}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"plain", base, false},
		{"hint without NoRetry", bulwark.WithHint(base, retryAfter), false},
		{"two hints without NoRetry", bulwark.WithHint(bulwark.WithHint(base, retryAfter), retryAfter), false},
		{"permanent", bulwark.Permanent(base), true},
		{"permanent under a hint and fmt", fmt.Errorf("call: %w", bulwark.WithHint(fmt.Errorf("inner: %w", bulwark.Permanent(base)), retryAfter)), true},
		{"joined, permanent second", errors.Join(bulwark.WithHint(base, retryAfter), bulwark.Permanent(base)), true},
		{"joined, none permanent", errors.Join(base, bulwark.WithHint(base, retryAfter)), false},
		{"multiple %w, permanent under a hint", fmt.Errorf("%w; %w", base, bulwark.WithHint(bulwark.Permanent(base), retryAfter)), true},
		{"As hands out NoRetry", fmt.Errorf("call: %w", asHinter{bulwark.Hint{NoRetry: true}}), true},
		{"As hands out a retry-after", asHinter{retryAfter}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, bulwark.IsPermanent(tt.err))
		})
	}
}
