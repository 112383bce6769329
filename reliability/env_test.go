package reliability

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/idempotency/pgstore"
	"github.com/bulwark-go/bulwark/idempotency/redisstore"
	"github.com/bulwark-go/bulwark/internal/testenv"
)

var bg = context.Background()

// redisClient connects to addr with ContextTimeoutEnabled, so that the short
// deadlines of the limiter and the guard bound socket reads, and without
// go-redis's own retries, so that every attempt the test sees is one the
// code under test made. It is closed when the test ends.
func redisClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true, MaxRetries: -1, PoolSize: 32})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// redisPrefix returns a key prefix that no other test or package uses, and
// deletes its keys (through direct, a client that bypasses any proxy) when
// the test ends.
func redisPrefix(t testing.TB, direct *redis.Client) string {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	p := "bulwark:test:reliability:" + strings.ReplaceAll(t.Name(), "/", "_") + ":" + hex.EncodeToString(b[:]) + ":"
	t.Cleanup(func() {
		iter := direct.Scan(bg, 0, p+"*", 200).Iterator()
		for iter.Next(bg) {
			direct.Del(bg, iter.Val())
		}
	})
	return p
}

// pgPool returns a pool of at most maxConns connections to dsn, closed when
// the test ends.
func pgPool(t testing.TB, dsn string, maxConns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	require.NoError(t, err)
	cfg.MaxConns = maxConns
	cfg.ConnConfig.ConnectTimeout = 2 * time.Second
	// No liveness ping on acquire: a fault must hit the statement under
	// test, not a ping before it. A broken connection is dropped on its
	// first error anyway.
	cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	pool, err := pgxpool.NewWithConfig(bg, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

var tableSeq atomic.Int64

// pgTable creates an idempotency table that no other test uses and drops it
// when the test ends.
func pgTable(t testing.TB, admin *pgxpool.Pool) string {
	t.Helper()
	name := fmt.Sprintf("bulwark_reliability_%d_%d", time.Now().UnixNano(), tableSeq.Add(1))
	require.NoError(t, pgstore.New(admin, pgstore.WithTable(name)).CreateTable(bg))
	t.Cleanup(func() {
		_, err := admin.Exec(bg, "DROP TABLE IF EXISTS "+pgx.Identifier{name}.Sanitize())
		require.NoError(t, err)
	})
	return name
}

// pgHostPort returns the host:port of dsn.
func pgHostPort(t testing.TB, dsn string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	require.NoError(t, err)
	if u.Port() == "" {
		return net.JoinHostPort(u.Hostname(), "5432")
	}
	return u.Host
}

// pgWithHost returns dsn pointing at addr (host:port) instead.
func pgWithHost(t testing.TB, dsn, addr string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	require.NoError(t, err)
	u.Host = addr
	return u.String()
}

// sharedStore opens, for one test, a store that several replicas share: each
// call of the returned function is one replica's view of it.
type sharedStore struct {
	name string
	open func(t *testing.T) func() idempotency.Store
}

// sharedStores are the stores a multi-replica scenario runs against: Redis
// with a key prefix of its own, then PostgreSQL with a table of its own.
func sharedStores() []sharedStore {
	return []sharedStore{
		{"redis", func(t *testing.T) func() idempotency.Store {
			rdb := redisClient(t, testenv.RedisAddr(t))
			prefix := redisPrefix(t, rdb)
			return func() idempotency.Store { return redisstore.New(rdb, redisstore.WithPrefix(prefix)) }
		}},
		{"postgres", func(t *testing.T) func() idempotency.Store {
			pool := pgPool(t, testenv.PostgresURL(t), 8)
			table := pgTable(t, pool)
			return func() idempotency.Store { return pgstore.New(pool, pgstore.WithTable(table)) }
		}},
	}
}
