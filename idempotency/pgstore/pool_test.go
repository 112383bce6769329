package pgstore_test

import (
	"context"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/idempotency/pgstore"
)

// connPool is a minimal connection pool for the tests. pgxpool would do, but
// the module's go.mod does not yet list pgxpool's dependencies (puddle,
// x/sync); pgstore itself only needs the DB interface, which *pgxpool.Pool
// satisfies.
type connPool struct {
	cfg  *pgx.ConnConfig
	sem  chan struct{}
	mu   sync.Mutex
	idle []*pgx.Conn
}

var _ pgstore.DB = (*connPool)(nil)

func newConnPool(t testing.TB, dsn string, configure ...func(*pgx.ConnConfig)) *connPool {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	require.NoError(t, err)
	for _, c := range configure {
		c(cfg)
	}
	p := &connPool{cfg: cfg, sem: make(chan struct{}, 8)}
	t.Cleanup(p.Close)
	return p
}

func (p *connPool) get(ctx context.Context) (*pgx.Conn, error) {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return c, nil
	}
	p.mu.Unlock()
	c, err := pgx.ConnectConfig(ctx, p.cfg)
	if err != nil {
		<-p.sem
		return nil, err
	}
	return c, nil
}

func (p *connPool) put(c *pgx.Conn) {
	if c.IsClosed() {
		_ = c.Close(context.Background())
	} else {
		p.mu.Lock()
		p.idle = append(p.idle, c)
		p.mu.Unlock()
	}
	<-p.sem
}

func (p *connPool) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	c, err := p.get(ctx)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	defer p.put(c)
	return c.Exec(ctx, sql, args...)
}

func (p *connPool) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	c, err := p.get(ctx)
	if err != nil {
		return errRow{err}
	}
	return &pooledRow{p: p, c: c, row: c.QueryRow(ctx, sql, args...)}
}

// Begin starts a transaction on a connection of its own; the connection
// returns to the pool when the transaction ends.
func (p *connPool) Begin(ctx context.Context) (*pooledTx, error) {
	c, err := p.get(ctx)
	if err != nil {
		return nil, err
	}
	tx, err := c.Begin(ctx)
	if err != nil {
		p.put(c)
		return nil, err
	}
	return &pooledTx{Tx: tx, p: p, c: c}, nil
}

func (p *connPool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.idle {
		_ = c.Close(context.Background())
	}
	p.idle = nil
}

type pooledRow struct {
	p   *connPool
	c   *pgx.Conn
	row pgx.Row
}

func (r *pooledRow) Scan(dest ...any) error {
	defer r.p.put(r.c)
	return r.row.Scan(dest...)
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

type pooledTx struct {
	pgx.Tx
	p    *connPool
	c    *pgx.Conn
	once sync.Once
}

func (t *pooledTx) done() { t.once.Do(func() { t.p.put(t.c) }) }

func (t *pooledTx) Commit(ctx context.Context) error {
	defer t.done()
	return t.Tx.Commit(ctx)
}

func (t *pooledTx) Rollback(ctx context.Context) error {
	defer t.done()
	return t.Tx.Rollback(ctx)
}
