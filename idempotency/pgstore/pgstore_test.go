package pgstore_test

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/idempotency/internal/storetest"
	"github.com/bulwark-go/bulwark/idempotency/pgstore"
	"github.com/bulwark-go/bulwark/internal/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var bg = context.Background()

var tables atomic.Int64

// newPool returns a pgxpool of at most 8 connections, closed when the test
// ends; configure adjusts each connection's config (a tracer, say).
func newPool(t testing.TB, dsn string, configure ...func(*pgx.ConnConfig)) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	require.NoError(t, err)
	cfg.MaxConns = 8
	for _, c := range configure {
		c(cfg.ConnConfig)
	}
	pool, err := pgxpool.NewWithConfig(bg, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// uniqueTable creates a table no other test uses and drops it when the test
// ends.
func uniqueTable(t testing.TB, dsn string) string {
	t.Helper()
	name := fmt.Sprintf("bulwark_idem_test_%d_%d", time.Now().UnixNano(), tables.Add(1))
	admin := newPool(t, dsn)
	require.NoError(t, pgstore.New(admin, pgstore.WithTable(name)).CreateTable(bg))
	t.Cleanup(func() {
		_, err := admin.Exec(bg, "DROP TABLE IF EXISTS "+pgx.Identifier{name}.Sanitize())
		require.NoError(t, err)
	})
	return name
}

// withHost returns dsn pointing at addr (host:port) instead.
func withHost(t testing.TB, dsn, addr string) string {
	u, err := url.Parse(dsn)
	require.NoError(t, err)
	u.Host = addr
	return u.String()
}

func hostPort(t testing.TB, dsn string) string {
	u, err := url.Parse(dsn)
	require.NoError(t, err)
	if u.Port() == "" {
		return net.JoinHostPort(u.Hostname(), "5432")
	}
	return u.Host
}

func TestConformance(t *testing.T) {
	dsn := testenv.PostgresURL(t)
	storetest.Run(t, storetest.Backend{
		Open: func(t *testing.T, clk clock.Clock) func() idempotency.Store {
			table := uniqueTable(t, dsn)
			return func() idempotency.Store {
				return pgstore.New(newPool(t, dsn), pgstore.WithTable(table), pgstore.WithClock(clk))
			}
		},
		Dial: func(t *testing.T, clk clock.Clock, addr string) idempotency.Store {
			table := uniqueTable(t, dsn)
			return pgstore.New(newPool(t, withHost(t, dsn, addr)), pgstore.WithTable(table), pgstore.WithClock(clk))
		},
		Target: hostPort(t, dsn),
	})
}

// countingTracer counts the statements sent.
type countingTracer struct{ n atomic.Int64 }

func (c *countingTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}
func (c *countingTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func TestOneStatementPerOperation(t *testing.T) {
	dsn := testenv.PostgresURL(t)
	table := uniqueTable(t, dsn)
	tr := &countingTracer{}
	pool := newPool(t, dsn, func(c *pgx.ConnConfig) { c.Tracer = tr })
	s := pgstore.New(pool, pgstore.WithTable(table))
	k := idempotency.DeriveKey("s", "POST", "/", "k")
	step := func(name string, f func()) {
		t.Helper()
		before := tr.n.Load()
		f()
		require.EqualValues(t, 1, tr.n.Load()-before, name)
	}
	var owner idempotency.Token
	step("claim", func() {
		r, err := s.Claim(bg, k, idempotency.Fingerprint{}, time.Minute)
		require.NoError(t, err)
		require.Equal(t, idempotency.Claimed, r.Status)
		owner = r.Owner
	})
	step("claim in flight", func() {
		r, err := s.Claim(bg, k, idempotency.Fingerprint{}, time.Minute)
		require.NoError(t, err)
		require.Equal(t, idempotency.InFlight, r.Status)
	})
	step("extend", func() { require.NoError(t, s.Extend(bg, k, owner, time.Minute)) })
	step("complete", func() { require.NoError(t, s.Complete(bg, k, owner, idempotency.Response{Status: 200}, time.Hour)) })
	step("claim replay", func() {
		r, err := s.Claim(bg, k, idempotency.Fingerprint{}, time.Minute)
		require.NoError(t, err)
		require.Equal(t, idempotency.Completed, r.Status)
	})
	step("release (rejected)", func() { require.ErrorIs(t, s.Release(bg, k, owner), idempotency.ErrLeaseLost) })
	step("cleanup", func() {
		_, err := s.Cleanup(bg, 0)
		require.NoError(t, err)
	})
}

// TestWithTx: the business write and the stored response commit together,
// or not at all.
func TestWithTx(t *testing.T) {
	dsn := testenv.PostgresURL(t)
	table := uniqueTable(t, dsn)
	pool := newPool(t, dsn)
	orders := table + "_orders"
	_, err := pool.Exec(bg, "CREATE TABLE "+orders+" (id text PRIMARY KEY)")
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = pool.Exec(bg, "DROP TABLE IF EXISTS "+orders) })
	s := pgstore.New(pool, pgstore.WithTable(table))
	fp := idempotency.Fingerprint{1}

	// place runs one request inside a transaction and commits or rolls back.
	place := func(k idempotency.Key, id string, commit bool) idempotency.ClaimResult {
		tx, err := pool.Begin(bg)
		require.NoError(t, err)
		defer func() { _ = tx.Rollback(bg) }()
		st := s.WithTx(tx)
		r, err := st.Claim(bg, k, fp, time.Minute)
		require.NoError(t, err)
		if r.Status != idempotency.Claimed {
			return r
		}
		_, err = tx.Exec(bg, "INSERT INTO "+orders+" VALUES ($1)", id)
		require.NoError(t, err)
		require.NoError(t, st.Complete(bg, k, r.Owner, idempotency.Response{Status: 201, Body: []byte(id)}, time.Hour))
		if commit {
			require.NoError(t, tx.Commit(bg))
		}
		return r
	}
	count := func() (n int) {
		require.NoError(t, pool.QueryRow(bg, "SELECT count(*) FROM "+orders).Scan(&n))
		return n
	}

	rolledBack := idempotency.DeriveKey("s", "POST", "/orders", "rolled-back")
	require.Equal(t, idempotency.Claimed, place(rolledBack, "a", false).Status)
	require.Equal(t, 0, count())
	require.Equal(t, idempotency.Claimed, place(rolledBack, "a", true).Status, "a rollback leaves the key free")
	require.Equal(t, 1, count())
	r := place(rolledBack, "a", true)
	require.Equal(t, idempotency.Completed, r.Status)
	require.Equal(t, "a", string(r.Response.Body))
	require.Equal(t, 1, count())

	// A claim of the same key from outside waits for the transaction and
	// then sees its committed result.
	k := idempotency.DeriveKey("s", "POST", "/orders", "concurrent")
	tx, err := pool.Begin(bg)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(bg) }()
	st := s.WithTx(tx)
	claimed, err := st.Claim(bg, k, fp, time.Minute)
	require.NoError(t, err)
	require.Equal(t, idempotency.Claimed, claimed.Status)
	type answer struct {
		r   idempotency.ClaimResult
		err error
	}
	got := make(chan answer, 1)
	go func() {
		ctx, cancel := context.WithTimeout(bg, 30*time.Second)
		defer cancel()
		r, err := s.Claim(ctx, k, fp, time.Minute)
		got <- answer{r, err}
	}()
	_, err = tx.Exec(bg, "INSERT INTO "+orders+" VALUES ('b')")
	require.NoError(t, err)
	require.NoError(t, st.Complete(bg, k, claimed.Owner, idempotency.Response{Status: 201, Body: []byte("b")}, time.Hour))
	require.NoError(t, tx.Commit(bg))
	a := <-got
	require.NoError(t, a.err)
	require.Equal(t, idempotency.Completed, a.r.Status)
	require.Equal(t, "b", string(a.r.Response.Body))
	require.Equal(t, 2, count())
}

