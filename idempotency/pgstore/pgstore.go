package pgstore

import (
	"bytes"
	"cmp"
	"context"
	_ "embed"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/idempotency"
)

// Migration is the SQL that creates the default table and its index
// (migration.sql in this package).
//
//go:embed migration.sql
var Migration string

// DefaultTable is the table a Store uses unless WithTable says otherwise.
const DefaultTable = "bulwark_idempotency"

// DB is what a Store runs its statements on: *pgxpool.Pool, *pgx.Conn and
// pgx.Tx all qualify.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Option configures a Store.
type Option func(*Store)

// WithTable sets the table name, optionally schema-qualified ("app.idem");
// default DefaultTable.
func WithTable(name string) Option { return func(s *Store) { s.table = name } }

// WithClock sets the clock that leases and retention are measured by
// (default: the real clock).
func WithClock(c clock.Clock) Option { return func(s *Store) { s.clock = c } }

// Store is an idempotency.Store on PostgreSQL (see the package documentation
// for the table and statements). The zero Store is not usable; call New. It
// is safe for concurrent use when its DB is (a pool is; a transaction is
// not).
type Store struct {
	db    DB
	table string
	clock clock.Clock
	q     *queries
}

var _ idempotency.Store = (*Store)(nil)

type queries struct {
	claim, complete, release, extend, cleanup, create string
}

// New returns a Store that runs its statements on db, usually a
// *pgxpool.Pool.
func New(db DB, opts ...Option) *Store {
	s := &Store{db: db, table: DefaultTable}
	for _, o := range opts {
		o(s)
	}
	s.clock = cmp.Or(s.clock, clock.Real())
	s.q = buildQueries(s.table)
	return s
}

// WithTx returns a Store with the same table and clock whose statements run
// in tx. See "Inside the caller's transaction" in the package documentation.
func (s *Store) WithTx(tx pgx.Tx) *Store {
	c := *s
	c.db = tx
	return &c
}

func buildQueries(table string) *queries {
	parts := strings.Split(table, ".")
	t := pgx.Identifier(parts).Sanitize()
	idx := pgx.Identifier{parts[len(parts)-1] + "_deadline_idx"}.Sanitize()
	create := strings.NewReplacer(
		DefaultTable+"_deadline_idx", idx,
		DefaultTable+" ", t+" ",
	).Replace(Migration)
	return &queries{
		// $1 key, $2 fingerprint, $3 owner, $4 now, $5 lease deadline.
		claim: `INSERT INTO ` + t + ` AS r (key, fingerprint, owner, deadline, response, created_at)
VALUES ($1, $2, $3, $5, NULL, $4)
ON CONFLICT (key) DO UPDATE SET
  fingerprint = CASE WHEN r.deadline <= $4 THEN excluded.fingerprint ELSE r.fingerprint END,
  owner       = CASE WHEN r.deadline <= $4 THEN excluded.owner       ELSE r.owner       END,
  deadline    = CASE WHEN r.deadline <= $4 THEN excluded.deadline    ELSE r.deadline    END,
  response    = CASE WHEN r.deadline <= $4 THEN NULL                 ELSE r.response    END,
  created_at  = CASE WHEN r.deadline <= $4 THEN excluded.created_at  ELSE r.created_at  END
RETURNING r.owner IS NOT DISTINCT FROM $3, r.fingerprint, r.deadline, r.response`,
		// $1 key, $2 owner, $3 now, $4 response, $5 retention deadline.
		complete: `UPDATE ` + t + ` SET response = $4, owner = NULL, deadline = $5
WHERE key = $1 AND owner = $2 AND deadline > $3`,
		// $1 key, $2 owner, $3 now.
		release: `DELETE FROM ` + t + ` WHERE key = $1 AND owner = $2 AND deadline > $3`,
		// $1 key, $2 owner, $3 now, $4 lease deadline.
		extend: `UPDATE ` + t + ` SET deadline = $4 WHERE key = $1 AND owner = $2 AND deadline > $3`,
		// $1 cutoff.
		cleanup: `DELETE FROM ` + t + ` WHERE deadline < $1`,
		create:  create,
	}
}

