package redisrate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"weak"

	"github.com/bulwark-go/bulwark"
	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/internal/gctest"
	"github.com/bulwark-go/bulwark/internal/testenv"
	"github.com/bulwark-go/bulwark/ratelimit"
	"github.com/bulwark-go/bulwark/ratelimit/internal/rlmetrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/time/rate"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var bg = context.Background()

// newClient connects to addr with ContextTimeoutEnabled, as WithTimeout's doc
// asks, and closes the client when the test ends.
func newClient(tb testing.TB, addr string) *redis.Client {
	tb.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true, PoolSize: 128, MaxRetries: -1})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// testTimeout replaces DefaultTimeout in tests that are not about timeouts:
// 50 ms is plenty for a healthy Redis, but not for a shared 2-core machine
// running the race detector, where a timed-out decision would fail open and
// look like a wrong answer.
const testTimeout = 10 * time.Second

// testPrefix is a key prefix no other test (or helper sharing the server)
// uses; the test's keys are deleted when it ends.
func testPrefix(tb testing.TB, rdb *redis.Client) string {
	tb.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	p := "bulwark:test:redisrate:" + strings.ReplaceAll(tb.Name(), "/", "_") + ":" + hex.EncodeToString(b[:]) + ":"
	tb.Cleanup(func() {
		ctx := context.Background()
		iter := rdb.Scan(ctx, 0, p+"*", 100).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
	})
	return p
}

func allow(t *testing.T, l *Limiter, key string, cost int) ratelimit.Decision {
	t.Helper()
	d, err := l.Allow(bg, key, cost)
	require.NoError(t, err)
	return d
}

// gcraModel is the reference the script is checked against: the same
// algorithm, in Go, in integer microseconds.
type gcraModel struct {
	interval, burst, tat int64
}

func (m *gcraModel) allow(now, cost int64) (allowed bool, remaining, reset, retry int64) {
	tolerance := m.interval * m.burst
	tat := max(m.tat, now)
	newTAT := tat + m.interval*cost
	if wait := newTAT - tolerance - now; wait > 0 {
		return false, (tolerance - (tat - now)) / m.interval, tat - now, wait
	}
	if cost > 0 {
		m.tat = newTAT
	}
	return true, (tolerance - (newTAT - now)) / m.interval, newTAT - now, 0
}

// TestScriptMatchesModel drives the real script with explicit times (the
// test-only fourth argument) and checks every reply against gcraModel, and
// the model's GCRA properties: a full burst is admitted at once, then exactly
// one unit per interval.
func TestScriptMatchesModel(t *testing.T) {
	t.Parallel()
	rdb := newClient(t, testenv.RedisAddr(t))
	prefix := testPrefix(t, rdb)
	l := New("model", rdb, 10, 5, WithKeyPrefix(prefix), WithTimeout(testTimeout)) // 100 ms per unit
	start := time.Now()
	m := &gcraModel{interval: 100_000, burst: 5}
	check := func(at time.Duration, cost int) bool {
		t.Helper()
		now := start.Add(at)
		d, err := l.decide(bg, "k", cost, &now)
		require.NoError(t, err)
		ok, rem, reset, retry := m.allow(now.UnixMicro(), int64(cost))
		require.Equal(t, ratelimit.Decision{
			Allowed: ok, Policy: ratelimit.DefaultPolicy, Limit: 5, Window: 500 * time.Millisecond,
			Remaining: int(rem), Reset: time.Duration(reset) * time.Microsecond, RetryAfter: time.Duration(retry) * time.Microsecond,
		}, d, "at %v cost %d", at, cost)
		return d.Allowed
	}

	for i := range 5 {
		require.True(t, check(0, 1), "burst unit %d", i)
	}
	require.False(t, check(0, 1))
	// From here on exactly one unit per 100 ms.
	for p := 1; p <= 20; p++ {
		at := time.Duration(p) * 100 * time.Millisecond
		require.False(t, check(at-time.Millisecond, 1), "period %d early", p)
		require.True(t, check(at, 1), "period %d", p)
		require.False(t, check(at, 1), "period %d second", p)
	}
	// A pseudo-random walk of costs and steps, always within the key's TTL.
	at := 2 * time.Second
	seed := uint32(7)
	for range 300 {
		seed = seed*1664525 + 1013904223
		at += time.Duration(seed%150_000) * time.Microsecond
		check(at, int(seed>>24)%4)
	}
}