func TestCleanup(t *testing.T) {
	dsn := testenv.PostgresURL(t)
	table := uniqueTable(t, dsn)
	pool := newPool(t, dsn)
	clk := clock.NewFake(time.Time{})
	s := pgstore.New(pool, pgstore.WithTable(table), pgstore.WithClock(clk))
	claim := func(name string) idempotency.ClaimResult {
		r, err := s.Claim(bg, idempotency.DeriveKey("", "", "", name), idempotency.Fingerprint{}, 30*time.Second)
		require.NoError(t, err)
		require.Equal(t, idempotency.Claimed, r.Status)
		return r
	}
	done := claim("completed")
	require.NoError(t, s.Complete(bg, idempotency.DeriveKey("", "", "", "completed"), done.Owner, idempotency.Response{Status: 200}, time.Hour))
	claim("abandoned")
	clk.Advance(31 * time.Second)
	claim("live")
	rows := func() (n int) {
		require.NoError(t, pool.QueryRow(bg, "SELECT count(*) FROM "+table).Scan(&n))
		return n
	}
	require.Equal(t, 3, rows())

	n, err := s.Cleanup(bg, time.Minute) // the abandoned lease ended only 1 s ago
	require.NoError(t, err)
	require.Zero(t, n)
	n, err = s.Cleanup(bg, 0)
	require.NoError(t, err)
	require.EqualValues(t, 1, n, "the abandoned lease")
	clk.Advance(time.Hour)
	n, err = s.Cleanup(bg, 0)
	require.NoError(t, err)
	require.EqualValues(t, 2, n, "the expired result and the now lapsed lease")
	require.Zero(t, rows())
}

func TestCreateTable(t *testing.T) {
	dsn := testenv.PostgresURL(t)
	pool := newPool(t, dsn)
	schema := fmt.Sprintf("bulwark_idem_schema_%d", time.Now().UnixNano())
	_, err := pool.Exec(bg, "CREATE SCHEMA "+schema)
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = pool.Exec(bg, "DROP SCHEMA "+schema+" CASCADE") })
	s := pgstore.New(pool, pgstore.WithTable(schema+".Records"))
	require.NoError(t, s.CreateTable(bg))
	require.NoError(t, s.CreateTable(bg), "idempotent")
	var idx string
	require.NoError(t, pool.QueryRow(bg, "SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND indexdef LIKE '%deadline%'", schema).Scan(&idx))
	require.Equal(t, "Records_deadline_idx", idx)

	// Only the digest of a key is stored.
	g := idempotency.New("pg", s)
	_, _, err = g.Do(bg, idempotency.Request{Scope: "alice", Method: "POST", Route: "/pay", Key: "secret-client-key"},
		func(context.Context) (idempotency.Response, error) { return idempotency.Response{Status: 200}, nil })
	require.NoError(t, err)
	var key []byte
	require.NoError(t, pool.QueryRow(bg, `SELECT key FROM `+schema+`."Records"`).Scan(&key))
	want := idempotency.DeriveKey("alice", "POST", "/pay", "secret-client-key")
	require.Equal(t, want[:], key)
}
