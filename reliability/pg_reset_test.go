package reliability

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/httpmw"
	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/idempotency/pgstore"
	"github.com/bulwark-go/bulwark/internal/testenv"
)

// pgRig is one server with httpmw.Idempotency on a pgstore whose single
// connection goes through a fault proxy, and whose clock is a fake, so a
// lease can run out without sleeping.
type pgRig struct {
	px    *faultProxy
	clk   *clock.Fake
	table string
	admin interface {
		QueryRow(context.Context, string, ...any) pgx.Row
	}
	h      *recordedRun
	srv    *httptest.Server
	client *http.Client
	// beforeReturn, when set, runs in the handler after it did its work and
	// before the middleware stores the response.
	beforeReturn func()
}

const pgLease = 30 * time.Second

func newPGRig(t *testing.T) *pgRig {
	t.Helper()
	dsn := testenv.PostgresURL(t)
	admin := pgPool(t, dsn, 2)
	r := &pgRig{clk: clock.NewFake(time.Time{}), admin: admin, h: &recordedRun{runs: map[string]int{}}}
	r.table = pgTable(t, admin)
	r.px = newFaultProxy(t, pgHostPort(t, dsn))
	pool := pgPool(t, pgWithHost(t, dsn, r.px.Addr()), 1)
	require.NoError(t, pool.Ping(bg)) // the one connection exists before any fault
	guard := idempotency.New("pg", pgstore.New(pool, pgstore.WithTable(r.table), pgstore.WithClock(r.clk)),
		idempotency.WithLease(pgLease), idempotency.WithStoreTimeout(2*time.Second))
	r.srv = httptest.NewServer(httpmw.Idempotency(guard, httpmw.WithoutScope(),
		httpmw.WithRoute(func(*http.Request) string { return "/pay" }))(
		http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			r.h.ServeHTTP(w, req)
			if r.beforeReturn != nil {
				r.beforeReturn()
			}
		})))
	t.Cleanup(r.srv.Close)
	r.client = &http.Client{Transport: &http.Transport{}}
	t.Cleanup(r.client.CloseIdleConnections)
	// One request end to end first: pgx prepares each statement on its
	// first use (a round trip of its own), and a fault must hit the
	// statement's execution, not its preparation.
	status, _, _ := r.send(t, "warm-up")
	require.Equal(t, http.StatusCreated, status)
	return r
}

// send posts key once and returns the status, whether it was a replay, and
// the body.
func (r *pgRig) send(t *testing.T, key string) (int, bool, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, r.srv.URL+"/pay", strings.NewReader("pay 1"))
	req.Header.Set("Idempotency-Key", key)
	resp, err := r.client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Idempotent-Replayed") == "true", string(body)
}

// row returns the state of key's record: "absent", "in flight" or
// "completed", read directly, not through the proxy.
func (r *pgRig) row(t *testing.T, key string) string {
	t.Helper()
	k := idempotency.DeriveKey("", http.MethodPost, "/pay", key)
	var owner, response []byte
	err := r.admin.QueryRow(bg, "SELECT owner, response FROM "+pgx.Identifier{r.table}.Sanitize()+" WHERE key = $1", k[:]).Scan(&owner, &response)
	switch {
	case err == pgx.ErrNoRows:
		return "absent"
	case err != nil:
		t.Fatal(err)
	case owner != nil:
		return "in flight"
	}
	return "completed"
}

func resetToxic(stream string) toxic {
	return toxic{Name: "reset-" + stream, Type: "reset_peer", Stream: stream, Attributes: map[string]any{"timeout": 0}}
}

