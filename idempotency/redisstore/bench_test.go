package redisstore_test

import (
	"testing"

	"github.com/bulwark-go/bulwark/idempotency/internal/storetest"
	"github.com/bulwark-go/bulwark/idempotency/redisstore"
	"github.com/bulwark-go/bulwark/internal/testenv"
)

// BenchmarkClaimComplete: two round trips (one per operation) per op.
func BenchmarkClaimComplete(b *testing.B) {
	addr := testenv.RedisAddr(b)
	c := newClient(b, addr)
	storetest.Bench(b, redisstore.New(c, redisstore.WithPrefix(uniquePrefix(b, addr))))
}
