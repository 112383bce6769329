package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"weak"

	"github.com/bulwark-go/bulwark"
	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/internal/gctest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/time/rate"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var bg = context.Background()

func TestLocalTokenBucketMath(t *testing.T) {
	t.Parallel()
	type step struct {
		advance   time.Duration
		cost      int
		allowed   bool
		remaining int
		reset     time.Duration
		retry     time.Duration
	}
	tests := []struct {
		name  string
		r     rate.Limit
		burst int
		steps []step
	}{
		{
			name: "burst then one per period", r: 10, burst: 3,
			steps: []step{
				{cost: 1, allowed: true, remaining: 2, reset: 100 * time.Millisecond},
				{cost: 1, allowed: true, remaining: 1, reset: 200 * time.Millisecond},
				{cost: 1, allowed: true, remaining: 0, reset: 300 * time.Millisecond},
				{cost: 1, allowed: false, remaining: 0, reset: 300 * time.Millisecond, retry: 100 * time.Millisecond},
				{advance: 50 * time.Millisecond, cost: 1, allowed: false, remaining: 0, reset: 250 * time.Millisecond, retry: 50 * time.Millisecond},
				{advance: 50 * time.Millisecond, cost: 1, allowed: true, remaining: 0, reset: 300 * time.Millisecond},
				{advance: 300 * time.Millisecond, cost: 0, allowed: true, remaining: 3},
				{advance: time.Hour, cost: 0, allowed: true, remaining: 3},
			},
		},
		{
			name: "cost above one", r: 2, burst: 10,
			steps: []step{
				{cost: 7, allowed: true, remaining: 3, reset: 3500 * time.Millisecond},
				{cost: 4, allowed: false, remaining: 3, reset: 3500 * time.Millisecond, retry: 500 * time.Millisecond},
				{cost: 3, allowed: true, remaining: 0, reset: 5 * time.Second},
				{advance: 1250 * time.Millisecond, cost: 0, allowed: true, remaining: 2, reset: 3750 * time.Millisecond},
				{cost: 10, allowed: false, remaining: 2, reset: 3750 * time.Millisecond, retry: 3750 * time.Millisecond},
			},
		},
		{
			name: "slow rate", r: rate.Every(time.Minute), burst: 1,
			steps: []step{
				{cost: 1, allowed: true, remaining: 0, reset: time.Minute},
				{advance: 59 * time.Second, cost: 1, allowed: false, remaining: 0, reset: time.Second, retry: time.Second},
				{advance: time.Second, cost: 1, allowed: true, remaining: 0, reset: time.Minute},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			clk := clock.NewFake(time.Time{})
			l := NewLocal("math", tt.r, tt.burst, WithClock(clk), WithPolicy("p"))
			for i, s := range tt.steps {
				clk.Advance(s.advance)
				d, err := l.Allow(bg, "k", s.cost)
				require.NoError(t, err)
				want := Decision{
					Allowed: s.allowed, Policy: "p", Limit: tt.burst,
					Window:    durationFor(float64(tt.burst), tt.r),
					Remaining: s.remaining, Reset: s.reset, RetryAfter: s.retry,
				}
				require.Equal(t, want, roundDecision(d), "step %d", i)
			}
		})
	}
}

// roundDecision rounds the durations of d to the microsecond: the token
// arithmetic of x/time/rate is in floating point.
func roundDecision(d Decision) Decision {
	d.Window = d.Window.Round(time.Microsecond)
	d.Reset = d.Reset.Round(time.Microsecond)
	d.RetryAfter = d.RetryAfter.Round(time.Microsecond)
	return d
}