// TestPostgresResetMidClaimAndComplete: scenario 4. The connection of the
// pgstore is reset while a claim or a complete is on the wire, in either
// direction: the statement never reaches PostgreSQL (upstream) or its answer
// never comes back (downstream). No request runs twice while its key is
// leased, and no key stays locked past its lease.
func TestPostgresResetMidClaimAndComplete(t *testing.T) {
	t.Run("claim lost on the way", func(t *testing.T) {
		r := newPGRig(t)
		r.px.AddToxic(resetToxic("upstream"))
		status, _, _ := r.send(t, "claim-up")
		r.px.RemoveToxic("reset-upstream")
		require.Equal(t, http.StatusServiceUnavailable, status, "fails closed")
		require.Zero(t, r.h.count("claim-up"))
		require.Equal(t, "absent", r.row(t, "claim-up"), "the claim never reached the server")

		status, replay, body := r.send(t, "claim-up")
		require.Equal(t, http.StatusCreated, status)
		require.False(t, replay)
		require.Equal(t, "claim-up", body)
		require.Equal(t, 1, r.h.count("claim-up"))
	})

	t.Run("claim answer lost", func(t *testing.T) {
		r := newPGRig(t)
		r.px.AddToxic(resetToxic("downstream"))
		status, _, _ := r.send(t, "claim-down")
		r.px.RemoveToxic("reset-downstream")
		require.Equal(t, http.StatusServiceUnavailable, status, "fails closed")
		require.Zero(t, r.h.count("claim-down"))
		require.Equal(t, "in flight", r.row(t, "claim-down"), "the claim committed, its owner never learnt it")

		// Locked by an owner that will never finish: 409 until the lease
		// ends, then the key is free and the request runs, once.
		status, _, _ = r.send(t, "claim-down")
		require.Equal(t, http.StatusConflict, status)
		r.clk.Advance(pgLease - time.Second)
		status, _, _ = r.send(t, "claim-down")
		require.Equal(t, http.StatusConflict, status, "still leased")
		r.clk.Advance(time.Second)
		status, replay, _ := r.send(t, "claim-down")
		require.Equal(t, http.StatusCreated, status, "not locked past its lease")
		require.False(t, replay)
		require.Equal(t, 1, r.h.count("claim-down"))
		status, replay, _ = r.send(t, "claim-down")
		require.Equal(t, http.StatusCreated, status)
		require.True(t, replay)
		require.Equal(t, 1, r.h.count("claim-down"))
	})

	t.Run("complete answer lost", func(t *testing.T) {
		r := newPGRig(t)
		r.beforeReturn = func() { r.px.AddToxic(resetToxic("downstream")); r.beforeReturn = nil }
		status, replay, body := r.send(t, "complete-down")
		r.px.RemoveToxic("reset-downstream")
		require.Equal(t, http.StatusCreated, status, "the client gets the response it caused")
		require.False(t, replay)
		require.Equal(t, "complete-down", body)
		require.Equal(t, "completed", r.row(t, "complete-down"))

		r.clk.Advance(2 * pgLease)
		status, replay, body = r.send(t, "complete-down")
		require.Equal(t, http.StatusCreated, status)
		require.True(t, replay, "the stored response replays, past the lease too")
		require.Equal(t, "complete-down", body)
		require.Equal(t, 1, r.h.count("complete-down"))
	})

	t.Run("complete lost on the way", func(t *testing.T) {
		// The response was never stored, so nothing can replay it: the
		// key stays in flight for the rest of its lease (409, the handler
		// does not run again early) and is free after it. The handler then
		// runs a second time — the one case where only a business write in
		// the same transaction as the record (next subtest) keeps the effect
		// single.
		r := newPGRig(t)
		r.beforeReturn = func() { r.px.AddToxic(resetToxic("upstream")); r.beforeReturn = nil }
		status, _, _ := r.send(t, "complete-up")
		r.px.RemoveToxic("reset-upstream")
		require.Equal(t, http.StatusCreated, status)
		require.Equal(t, "in flight", r.row(t, "complete-up"))

		status, _, _ = r.send(t, "complete-up")
		require.Equal(t, http.StatusConflict, status)
		r.clk.Advance(pgLease - time.Second)
		status, _, _ = r.send(t, "complete-up")
		require.Equal(t, http.StatusConflict, status, "no second run while the first owner's lease lasts")
		require.Equal(t, 1, r.h.count("complete-up"))
		r.clk.Advance(time.Second)
		status, replay, _ := r.send(t, "complete-up")
		require.Equal(t, http.StatusCreated, status, "not locked past its lease")
		require.False(t, replay)
		require.Equal(t, 2, r.h.count("complete-up"))
		require.Equal(t, "completed", r.row(t, "complete-up"))
	})

	t.Run("complete in the business transaction", func(t *testing.T) {
		dsn := testenv.PostgresURL(t)
		admin := pgPool(t, dsn, 2)
		table := pgTable(t, admin)
		ledger := table + "_ledger"
		_, err := admin.Exec(bg, "CREATE TABLE "+pgx.Identifier{ledger}.Sanitize()+" (request text NOT NULL)")
		require.NoError(t, err)
		t.Cleanup(func() { _, _ = admin.Exec(bg, "DROP TABLE IF EXISTS "+pgx.Identifier{ledger}.Sanitize()) })
		px := newFaultProxy(t, pgHostPort(t, dsn))
		pool := pgPool(t, pgWithHost(t, dsn, px.Addr()), 1)
		clk := clock.NewFake(time.Time{})
		store := pgstore.New(pool, pgstore.WithTable(table), pgstore.WithClock(clk))

		// pay runs one request the transactional way: claim, business
		// write and complete commit together. fault, when set, is called
		// with the step about to run.
		pay := func(id string, fault func(step string)) (string, error) {
			if fault == nil {
				fault = func(string) {}
			}
			key := idempotency.DeriveKey("", "POST", "/pay", id)
			ctx, cancel := context.WithTimeout(bg, 2*time.Second)
			defer cancel()
			tx, err := pool.Begin(ctx)
			if err != nil {
				return "", err
			}
			defer func() { _ = tx.Rollback(ctx) }()
			s := store.WithTx(tx)
			res, err := s.Claim(ctx, key, idempotency.Fingerprint{}, pgLease)
			if err != nil {
				return "", err
			}
			if res.Status == idempotency.Completed {
				return "replayed " + string(res.Response.Body), nil
			}
			if res.Status != idempotency.Claimed {
				return "", fmt.Errorf("claim: %v", res.Status)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO "+pgx.Identifier{ledger}.Sanitize()+" VALUES ($1)", id); err != nil {
				return "", err
			}
			fault("complete")
			if err := s.Complete(ctx, key, res.Owner, idempotency.Response{Status: 201, Body: []byte(id)}, time.Hour); err != nil {
				return "", err
			}
			fault("commit")
			if err := tx.Commit(ctx); err != nil {
				return "", err
			}
			return "ran " + id, nil
		}
		entries := func(id string) int {
			var n int
			require.NoError(t, admin.QueryRow(bg, "SELECT count(*) FROM "+pgx.Identifier{ledger}.Sanitize()+" WHERE request = $1", id).Scan(&n))
			return n
		}
		got, err := pay("warm-up", nil) // prepares the statements on the connection
		require.NoError(t, err)
		require.Equal(t, "ran warm-up", got)
		cases := []struct {
			id, step, stream, retried string
		}{
			{"tx-complete-up", "complete", "upstream", "ran tx-complete-up"},
			{"tx-complete-down", "complete", "downstream", "ran tx-complete-down"},
			{"tx-commit-up", "commit", "upstream", "ran tx-commit-up"},
			{"tx-commit-down", "commit", "downstream", "replayed tx-commit-down"},
		}
		for _, c := range cases {
			_, err := pay(c.id, func(step string) {
				if step == c.step {
					px.AddToxic(resetToxic(c.stream))
				}
			})
			px.RemoveToxic("reset-" + c.stream)
			require.Error(t, err, c.id)
			// Whatever the first attempt left, a retry with the same key
			// sees a consistent state: nothing (rolled back) or the
			// committed result. No lease to wait for.
			got, err := pay(c.id, nil)
			require.NoError(t, err, c.id)
			require.Equal(t, c.retried, got)
			require.Equal(t, 1, entries(c.id), "%s: the effect is in the ledger exactly once", c.id)
		}
	})
}
