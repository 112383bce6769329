package redisstore_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/idempotency/internal/storetest"
	"github.com/bulwark-go/bulwark/idempotency/redisstore"
	"github.com/bulwark-go/bulwark/internal/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var prefixes atomic.Int64

// uniquePrefix returns a key prefix no other test or process uses, and
// deletes its keys when the test ends.
func uniquePrefix(t testing.TB, addr string) string {
	p := fmt.Sprintf("bulwark-test:idem:%d:%d:", time.Now().UnixNano(), prefixes.Add(1))
	t.Cleanup(func() {
		c := redis.NewClient(&redis.Options{Addr: addr})
		defer c.Close()
		ctx := context.Background()
		iter := c.Scan(ctx, 0, p+"*", 1000).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
	})
	return p
}

func newClient(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true, PoolSize: 64})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestConformance(t *testing.T) {
	addr := testenv.RedisAddr(t)
	storetest.Run(t, storetest.Backend{
		Open: func(t *testing.T, clk clock.Clock) func() idempotency.Store {
			prefix := uniquePrefix(t, addr)
			return func() idempotency.Store {
				return redisstore.New(newClient(t, addr), redisstore.WithPrefix(prefix), redisstore.WithClock(clk))
			}
		},
		Dial: func(t *testing.T, clk clock.Clock, at string) idempotency.Store {
			c := redis.NewClient(&redis.Options{Addr: at, ContextTimeoutEnabled: true, MaxRetries: -1})
			t.Cleanup(func() { _ = c.Close() })
			return redisstore.New(c, redisstore.WithPrefix(uniquePrefix(t, addr)), redisstore.WithClock(clk))
		},
		Target: addr,
	})
}

// countingHook counts the commands (round trips) a client sends.
type countingHook struct{ n atomic.Int64 }

func (h *countingHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *countingHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}
func (h *countingHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// TestOneRoundTripPerOperation counts the commands each operation sends,
// once the scripts are in the server's cache.
func TestOneRoundTripPerOperation(t *testing.T) {
	addr := testenv.RedisAddr(t)
	c := newClient(t, addr)
	hook := &countingHook{}
	c.AddHook(hook)
	s := redisstore.New(c, redisstore.WithPrefix(uniquePrefix(t, addr)))
	ctx := context.Background()
	k1 := idempotency.DeriveKey("s", "POST", "/", "warm-up")
	// Warm up: load every script into the server's cache.
	r, err := s.Claim(ctx, k1, idempotency.Fingerprint{}, time.Minute)
	require.NoError(t, err)
	require.NoError(t, s.Extend(ctx, k1, r.Owner, time.Minute))
	require.NoError(t, s.Release(ctx, k1, r.Owner))
	r, err = s.Claim(ctx, k1, idempotency.Fingerprint{}, time.Minute)
	require.NoError(t, err)
	require.NoError(t, s.Complete(ctx, k1, r.Owner, idempotency.Response{Status: 200}, time.Minute))

	k := idempotency.DeriveKey("s", "POST", "/", "counted")
	step := func(name string, f func()) {
		t.Helper()
		before := hook.n.Load()
		f()
		require.EqualValues(t, 1, hook.n.Load()-before, name)
	}
	var owner idempotency.Token
	step("claim", func() {
		r, err := s.Claim(ctx, k, idempotency.Fingerprint{}, time.Minute)
		require.NoError(t, err)
		owner = r.Owner
	})
	step("claim in flight", func() {
		r, err := s.Claim(ctx, k, idempotency.Fingerprint{}, time.Minute)
		require.NoError(t, err)
		require.Equal(t, idempotency.InFlight, r.Status)
	})
	step("extend", func() { require.NoError(t, s.Extend(ctx, k, owner, time.Minute)) })
	step("complete", func() {
		require.NoError(t, s.Complete(ctx, k, owner, idempotency.Response{Status: 201, Body: []byte("x")}, time.Minute))
	})
	step("claim replay", func() {
		r, err := s.Claim(ctx, k, idempotency.Fingerprint{}, time.Minute)
		require.NoError(t, err)
		require.Equal(t, idempotency.Completed, r.Status)
	})
	step("release (rejected)", func() { require.ErrorIs(t, s.Release(ctx, k, owner), idempotency.ErrLeaseLost) })
}

// TestRawKeyNeverStored checks that Redis sees only the digest of a key.
func TestRawKeyNeverStored(t *testing.T) {
	addr := testenv.RedisAddr(t)
	c := newClient(t, addr)
	prefix := uniquePrefix(t, addr)
	g := idempotency.New("raw", redisstore.New(c, redisstore.WithPrefix(prefix)))
	ctx := context.Background()
	_, _, err := g.Do(ctx, idempotency.Request{Scope: "alice", Method: "POST", Route: "/pay", Key: "secret-client-key"},
		func(context.Context) (idempotency.Response, error) { return idempotency.Response{Status: 200}, nil })
	require.NoError(t, err)
	keys, err := c.Keys(ctx, prefix+"*").Result()
	require.NoError(t, err)
	require.Equal(t, []string{prefix + idempotency.DeriveKey("alice", "POST", "/pay", "secret-client-key").String()}, keys)
	ttl, err := c.PTTL(ctx, keys[0]).Result()
	require.NoError(t, err)
	require.InDelta(t, float64(idempotency.DefaultRetention), float64(ttl), float64(time.Minute), "native TTL is the retention")
}