// TestLocalRetryAfterSuffices checks the rounding: a caller that waits exactly
// RetryAfter is allowed, one that comes back a microsecond early is not.
func TestLocalRetryAfterSuffices(t *testing.T) {
	t.Parallel()
	for _, r := range []rate.Limit{3, 7.3, 1000, 1e6 / 7, rate.Every(13 * time.Second)} {
		clk := clock.NewFake(time.Time{})
		l := NewLocal("round", r, 4, WithClock(clk))
		for range 4 {
			d, err := l.Allow(bg, "k", 1)
			require.NoError(t, err)
			require.True(t, d.Allowed)
		}
		for range 20 {
			d, err := l.Allow(bg, "k", 1)
			require.NoError(t, err)
			require.False(t, d.Allowed)
			require.Positive(t, d.RetryAfter)
			clk.Advance(d.RetryAfter - time.Microsecond)
			d2, err := l.Allow(bg, "k", 1)
			require.NoError(t, err)
			require.False(t, d2.Allowed, "rate %v: allowed 1µs before RetryAfter", r)
			clk.Advance(time.Microsecond)
			d3, err := l.Allow(bg, "k", 1)
			require.NoError(t, err)
			require.True(t, d3.Allowed, "rate %v: denied after RetryAfter %v", r, d.RetryAfter)
		}
	}
}

// RetryAfter is the time until a request of the same cost would be allowed,
// also from a fractional token count, where the refill rounds apart from a
// plain ceil((cost-tokens)/r): waiting exactly RetryAfter used to leave
// 0.99999… tokens, and the request was denied again with RetryAfter 1ns.
func TestLocalRetryAfterSufficesFromFractionalTokens(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(time.Time{})
	l := NewLocal("r", 80, 2, WithClock(clk))
	clk.Advance(2 * time.Millisecond)
	d, err := l.Allow(bg, "k", 1) // 2 -> 1 token
	require.NoError(t, err)
	require.True(t, d.Allowed)
	clk.Advance(2 * time.Millisecond) // +0.16
	d, err = l.Allow(bg, "k", 1)      // 1.16 -> 0.16
	require.NoError(t, err)
	require.True(t, d.Allowed)
	d, err = l.Allow(bg, "k", 1)
	require.NoError(t, err)
	require.False(t, d.Allowed)
	// 0.84 tokens at 80/s, to the microsecond: in floating point the bucket
	// holds a hair under 0.16 tokens, and needs 10.500001ms.
	require.Equal(t, 10500*time.Microsecond, roundDecision(d).RetryAfter)

	clk.Advance(d.RetryAfter)
	d2, err := l.Allow(bg, "k", 1)
	require.NoError(t, err)
	require.True(t, d2.Allowed, "denied after waiting RetryAfter %v; new RetryAfter %v", d.RetryAfter, d2.RetryAfter)
}

// A randomized check of RetryAfter over many rates, bursts and histories,
// seeded so that it is deterministic: after any history, a request denied
// with RetryAfter d is allowed when it comes back after d and denied when it
// comes back a nanosecond early. Each probe runs on its own limiter that went
// through the same history, so that no probe's refill perturbs the bucket
// another probe reads.
func TestLocalRetryAfterIsExact(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	type op struct {
		advance time.Duration
		cost    int
	}
	const trials = 3000
	for trial := range trials {
		r := rate.Limit(math.Pow(10, -2+rng.Float64()*10)) // 0.01 to 1e8 per second
		if rng.IntN(4) == 0 {
			r = rate.Limit(float64(1+rng.IntN(1000)) / float64(1+rng.IntN(100)))
		}
		burst := 1 + rng.IntN(10)
		if rng.IntN(4) == 0 {
			burst = 1 + rng.IntN(1000)
		}
		// Advances around the time one token takes, so that buckets hold
		// fractions of tokens.
		perToken := float64(time.Second) / float64(r)
		history := make([]op, 1+rng.IntN(12))
		for i := range history {
			history[i] = op{
				advance: time.Duration(rng.Float64() * 2 * perToken),
				cost:    rng.IntN(burst + 1),
			}
		}
		cost := 1 + rng.IntN(burst)
		// replay returns a limiter and its clock after history and the
		// decision on a request for cost that ends it.
		replay := func() (*Local, *clock.Fake, Decision) {
			clk := clock.NewFake(time.Time{})
			l := NewLocal("prop", r, burst, WithClock(clk))
			for _, o := range history {
				clk.Advance(o.advance)
				_, err := l.Allow(bg, "k", o.cost)
				require.NoError(t, err)
			}
			d, err := l.Allow(bg, "k", cost)
			require.NoError(t, err)
			return l, clk, d
		}
		probe := func(wait time.Duration) Decision {
			l, clk, _ := replay()
			clk.Advance(wait)
			d, err := l.Allow(bg, "k", cost)
			require.NoError(t, err)
			return d
		}
		_, _, d := replay()
		msg := fmt.Sprintf("trial %d: rate %v, burst %d, history %v, cost %d, decision %+v", trial, r, burst, history, cost, d)
		if !d.Allowed {
			require.Positive(t, d.RetryAfter, msg)
			require.True(t, probe(d.RetryAfter).Allowed, "denied after RetryAfter; %s", msg)
			require.False(t, probe(d.RetryAfter-1).Allowed, "allowed 1ns before RetryAfter; %s", msg)
		} else {
			require.Zero(t, d.RetryAfter, msg)
		}
	}
}

