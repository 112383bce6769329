package bench

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwark-go/bulwark/idempotency/redisstore"
	"github.com/bulwark-go/bulwark/internal/testenv"
	"github.com/bulwark-go/bulwark/ratelimit/redisrate"
	"github.com/go-redis/redis_rate/v10"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Redis benchmarks run against the real server named by
// BULWARK_TEST_REDIS_ADDR and are skipped when it is unset (bench/run sets
// it). Each runs serially and with 64 goroutines sharing one client whose
// pool has a connection for each, reports operations per second and counts
// the commands sent per operation: a command is a round trip.

const redisGoroutines = 64

// redisBench is a client for one benchmark, with its command counter and a
// key prefix of its own; keys under the prefix are deleted when it ends.
type redisBench struct {
	rdb    *redis.Client
	cmds   atomic.Int64
	prefix string
}

func newRedisBench(b *testing.B) *redisBench {
	b.Helper()
	addr := testenv.RedisAddr(b)
	rb := &redisBench{
		rdb:    redis.NewClient(&redis.Options{Addr: addr, PoolSize: redisGoroutines}),
		prefix: fmt.Sprintf("bulwark:bench:%d-%d:", os.Getpid(), time.Now().UnixNano()),
	}
	rb.rdb.AddHook(countHook{&rb.cmds})
	b.Cleanup(func() {
		// redis_rate puts its own "rate:" in front of the keys it is given.
		for _, pattern := range []string{rb.prefix + "*", "rate:" + rb.prefix + "*"} {
			if err := unlinkAll(rb.rdb, pattern); err != nil {
				b.Errorf("deleting %s: %v", pattern, err)
			}
		}
		_ = rb.rdb.Close()
	})
	if err := rb.rdb.Ping(context.Background()).Err(); err != nil {
		b.Fatalf("redis at %s: %v", addr, err)
	}
	return rb
}

// unlinkAll deletes the keys that match pattern.
func unlinkAll(rdb *redis.Client, pattern string) error {
	ctx := context.Background()
	iter := rdb.Scan(ctx, 0, pattern, 1000).Iterator()
	keys := make([]string, 0, 1000)
	for iter.Next(ctx) {
		if keys = append(keys, iter.Val()); len(keys) == cap(keys) {
			if err := rdb.Unlink(ctx, keys...).Err(); err != nil {
				return err
			}
			keys = keys[:0]
		}
	}
	if len(keys) > 0 {
		if err := rdb.Unlink(ctx, keys...).Err(); err != nil {
			return err
		}
	}
	return iter.Err()
}

func (rb *redisBench) opts(unit string) runOpts {
	return runOpts{
		parallelism: redisGoroutines,
		rateUnit:    unit,
		counters:    []counter{{"cmds/op", &rb.cmds}},
	}
}

// countHook counts the commands a client sends.
type countHook struct{ n *atomic.Int64 }

func (h countHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}

func (h countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// RedisLimiter: an allowed decision that writes the key's state, over 1024
// keys, at a rate so high that every decision is allowed. Both limiters are
// GCRA in one Lua script. bulwark's runs fail-closed with a 1s timeout so
// that a slow answer shows as an error, not as a quick fail-open.
// Reference: redis_rate.

func BenchmarkRedisLimiter(b *testing.B) {
	rb := newRedisBench(b)
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = "client-" + strconv.Itoa(i)
	}
	const perSecond, burst = 1_000_000, 1_000_000_000
	variants := []variant{
		{"bulwark-redisrate", func() func(int) error {
			l := redisrate.New("bench", rb.rdb, perSecond, burst,
				redisrate.WithKeyPrefix(rb.prefix),
				redisrate.WithFailureMode(redisrate.FailClosed()),
				redisrate.WithTimeout(time.Second),
				redisrate.WithRegisterer(prometheus.NewRegistry()))
			return func(i int) error {
				d, err := l.Allow(bg, keys[i%len(keys)], 1)
				if err != nil {
					return err
				}
				return allowedErr(d.Allowed)
			}
		}()},
		{"redis_rate", func() func(int) error {
			l := redis_rate.NewLimiter(rb.rdb)
			limit := redis_rate.Limit{Rate: perSecond, Burst: burst, Period: time.Second}
			rkeys := make([]string, len(keys))
			for i, k := range keys {
				rkeys[i] = rb.prefix + k
			}
			return func(i int) error {
				res, err := l.Allow(bg, rkeys[i%len(rkeys)], limit)
				if err != nil {
					return err
				}
				return allowedErr(res.Allowed > 0)
			}
		}()},
	}
	warm(b, variants) // load the scripts, so no run pays for an EVAL
	runVariants(b, variants, rb.opts("decisions/s"))
}

// RedisIdempotency: claim + complete of a new key on the Redis store.
// Records are kept for a minute, not the default day, and deleted at the end.

func BenchmarkRedisIdempotency(b *testing.B) {
	rb := newRedisBench(b)
	s := redisstore.New(rb.rdb, redisstore.WithPrefix(rb.prefix))
	variants := []variant{
		{"bulwark-redisstore", claimComplete(s, time.Minute)},
	}
	warm(b, variants)
	runVariants(b, variants, rb.opts("ops/s"))
}

// warm runs each variant once, outside the measurements, with an i that
// runVariants never uses.
func warm(b *testing.B, vs []variant) {
	b.Helper()
	for _, v := range vs {
		if err := v.call(1 << 62); err != nil {
			b.Fatalf("%s: %v", v.name, err)
		}
	}
}
