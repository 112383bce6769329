package pgstore_test

import (
	"testing"

	"github.com/bulwark-go/bulwark/idempotency/internal/storetest"
	"github.com/bulwark-go/bulwark/idempotency/pgstore"
	"github.com/bulwark-go/bulwark/internal/testenv"
)

// BenchmarkClaimComplete: two statements (one per operation) per op, over
// at most 8 connections (the pgxpool size newPool sets).
func BenchmarkClaimComplete(b *testing.B) {
	dsn := testenv.PostgresURL(b)
	table := uniqueTable(b, dsn)
	storetest.Bench(b, pgstore.New(newPool(b, dsn), pgstore.WithTable(table)))
}