func TestLocalKeysAreIndependent(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(time.Time{})
	l := NewLocal("keys", 1, 2, WithClock(clk))
	for _, key := range []string{"a", "b", "", "a much longer key " + string(make([]byte, 4096))} {
		for i := range 3 {
			d, err := l.Allow(bg, key, 1)
			require.NoError(t, err)
			require.Equal(t, i < 2, d.Allowed, "key %.10q call %d", key, i)
		}
	}
	require.Equal(t, 4, l.Len())
}

func TestLocalCostErrors(t *testing.T) {
	t.Parallel()
	l := NewLocal("cost", 10, 5, WithPolicy("p"))
	d, err := l.Allow(bg, "k", 6)
	require.ErrorIs(t, err, ErrCostExceedsLimit)
	require.Equal(t, Decision{Policy: "p", Limit: 5, Window: 500 * time.Millisecond}, d)
	_, err = l.Allow(bg, "k", -1)
	require.ErrorIs(t, err, ErrInvalidCost)
	require.ErrorIs(t, l.WaitN(bg, "k", 6), ErrCostExceedsLimit)
	require.Equal(t, 0, l.Len(), "a refused cost creates no key")
}

func TestLocalInf(t *testing.T) {
	t.Parallel()
	l := NewLocal("inf", rate.Inf, 3)
	for range 100 {
		d, err := l.Allow(bg, "k", 50)
		require.NoError(t, err)
		require.Equal(t, Decision{Allowed: true, Policy: DefaultPolicy, Limit: 3, Remaining: 3}, d)
	}
	require.NoError(t, l.WaitN(bg, "k", 1000))
}

func TestNewLocalPanicsOnUselessConfig(t *testing.T) {
	t.Parallel()
	require.Panics(t, func() { NewLocal("x", 0, 1) })
	require.Panics(t, func() { NewLocal("x", -1, 1) })
	require.Panics(t, func() { NewLocal("x", 1, 0) })
}

// keysInShard returns n keys that hash to shard 0 of l.
func keysInShard(l *Local, n int) []string {
	var keys []string
	for i := 0; len(keys) < n; i++ {
		k := "key-" + strconv.Itoa(i)
		if s, _ := l.shard(k); s == &l.shards[0] {
			keys = append(keys, k)
		}
	}
	return keys
}

func remembered(l *Local, key string) bool {
	s, h := l.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.keys[h]
	return ok
}