func TestDecisionAndKeyTTL(t *testing.T) {
	t.Parallel()
	rdb := newClient(t, testenv.RedisAddr(t))
	prefix := testPrefix(t, rdb)
	l := New("ttl", rdb, 1, 10, WithKeyPrefix(prefix), WithPolicy("api"), WithTimeout(testTimeout))
	d := allow(t, l, "user:1", 3)
	require.True(t, d.Allowed)
	require.Equal(t, "api", d.Policy)
	require.Equal(t, 10, d.Limit)
	require.Equal(t, 10*time.Second, d.Window)
	require.Equal(t, 7, d.Remaining)
	require.Equal(t, 3*time.Second, d.Reset)
	require.Zero(t, d.RetryAfter)
	ttl := rdb.PTTL(bg, l.redisKey("user:1")).Val()
	require.LessOrEqual(t, ttl, 3*time.Second, "the key expires when the bucket is full again")
	require.Greater(t, ttl, 2*time.Second)

	peek := allow(t, l, "user:2", 0)
	require.Equal(t, 10, peek.Remaining)
	require.Zero(t, rdb.Exists(bg, l.redisKey("user:2")).Val(), "a cost of 0 writes nothing")
}

func TestDeniedWritesNothing(t *testing.T) {
	t.Parallel()
	rdb := newClient(t, testenv.RedisAddr(t))
	prefix := testPrefix(t, rdb)
	l := New("denied", rdb, rate.Every(time.Hour), 2, WithKeyPrefix(prefix), WithTimeout(testTimeout))
	require.True(t, allow(t, l, "k", 2).Allowed)
	key := l.redisKey("k")
	before := rdb.Get(bg, key).Val()
	ttl := rdb.PTTL(bg, key).Val()
	for range 5 {
		d := allow(t, l, "k", 1)
		require.False(t, d.Allowed)
		require.InDelta(t, float64(time.Hour), float64(d.RetryAfter), float64(time.Second))
	}
	require.Equal(t, before, rdb.Get(bg, key).Val())
	require.LessOrEqual(t, rdb.PTTL(bg, key).Val(), ttl, "a denial does not extend the TTL")
}

