package bench

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwark-go/bulwark/idempotency/pgstore"
	"github.com/bulwark-go/bulwark/internal/testenv"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PostgreSQL benchmarks run against the real server named by
// BULWARK_TEST_POSTGRES_URL and are skipped when it is unset (bench/run sets
// it). Each runs serially and with 64 goroutines sharing one pgxpool of
// pgConns connections (PostgreSQL gains nothing from more backends than a
// few per core, and the server's 100 connections are shared with the test
// suites), reports operations per second and counts the statements sent per
// operation: each is a round trip.

const (
	pgGoroutines = 64
	pgConns      = 16
)

// PGIdempotency: claim + complete of a new key on the PostgreSQL store, in a
// table of its own that is dropped at the end. Records are kept for a minute.

func BenchmarkPGIdempotency(b *testing.B) {
	dsn := testenv.PostgresURL(b)
	var stmts atomic.Int64
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = pgConns
	cfg.ConnConfig.Tracer = countTracer{&stmts}
	pool, err := pgxpool.NewWithConfig(bg, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)

	table := fmt.Sprintf("bulwark_bench_idem_%d_%d", os.Getpid(), time.Now().UnixNano())
	s := pgstore.New(pool, pgstore.WithTable(table))
	if err := s.CreateTable(bg); err != nil {
		b.Fatalf("postgres at %s: %v", cfg.ConnConfig.Host, err)
	}
	b.Cleanup(func() {
		if _, err := pool.Exec(bg, "DROP TABLE IF EXISTS "+pgx.Identifier{table}.Sanitize()); err != nil {
			b.Errorf("dropping %s: %v", table, err)
		}
	})

	variants := []variant{
		{"bulwark-pgstore", claimComplete(s, time.Minute)},
	}
	warm(b, variants) // prepare the statements on a connection
	runVariants(b, variants, runOpts{
		parallelism: pgGoroutines,
		rateUnit:    "ops/s",
		counters:    []counter{{"stmts/op", &stmts}},
	})
}

// countTracer counts the statements a pool's connections send.
type countTracer struct{ n *atomic.Int64 }

func (t countTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	t.n.Add(1)
	return ctx
}

func (countTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