func TestLocalEvictionPrefersFullBuckets(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(time.Time{})
	l := NewLocal("evict", 1, 5, WithClock(clk), WithMaxKeys(4*numShards))
	require.Equal(t, 4, l.shards[0].max)
	k := keysInShard(l, 6)
	allow := func(key string, cost int) Decision {
		d, err := l.Allow(bg, key, cost)
		require.NoError(t, err)
		return d
	}
	allow(k[0], 5) // least recently used, empty
	allow(k[1], 1)
	clk.Advance(time.Second) // k[1] is full again: safe to forget
	allow(k[2], 1)
	allow(k[3], 1)
	allow(k[4], 1) // shard full: k[1] goes though k[0] is older
	require.False(t, remembered(l, k[1]))
	require.True(t, remembered(l, k[0]))
	require.Equal(t, 0, allow(k[0], 1).Remaining, "k[0] kept its bucket, with the one token a second gave it")

	// No bucket is full now: the least recently used key goes.
	allow(k[5], 1)
	require.False(t, remembered(l, k[2]), "LRU order after k[0] was touched: k[2], k[3], k[4], k[0]")
	for _, key := range []string{k[0], k[3], k[4], k[5]} {
		require.True(t, remembered(l, key), key)
	}
	require.Equal(t, 4, len(l.shards[0].keys))
}

// TestLocalMemoryBound sends 1,000,000 distinct keys through a limiter bounded
// to 10,000 keys: the key count never exceeds the bound and the heap the
// limiter holds stays under 256 bytes per key of the bound (2.56 MB), which is
// what DefaultMaxKeys's doc promises.
func TestLocalMemoryBound(t *testing.T) {
	const (
		maxKeys     = 10_000
		distinct    = 1_000_000
		bytesPerKey = 256
	)
	clk := clock.NewFake(time.Time{})
	before := heapInUse()
	l := NewLocal("memory", 100, 10, WithClock(clk), WithMaxKeys(maxKeys))
	buf := make([]byte, 0, 32)
	for i := range distinct {
		buf = strconv.AppendInt(append(buf[:0], "client-"...), int64(i), 10)
		d, err := l.Allow(bg, string(buf), 1)
		require.NoError(t, err)
		require.True(t, d.Allowed, "a new key starts with a full bucket")
		if i%(distinct/10) == 0 {
			clk.Advance(time.Second) // let some buckets refill
			require.LessOrEqual(t, l.Len(), maxKeys)
		}
	}
	require.Equal(t, maxKeys, l.Len())
	after := heapInUse()
	used := int64(after) - int64(before)
	t.Logf("heap held by %d keys: %d bytes (%.0f bytes/key)", l.Len(), used, float64(used)/maxKeys)
	require.Less(t, used, int64(maxKeys*bytesPerKey))
	runtime.KeepAlive(l)
}

func heapInUse() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func TestLocalConcurrentNeverExceedsBurst(t *testing.T) {
	t.Parallel()
	const (
		keys       = 16
		burst      = 50
		goroutines = 64
	)
	for _, maxKeys := range []int{DefaultMaxKeys, numShards} { // the second one evicts all the time
		clk := clock.NewFake(time.Time{})
		l := NewLocal("race", 1, burst, WithClock(clk), WithMaxKeys(maxKeys))
		var allowed [keys]atomic.Int64
		var wg sync.WaitGroup
		for g := range goroutines {
			wg.Go(func() {
				for i := range 200 {
					k := (g + i) % keys
					d, err := l.Allow(bg, "k"+strconv.Itoa(k), 1)
					if err != nil {
						panic(err)
					}
					if d.Allowed {
						allowed[k].Add(1)
					}
				}
			})
		}
		wg.Wait()
		for k := range allowed {
			if maxKeys == DefaultMaxKeys {
				require.Equal(t, int64(burst), allowed[k].Load(), "key %d", k)
			} else {
				require.GreaterOrEqual(t, allowed[k].Load(), int64(burst), "eviction only ever loosens")
			}
		}
		require.LessOrEqual(t, l.Len(), maxKeys)
	}
}