// CreateTable creates the table and its index if they do not exist, running
// Migration with the Store's table name.
func (s *Store) CreateTable(ctx context.Context) error {
	if _, err := s.db.Exec(ctx, s.q.create); err != nil {
		return fmt.Errorf("pgstore: create table: %w", err)
	}
	return nil
}

// Cleanup deletes the records whose lease or retention ended more than
// olderThan ago (every expired record with olderThan 0) and returns how many
// it deleted. Expired records already count as absent; Cleanup only frees
// their space. It is one DELETE using the deadline index.
func (s *Store) Cleanup(ctx context.Context, olderThan time.Duration) (int64, error) {
	tag, err := s.db.Exec(ctx, s.q.cleanup, s.clock.Now().Add(-olderThan))
	if err != nil {
		return 0, fmt.Errorf("pgstore: cleanup: %w", err)
	}
	return tag.RowsAffected(), nil
}

// Claim implements idempotency.Store.
func (s *Store) Claim(ctx context.Context, key idempotency.Key, fp idempotency.Fingerprint, lease time.Duration) (idempotency.ClaimResult, error) {
	owner := idempotency.NewToken()
	now := s.clock.Now()
	var (
		mine     bool
		gotFP    []byte
		deadline time.Time
		enc      []byte
	)
	err := s.db.QueryRow(ctx, s.q.claim, key[:], fp[:], owner[:], now, now.Add(lease)).
		Scan(&mine, &gotFP, &deadline, &enc)
	if err != nil {
		return idempotency.ClaimResult{}, fmt.Errorf("pgstore: claim: %w", err)
	}
	switch {
	case mine:
		return idempotency.ClaimResult{Status: idempotency.Claimed, Owner: owner}, nil
	case !bytes.Equal(gotFP, fp[:]):
		return idempotency.ClaimResult{Status: idempotency.Mismatch}, nil
	case enc != nil:
		resp, err := idempotency.DecodeResponse(enc)
		if err != nil {
			return idempotency.ClaimResult{}, fmt.Errorf("pgstore: claim: %w", err)
		}
		return idempotency.ClaimResult{Status: idempotency.Completed, Response: resp}, nil
	}
	return idempotency.ClaimResult{Status: idempotency.InFlight, RetryAfter: deadline.Sub(now)}, nil
}

// Complete implements idempotency.Store.
func (s *Store) Complete(ctx context.Context, key idempotency.Key, owner idempotency.Token, resp idempotency.Response, retention time.Duration) error {
	enc, _ := resp.AppendBinary(make([]byte, 0, resp.EncodedLen()))
	now := s.clock.Now()
	tag, err := s.db.Exec(ctx, s.q.complete, key[:], owner[:], now, enc, now.Add(retention))
	return fenced("complete", tag, err)
}

// Release implements idempotency.Store.
func (s *Store) Release(ctx context.Context, key idempotency.Key, owner idempotency.Token) error {
	tag, err := s.db.Exec(ctx, s.q.release, key[:], owner[:], s.clock.Now())
	return fenced("release", tag, err)
}

// Extend implements idempotency.Store.
func (s *Store) Extend(ctx context.Context, key idempotency.Key, owner idempotency.Token, lease time.Duration) error {
	now := s.clock.Now()
	tag, err := s.db.Exec(ctx, s.q.extend, key[:], owner[:], now, now.Add(lease))
	return fenced("extend", tag, err)
}

// fenced turns a guarded statement's row count into nil or ErrLeaseLost.
func fenced(op string, tag pgconn.CommandTag, err error) error {
	switch {
	case err != nil:
		return fmt.Errorf("pgstore: %s: %w", op, err)
	case tag.RowsAffected() != 1:
		return idempotency.ErrLeaseLost
	}
	return nil
}