// TestTwoReplicasShareOneLimit runs two limiters, each with its own client as
// two replicas would, on one key for about a second: together they admit no
// more than the burst plus the rate times the elapsed time (plus one burst of
// slack), and not much less.
func TestTwoReplicasShareOneLimit(t *testing.T) {
	t.Parallel()
	const (
		r     = 100
		burst = 10
	)
	addr := testenv.RedisAddr(t)
	a, b := newClient(t, addr), newClient(t, addr)
	prefix := testPrefix(t, a)
	replicas := []*Limiter{
		New("shared", a, r, burst, WithKeyPrefix(prefix), WithTimeout(testTimeout)),
		New("shared", b, r, burst, WithKeyPrefix(prefix), WithTimeout(testTimeout)),
	}
	var admitted, attempts, failures atomic.Int64
	start := time.Now()
	deadline := start.Add(time.Second)
	var wg sync.WaitGroup
	for g := range 16 {
		l := replicas[g%2]
		wg.Go(func() {
			for time.Now().Before(deadline) {
				d, err := l.Allow(bg, "tenant", 1)
				attempts.Add(1)
				if err != nil {
					failures.Add(1)
					continue
				}
				if d.Allowed {
					admitted.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	upper := burst + int64(elapsed.Seconds()*r) + burst
	lower := int64(elapsed.Seconds()*r) - burst
	t.Logf("%d of %d admitted in %v (bounds %d..%d)", admitted.Load(), attempts.Load(), elapsed, lower, upper)
	require.Zero(t, failures.Load())
	require.LessOrEqual(t, admitted.Load(), upper)
	require.GreaterOrEqual(t, admitted.Load(), lower)
}

// commandCounter is a go-redis hook that records every command sent.
type commandCounter struct {
	mu    sync.Mutex
	names []string
}

func (c *commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.mu.Lock()
		c.names = append(c.names, cmd.Name())
		c.mu.Unlock()
		return next(ctx, cmd)
	}
}

func (c *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.mu.Lock()
		for _, cmd := range cmds {
			c.names = append(c.names, "pipeline:"+cmd.Name())
		}
		c.mu.Unlock()
		return next(ctx, cmds)
	}
}

func (c *commandCounter) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.names
	c.names = nil
	return n
}

func TestOneRoundTripPerDecision(t *testing.T) {
	t.Parallel()
	rdb := newClient(t, testenv.RedisAddr(t))
	prefix := testPrefix(t, rdb)
	counter := &commandCounter{}
	rdb.AddHook(counter)
	l := New("trips", rdb, 1, 5, WithKeyPrefix(prefix), WithTimeout(testTimeout))

	// The very first decision may find the script missing on the server:
	// EVALSHA, then EVAL, which caches it. (It also opens the connection,
	// whose handshake the hook sees too.)
	allow(t, l, "warm", 1)
	var first []string
	for _, n := range counter.take() {
		if n != "hello" && !strings.HasPrefix(n, "pipeline:") {
			first = append(first, n)
		}
	}
	require.NotEmpty(t, first)
	require.LessOrEqual(t, len(first), 2, "%v", first)
	require.Equal(t, "evalsha", first[0])

	var allowed, denied int
	for i := range 40 {
		d := allow(t, l, "k"+string(rune('a'+i%4)), 1)
		if d.Allowed {
			allowed++
		} else {
			denied++
		}
	}
	require.Positive(t, allowed)
	require.Positive(t, denied)
	names := counter.take()
	require.Len(t, names, 40, "one command per decision, allowed or denied")
	for _, n := range names {
		require.Equal(t, "evalsha", n)
	}
}

// closedPort returns an address on which nothing listens.
func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

type modeCase struct {
	name  string
	mode  func() FailureMode
	check func(t *testing.T, d ratelimit.Decision, err error)
}

func modeCases() []modeCase {
	return []modeCase{
		{"fail open", FailOpen, func(t *testing.T, d ratelimit.Decision, err error) {
			require.NoError(t, err)
			require.Equal(t, ratelimit.Decision{Allowed: true, Policy: "default", Limit: 5, Window: 5 * time.Second}, d)
		}},
		{"fail closed", FailClosed, func(t *testing.T, d ratelimit.Decision, err error) {
			require.ErrorIs(t, err, ErrUnavailable)
			require.False(t, d.Allowed)
			require.Equal(t, 5, d.Limit)
		}},
		{"fallback local", func() FailureMode {
			return FallbackLocal(ratelimit.NewLocal("fallback", 1, 1))
		}, func(t *testing.T, d ratelimit.Decision, err error) {
			require.NoError(t, err)
			require.Equal(t, 1, d.Limit, "the local limiter decided")
		}},
	}
}

// A call whose own context has ended gets the context's error and is not
// counted: decision="error" means the store failed and the failure mode
// decided.
func TestRedisCallerContextEndedIsNotAnError(t *testing.T) {
	t.Parallel()
	l := New("caller-gone", newClient(t, closedPort(t)), 1, 5, WithFailureMode(FailOpen()), WithRegisterer(prometheus.NewPedanticRegistry()))
	ctx, cancel := context.WithCancel(bg)
	cancel()
	d, err := l.Allow(ctx, "k", 1)
	require.ErrorIs(t, err, context.Canceled)
	require.False(t, d.Allowed)
	require.Zero(t, l.counts.Load(rlmetrics.Error))
}

func TestRedisUnreachable(t *testing.T) {
	t.Parallel()
	addr := closedPort(t)
	for _, tc := range modeCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := prometheus.NewPedanticRegistry()
			l := New("down", newClient(t, addr), 1, 5, WithTimeout(200*time.Millisecond),
				WithFailureMode(tc.mode()), WithRegisterer(reg))
			start := time.Now()
			d, err := l.Allow(bg, "k", 1)
			require.Less(t, time.Since(start), time.Second)
			tc.check(t, d, err)
			require.Equal(t, 1.0, float64(l.counts.Load(rlmetrics.Error)))
			require.Zero(t, float64(l.counts.Load(rlmetrics.Allowed)))
		})
	}
}