func TestLocalWait(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(time.Time{})
	l := NewLocal("wait", 1, 1, WithClock(clk))
	require.NoError(t, l.Wait(bg, "k")) // the burst: no timer
	require.Equal(t, 0, clk.Created())
	done := make(chan error, 1)
	go func() { done <- l.Wait(bg, "k") }()
	clk.WaitForTimers(1)
	clk.Advance(999 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("Wait returned early: %v", err)
	default:
	}
	clk.Advance(time.Millisecond)
	require.NoError(t, <-done)
	d, err := l.Allow(bg, "k", 1)
	require.NoError(t, err)
	require.False(t, d.Allowed, "the waiter spent the token")
}

func TestLocalWaitCanceledReturnsTokens(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(time.Time{})
	l := NewLocal("wait", 1, 1, WithClock(clk))
	require.NoError(t, l.Wait(bg, "k"))
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error, 1)
	go func() { done <- l.Wait(ctx, "k") }()
	clk.WaitForTimers(1)
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	require.Equal(t, 0, clk.Pending(), "the timer was stopped")
	clk.Advance(time.Second)
	d, err := l.Allow(bg, "k", 1)
	require.NoError(t, err)
	require.True(t, d.Allowed, "the canceled reservation gave its token back")

	require.ErrorIs(t, l.Wait(ctx, "k"), context.Canceled, "a done context does not reserve")
}

func TestLocalWaitDeadlineTooShort(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(time.Now())
	l := NewLocal("wait", rate.Every(2*time.Hour), 1, WithClock(clk))
	require.NoError(t, l.Wait(bg, "k"))
	ctx, cancel := context.WithTimeout(bg, time.Hour)
	defer cancel()
	err := l.Wait(ctx, "k")
	require.ErrorIs(t, err, ErrLimited)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	h, ok := bulwark.HintOf(err)
	require.True(t, ok)
	require.Equal(t, 2*time.Hour, h.RetryAfter)
	require.Equal(t, 0, clk.Created(), "no timer for a wait that cannot succeed")
	clk.Advance(2 * time.Hour)
	d, err := l.Allow(bg, "k", 1)
	require.NoError(t, err)
	require.True(t, d.Allowed, "the refused wait spent nothing")
}

func TestLocalDoAndFor(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(time.Time{})
	l := NewLocal("do", 2, 1, WithClock(clk))
	var calls int
	fn := func(context.Context) error { calls++; return nil }
	var p bulwark.Policy = l
	require.NoError(t, p.Do(bg, fn))
	err := p.Do(bg, fn)
	require.ErrorIs(t, err, ErrLimited)
	var le *LimitedError
	require.True(t, errors.As(err, &le))
	require.Equal(t, 500*time.Millisecond, le.Decision.RetryAfter)
	h, ok := bulwark.HintOf(err)
	require.True(t, ok)
	require.Equal(t, bulwark.Hint{RetryAfter: 500 * time.Millisecond}, h)
	require.Equal(t, 1, calls)

	other := For(l, "other")
	require.NoError(t, other.Do(bg, fn), "another key has its own bucket")
	require.ErrorIs(t, other.Do(bg, fn), ErrLimited)
	require.Equal(t, 2, calls)

	boom := errors.New("boom")
	clk.Advance(time.Second)
	require.Equal(t, boom, l.Do(bg, func(context.Context) error { return boom }))
}

func TestLimitedError(t *testing.T) {
	t.Parallel()
	e := &LimitedError{Decision: Decision{Policy: "api", RetryAfter: 1500 * time.Millisecond}}
	require.Equal(t, `ratelimit: rate limited (policy "api"), retry after 1.5s`, e.Error())
	require.ErrorIs(t, e, ErrLimited)
	require.NotErrorIs(t, e, ErrCostExceedsLimit)
	require.Nil(t, e.Unwrap())
	e.Err = context.DeadlineExceeded
	require.ErrorIs(t, e, context.DeadlineExceeded)
	require.Contains(t, e.Error(), "context deadline exceeded")
	var _ bulwark.Hinter = e
}

func TestLocalMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewPedanticRegistry()
	clk := clock.NewFake(time.Time{})
	a := NewLocal("a", 1, 2, WithClock(clk), WithRegisterer(reg))
	b := NewLocal("b", 1, 2, WithClock(clk), WithRegisterer(reg))
	for range 3 {
		_, err := a.Allow(bg, "k", 1)
		require.NoError(t, err)
	}
	_, err := b.Allow(bg, "k", 1)
	require.NoError(t, err)
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP bulwark_ratelimit_decisions_total Rate limit decisions by outcome: allowed, denied, or error (the store failed and the failure mode decided).
# TYPE bulwark_ratelimit_decisions_total counter
bulwark_ratelimit_decisions_total{decision="allowed",name="a"} 2
bulwark_ratelimit_decisions_total{decision="denied",name="a"} 1
bulwark_ratelimit_decisions_total{decision="error",name="a"} 0
bulwark_ratelimit_decisions_total{decision="allowed",name="b"} 1
bulwark_ratelimit_decisions_total{decision="denied",name="b"} 0
bulwark_ratelimit_decisions_total{decision="error",name="b"} 0
`), "bulwark_ratelimit_decisions_total"))
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
	require.Equal(t, 6, testutil.CollectAndCount(reg, "bulwark_ratelimit_decisions_total"))
	runtime.KeepAlive(a) // collectors hold limiters weakly
	runtime.KeepAlive(b)
}

// A cancelled WaitN gives its tokens back only to the bucket it reserved
// from. When its key was forgotten and the entry was reused, by another key
// and then by the same key again, the bucket is a new one: giving the tokens
// back there would invent them.
func TestLocalWaitCanceledAfterEntryReuseInventsNothing(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(time.Time{})
	l := NewLocal("reuse", 1, 2, WithClock(clk), WithMaxKeys(numShards))
	require.Equal(t, 1, l.shards[0].max)
	k := keysInShard(l, 2)
	allow := func(key string, cost int) Decision {
		d, err := l.Allow(bg, key, cost)
		require.NoError(t, err)
		return d
	}
	require.True(t, allow(k[0], 2).Allowed)
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error, 1)
	go func() { done <- l.WaitN(ctx, k[0], 1) }()
	clk.WaitForTimers(1) // k[0] holds -1 token: a reservation
	allow(k[1], 1)       // k[0] is forgotten, its entry now serves k[1]
	// and k[0] again, with a new full bucket
	require.True(t, allow(k[0], 2).Allowed)
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	require.False(t, allow(k[0], 1).Allowed, "no time passed: the new bucket is empty")
}

// WaitN with n of 0 returns at once, as documented, even while earlier
// waiters hold reservations that leave the bucket below zero.
func TestLocalWaitZeroReturnsAtOnce(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(time.Time{})
	l := NewLocal("zero", 1, 1, WithClock(clk))
	require.NoError(t, l.Wait(bg, "k"))
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- l.Wait(ctx, "k") }()
	clk.WaitForTimers(1) // the bucket holds -1 token
	zero := make(chan error, 1)
	go func() { zero <- l.WaitN(bg, "k", 0) }()
	select {
	case err := <-zero:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		clk.Advance(time.Hour) // release both waiters before failing
		<-zero
		t.Fatal("WaitN(0) waited for the reservations ahead of it")
	}
	clk.Advance(time.Second)
	require.NoError(t, <-done)
}

// Registering metrics keeps no strong reference to the limiter: a limiter
// nobody uses is collected, and its name leaves the output.
func TestLocalMetricsLetTheLimiterGo(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewPedanticRegistry()
	l := NewLocal("gone", 1, 1, WithRegisterer(reg))
	_, err := l.Allow(bg, "k", 1)
	require.NoError(t, err)
	require.Equal(t, 3, testutil.CollectAndCount(reg, "bulwark_ratelimit_decisions_total"))
	w := weak.Make(l)
	l = nil
	gctest.Collect(t, w)
	require.Zero(t, testutil.CollectAndCount(reg, "bulwark_ratelimit_decisions_total"))
}

// Decisions are counted in the shard of their key; the counts of all the
// shards add up to every decision, under concurrency.
func TestLocalMetricsCountEveryDecision(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewPedanticRegistry()
	l := NewLocal("many", 1, 50, WithRegisterer(reg), WithClock(clock.NewFake(time.Time{})))
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 100 {
				_, err := l.Allow(bg, strconv.Itoa(g*100+i%10), 1)
				require.NoError(t, err)
			}
		})
	}
	wg.Wait()
	// 160 keys, 10 decisions each, a burst of 50: all allowed.
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP bulwark_ratelimit_decisions_total Rate limit decisions by outcome: allowed, denied, or error (the store failed and the failure mode decided).
# TYPE bulwark_ratelimit_decisions_total counter
bulwark_ratelimit_decisions_total{decision="allowed",name="many"} 1600
bulwark_ratelimit_decisions_total{decision="denied",name="many"} 0
bulwark_ratelimit_decisions_total{decision="error",name="many"} 0
`), "bulwark_ratelimit_decisions_total"))
	runtime.KeepAlive(l) // collectors hold limiters weakly
}

