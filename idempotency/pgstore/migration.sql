-- bulwark idempotency records (github.com/bulwark-go/bulwark/idempotency/pgstore).
-- pgstore.CreateTable runs this file, with the table name of the WithTable
-- option in place of bulwark_idempotency.
CREATE TABLE IF NOT EXISTS bulwark_idempotency (
    -- SHA-256 of (scope, method, route, client key): idempotency.DeriveKey.
    -- The raw client key is never stored.
    key         bytea       PRIMARY KEY,
    -- SHA-256 fingerprint of the request that claimed the key.
    fingerprint bytea       NOT NULL,
    -- Owner token of the current lease while in flight; NULL once completed.
    owner       bytea,
    -- End of the lease while in flight, end of retention once completed.
    -- A row whose deadline has passed counts as absent.
    deadline    timestamptz NOT NULL,
    -- The stored idempotency.Response (binary encoding) once completed.
    response    bytea,
    -- When the current claim was made.
    created_at  timestamptz NOT NULL
);
-- Cleanup deletes by deadline.
CREATE INDEX IF NOT EXISTS bulwark_idempotency_deadline_idx ON bulwark_idempotency (deadline);