// While Redis is away, a cost that the fallback's burst cannot hold but
// Redis's can is an ordinary denial for now, not ErrCostExceedsLimit (which
// says retrying can never help): Redis's policy with its answer for a drained
// bucket, counted only as the limiter's error. The fallback's bucket is left
// alone, and a cost above Redis's burst is still refused for good. The
// fallback's clock is fake, so nothing refills between the decisions.
func TestFallbackDeniesCostAboveItsBurstForNow(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewPedanticRegistry()
	local := ratelimit.NewLocal("fallback", 1, 2, ratelimit.WithClock(clock.NewFake(time.Time{})), ratelimit.WithRegisterer(reg))
	// 100 ms per unit; any failure to reach Redis goes to the fallback, so
	// the default timeout cannot make this flaky.
	l := New("down", newClient(t, closedPort(t)), 10, 5, WithFailureMode(FallbackLocal(local)), WithRegisterer(reg))

	d, err := l.Allow(bg, "k", 3)
	require.NoError(t, err, "a cost within Redis's burst can be allowed once Redis is back")
	require.Equal(t, ratelimit.Decision{
		Allowed: false, Policy: ratelimit.DefaultPolicy, Limit: 5, Window: 500 * time.Millisecond,
		Remaining: 0, Reset: 500 * time.Millisecond, RetryAfter: 300 * time.Millisecond,
	}, d, "Redis's answer for a drained bucket")
	err = ratelimit.For(l, "k").Do(bg, func(context.Context) error { return nil })
	require.NoError(t, err, "the fallback's bucket is still full")

	d, err = l.Allow(bg, "k", 2)
	require.NoError(t, err)
	require.False(t, d.Allowed, "the fallback decides costs within its burst")
	require.Equal(t, 2, d.Limit)
	require.Equal(t, time.Second, d.RetryAfter)

	_, err = l.Allow(bg, "k", 6)
	require.ErrorIs(t, err, ratelimit.ErrCostExceedsLimit, "above Redis's burst no retry can help")

	d, err = l.Allow(bg, "k", 0)
	require.NoError(t, err, "a look at the state is answered by the fallback")
	require.Equal(t, 1, d.Remaining)

	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP bulwark_ratelimit_decisions_total Rate limit decisions by outcome: allowed, denied, or error (the store failed and the failure mode decided).
# TYPE bulwark_ratelimit_decisions_total counter
bulwark_ratelimit_decisions_total{decision="allowed",name="down"} 0
bulwark_ratelimit_decisions_total{decision="denied",name="down"} 0
bulwark_ratelimit_decisions_total{decision="error",name="down"} 3
bulwark_ratelimit_decisions_total{decision="allowed",name="fallback"} 1
bulwark_ratelimit_decisions_total{decision="denied",name="fallback"} 1
bulwark_ratelimit_decisions_total{decision="error",name="fallback"} 0
`), "bulwark_ratelimit_decisions_total"))
}

// proxy forwards TCP connections to a Redis server; closing it is Redis
// going away for the clients behind it, and stalling it is Redis hanging,
// without touching the shared server.
type proxy struct {
	ln     net.Listener
	target string
	stall  atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
	closed bool
	wg     sync.WaitGroup
}

func startProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &proxy{ln: ln, target: target}
	p.wg.Go(p.serve)
	t.Cleanup(p.Close)
	return p
}

func (p *proxy) Addr() string { return p.ln.Addr().String() }

func (p *proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = c.Close()
		return false
	}
	p.conns = append(p.conns, c)
	return true
}

func (p *proxy) serve() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(in) {
			return
		}
		if p.stall.Load() { // read and never answer
			p.wg.Go(func() { _, _ = io.Copy(io.Discard, in) })
			continue
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = in.Close()
			continue
		}
		if !p.track(out) {
			return
		}
		p.wg.Go(func() { _, _ = io.Copy(out, in); _ = out.Close() })
		p.wg.Go(func() { _, _ = io.Copy(in, out); _ = in.Close() })
	}
}

// Close stops accepting, drops every connection and waits for the copies.
func (p *proxy) Close() {
	_ = p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func TestRedisStoppedMidTest(t *testing.T) {
	t.Parallel()
	addr := testenv.RedisAddr(t)
	for _, tc := range modeCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := startProxy(t, addr)
			rdb := newClient(t, p.Addr())
			prefix := testPrefix(t, newClient(t, addr))
			// Redis decides through a patient twin of l (same name, client
			// and prefix), so that a loaded machine cannot turn these into
			// failures; l's short timeout is for the outage below.
			healthy := New("stopped", rdb, 1, 5, WithKeyPrefix(prefix), WithTimeout(testTimeout), WithFailureMode(FailClosed()))
			l := New("stopped", rdb, 1, 5, WithKeyPrefix(prefix), WithTimeout(200*time.Millisecond), WithFailureMode(tc.mode()))
			for i := range 3 {
				d := allow(t, healthy, "k", 1)
				require.True(t, d.Allowed)
				require.Equal(t, 4-i, d.Remaining, "Redis decided")
			}
			p.Close()
			for range 3 {
				start := time.Now()
				d, err := l.Allow(bg, "k", 1)
				require.Less(t, time.Since(start), time.Second)
				tc.check(t, d, err)
			}
			require.Equal(t, 3.0, float64(l.counts.Load(rlmetrics.Error)))
		})
	}
}

func TestRedisHangsBeyondTimeout(t *testing.T) {
	t.Parallel()
	p := startProxy(t, testenv.RedisAddr(t))
	p.stall.Store(true)
	const timeout = 100 * time.Millisecond
	l := New("hang", newClient(t, p.Addr()), 1, 5, WithTimeout(timeout), WithFailureMode(FailClosed()))
	start := time.Now()
	_, err := l.Allow(bg, "k", 1)
	elapsed := time.Since(start)
	require.ErrorIs(t, err, ErrUnavailable)
	ne, ok := errors.AsType[net.Error](err)
	require.True(t, errors.Is(err, context.DeadlineExceeded) || ok && ne.Timeout(), "%v", err)
	require.GreaterOrEqual(t, elapsed, timeout)
	require.Less(t, elapsed, timeout+500*time.Millisecond)
}

func TestCallerContextEndsDecision(t *testing.T) {
	t.Parallel()
	rdb := newClient(t, testenv.RedisAddr(t))
	l := New("ctx", rdb, 1, 5, WithKeyPrefix(testPrefix(t, rdb))) // fails open by default
	ctx, cancel := context.WithCancel(bg)
	cancel()
	d, err := l.Allow(ctx, "k", 1)
	require.ErrorIs(t, err, context.Canceled, "the caller's own cancellation is not a failure to fail open on")
	require.False(t, d.Allowed)
}

func TestCostErrorsNeedNoRedis(t *testing.T) {
	t.Parallel()
	l := New("cost", redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), 1, 5)
	_, err := l.Allow(bg, "k", 6)
	require.ErrorIs(t, err, ratelimit.ErrCostExceedsLimit)
	_, err = l.Allow(bg, "k", -1)
	require.ErrorIs(t, err, ratelimit.ErrInvalidCost)
	require.NoError(t, l.rdb.(*redis.Client).Close())
}

func TestNewPanicsOnBadConfig(t *testing.T) {
	t.Parallel()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rdb.Close()
	for _, f := range []func(){
		func() { New("x", rdb, 0, 1) },
		func() { New("x", rdb, rate.Inf, 1) },
		func() { New("x", rdb, 2e6, 1) },
		func() { New("x", rdb, 1, 0) },
		func() { New("x", nil, 1, 1) },
		func() { FallbackLocal(nil) },
	} {
		require.Panics(t, f)
	}
}

func TestRedisKey(t *testing.T) {
	t.Parallel()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rdb.Close()
	a := New("api", rdb, 1, 1)
	b := New("api:x", rdb, 1, 1, WithKeyPrefix("p:"))
	long := strings.Repeat("k", 1<<16)
	require.Equal(t, "bulwark:ratelimit:api:", a.redisKey("")[:22])
	require.Len(t, a.redisKey(long), len("bulwark:ratelimit:api:")+32)
	require.Equal(t, a.redisKey("k"), a.redisKey("k"))
	require.NotEqual(t, a.redisKey("k"), a.redisKey("k2"))
	require.True(t, strings.HasPrefix(b.redisKey("k"), "p:api:x:"))
}

func TestDoAndMetrics(t *testing.T) {
	t.Parallel()
	rdb := newClient(t, testenv.RedisAddr(t))
	reg := prometheus.NewPedanticRegistry()
	l := New("do", rdb, rate.Every(time.Hour), 1, WithKeyPrefix(testPrefix(t, rdb)), WithRegisterer(reg), WithTimeout(testTimeout))
	var calls int
	fn := func(context.Context) error { calls++; return nil }
	require.NoError(t, l.Do(bg, fn))
	err := l.Do(bg, fn)
	require.ErrorIs(t, err, ratelimit.ErrLimited)
	h, ok := bulwark.HintOf(err)
	require.True(t, ok)
	require.InDelta(t, float64(time.Hour), float64(h.RetryAfter), float64(time.Second))
	require.Equal(t, 1, calls)
	peek, perr := l.Allow(bg, "", 0) // a look, not a decision
	require.NoError(t, perr)
	require.Zero(t, peek.Remaining)
	require.Equal(t, 1.0, float64(l.counts.Load(rlmetrics.Allowed)))
	require.Equal(t, 1.0, float64(l.counts.Load(rlmetrics.Denied)))
	require.Equal(t, 1, testutil.CollectAndCount(reg, "bulwark_ratelimit_store_seconds"))
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
	// The local limiter's collectors are the same ones.
	local := ratelimit.NewLocal("local", 1, 1, ratelimit.WithRegisterer(reg))
	require.Equal(t, 6, testutil.CollectAndCount(reg, "bulwark_ratelimit_decisions_total"))
	runtime.KeepAlive(local) // collectors hold limiters weakly
	runtime.KeepAlive(l)
	require.False(t, errors.Is(err, ErrUnavailable))
}

func TestNoScriptFallsBackToEval(t *testing.T) {
	t.Parallel()
	rdb := newClient(t, testenv.RedisAddr(t))
	prefix := testPrefix(t, rdb)
	l := New("noscript", rdb, 1, 5, WithKeyPrefix(prefix), WithFailureMode(FailClosed()), WithTimeout(testTimeout))
	allow(t, l, "warm", 0) // open the connection before counting
	counter := &commandCounter{}
	rdb.AddHook(counter)
	l.shaArg = strings.Repeat("0", 40) // a digest the server cannot know
	d := allow(t, l, "k", 2)
	require.True(t, d.Allowed)
	require.Equal(t, 3, d.Remaining)
	require.Equal(t, []string{"evalsha", "eval"}, counter.take())
}

func TestCallerDeadlineBoundsDecision(t *testing.T) {
	t.Parallel()
	p := startProxy(t, testenv.RedisAddr(t))
	p.stall.Store(true)
	l := New("deadline", newClient(t, p.Addr()), 1, 5, WithTimeout(time.Minute))
	ctx, cancel := context.WithTimeout(bg, 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := l.Allow(ctx, "k", 1)
	require.ErrorIs(t, err, context.DeadlineExceeded, "the caller's deadline, not a failure to fail open on")
	require.Less(t, time.Since(start), time.Second)
}

// Registering metrics keeps no strong reference to the limiter: a limiter
// nobody uses is collected, and its name leaves the output.
func TestMetricsLetTheLimiterGo(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	t.Cleanup(func() { _ = rdb.Close() })
	reg := prometheus.NewPedanticRegistry()
	l := New("gone", rdb, 1, 5, WithRegisterer(reg))
	require.Equal(t, 3, testutil.CollectAndCount(reg, "bulwark_ratelimit_decisions_total"))
	w := weak.Make(l)
	l = nil
	gctest.Collect(t, w)
	require.Zero(t, testutil.CollectAndCount(reg, "bulwark_ratelimit_decisions_total"))
}

// The script computes in Redis's Lua numbers, doubles exact up to 2⁵³ µs
// since 1970. A window that took the sum past that gave wrong decisions (a
// full bucket of one a day with a burst of 200,000 denied its burst), and
// past 292 years a Window that wrapped around to a negative duration. New
// now refuses such a policy; the longest one it accepts decides exactly, as
// Local does.
func TestWindowWithinTheScriptsRange(t *testing.T) {
	t.Parallel()
	rdb := newClient(t, testenv.RedisAddr(t))
	require.PanicsWithValue(t, "redisrate: New(\"long\"): a burst of 200000 at rate 1.1574074074074073e-05 is a window of 17280000000000000 µs, over the 2⁵² µs the script computes exactly",
		func() { New("long", rdb, rate.Every(24*time.Hour), 200_000) })

	r, burst := rate.Every(24*time.Hour), 52_000 // 4.49e15 µs, just within 2⁵²
	l := New("long", rdb, r, burst, WithKeyPrefix(testPrefix(t, rdb)), WithTimeout(testTimeout))
	now := time.Date(2026, 11, 25, 23, 0, 0, 123457, time.UTC)
	d, err := l.decide(bg, "k", burst, &now)
	require.NoError(t, err)
	require.True(t, d.Allowed, "a full bucket allows its burst: %+v", d)
	require.Zero(t, d.Remaining)
	local := ratelimit.NewLocal("long", r, burst)
	dl, err := local.Allow(bg, "k", burst)
	require.NoError(t, err)
	require.True(t, dl.Allowed)
	require.Equal(t, dl.Window, d.Window, "same policy, same Window as Local")
	require.Positive(t, d.Window)
}