// A cost of 0 only reads: it is not a decision for the metrics, and a key
// the limiter does not know is neither remembered nor allowed to push a
// remembered key out.
func TestLocalZeroCostOnlyReads(t *testing.T) {
	t.Parallel()
	for _, r := range []rate.Limit{1, rate.Inf} {
		reg := prometheus.NewPedanticRegistry()
		clk := clock.NewFake(time.Time{})
		l := NewLocal("peek", r, 2, WithClock(clk), WithRegisterer(reg), WithMaxKeys(1))
		_, err := l.Allow(bg, "spent", 1)
		require.NoError(t, err)
		for i := range 100 {
			d, err := l.Allow(bg, fmt.Sprintf("unknown-%d", i), 0)
			require.NoError(t, err)
			require.True(t, d.Allowed)
			require.Equal(t, 2, d.Remaining, "an unknown key reads as a full bucket")
			require.Zero(t, d.Reset)
			require.NoError(t, l.WaitN(bg, fmt.Sprintf("unknown-%d", i), 0))
		}
		d, err := l.Allow(bg, "spent", 0)
		require.NoError(t, err)
		if r == rate.Inf {
			require.Equal(t, 2, d.Remaining)
			require.Zero(t, l.Len())
		} else {
			require.Equal(t, 1, d.Remaining, "the spent key is still remembered")
			require.Equal(t, time.Second, d.Reset)
			require.Equal(t, 1, l.Len())
		}
		require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP bulwark_ratelimit_decisions_total Rate limit decisions by outcome: allowed, denied, or error (the store failed and the failure mode decided).
# TYPE bulwark_ratelimit_decisions_total counter
bulwark_ratelimit_decisions_total{decision="allowed",name="peek"} 1
bulwark_ratelimit_decisions_total{decision="denied",name="peek"} 0
bulwark_ratelimit_decisions_total{decision="error",name="peek"} 0
`), "bulwark_ratelimit_decisions_total"), "r = %v", r)
		runtime.KeepAlive(l)
	}
}

// Decision.Remaining is documented as never negative. With a burst near
// math.MaxInt the bucket's float64 tokens round up to 2^63, and int(tokens)
// overflows to math.MinInt64 (on amd64): a full bucket reports a hugely
// negative Remaining, which an adapter puts in the RateLimit header as r=.
func TestLocalRemainingNeverNegativeWithLargestBurst(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	l := NewLocal("huge", 1, math.MaxInt, WithClock(clk))
	for _, cost := range []int{0, 1} {
		d, err := l.Allow(bg, "k", cost)
		require.NoError(t, err)
		require.True(t, d.Allowed)
		require.GreaterOrEqual(t, d.Remaining, 0, "cost %d: Remaining must never be negative", cost)
	}
}
