// Package pgstore is an idempotency.Store on PostgreSQL, through
// github.com/jackc/pgx/v5, for replicas that must agree on which request
// runs, and for handlers that want their business write and the stored
// response to commit in one transaction.
//
// # Table
//
// The records live in one table, bulwark_idempotency by default (WithTable).
// Its definition ships in this package as Migration (migration.sql); run it
// with your migration tool, or call Store.CreateTable. Columns: key (bytea
// primary key, the SHA-256 digest of scope, method, route and client key —
// raw keys are never stored), fingerprint, owner (the lease's token while in
// flight, NULL once completed), deadline (lease end, then retention end),
// response (the encoded idempotency.Response) and created_at. A row whose
// deadline has passed counts as absent; Store.Cleanup deletes such rows and
// should run periodically (once a minute is plenty).
//
// # One statement per operation
//
// Claim is one INSERT … ON CONFLICT (key) DO UPDATE … RETURNING. On a
// conflict the update always takes the row: when the row's deadline has
// passed it writes the new claim over it (taking over an expired lease or a
// retention-expired result), otherwise it writes the row's own values back.
// RETURNING then yields the row as it now is, and the answer follows from it:
// our owner token means claimed; another fingerprint, mismatch; a response,
// completed; else in flight until the returned deadline. Writing the row back
// costs a (HOT) row version on replays and in-flight answers, and buys
// correctness under READ COMMITTED in one round trip: ON CONFLICT DO UPDATE
// always sees and locks the latest committed row, whereas a conditional
// DO UPDATE … WHERE with a fallback SELECT (in a CTE or after it) reads the
// statement's snapshot, which misses a row committed by a concurrent claim
// a moment earlier — it would answer nothing at all.
//
// Complete, Release and Extend are one UPDATE or DELETE each, guarded by the
// owner token and an unexpired deadline (fencing), and report ErrLeaseLost
// when no row matched.
//
// # Time
//
// The current time is a parameter of every statement, taken from the
// Store's clock (WithClock), not the server's now(): tests can expire leases
// with a fake clock, and the semantics match the other stores. Replicas need
// synchronized clocks (see the idempotency package documentation).
//
// # Inside the caller's transaction
//
// Store.WithTx(tx) returns a Store whose statements run in tx. Claim the key,
// do the business write, Complete, and commit: the effect and the stored
// response commit together or not at all, and a crash or rollback leaves the
// key free. While tx is open its claim is invisible to other transactions,
// and a concurrent claim of the same key waits on the row lock until tx ends
// (then sees the completed response, or claims the key after a rollback)
// rather than answering in flight; keep such transactions short, and give
// the waiting side a context deadline. Any statement error aborts tx, as
// always in PostgreSQL.
//
// Call such a Store's methods yourself, from the goroutine that owns tx; do
// not give it to an idempotency.Guard. A Guard renews leases from a goroutine
// of its own, and a statement it ran on tx while the handler used tx would
// fail one of the two with "conn busy" (a pgx.Tx is not safe for concurrent
// use). Renewal is pointless there anyway: other transactions wait for tx.
package pgstore
