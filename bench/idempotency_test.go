package bench

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/bulwark-go/bulwark/idempotency"
)

// Idempotency: a first request with a new key, at the store: Claim (absent →
// in flight) then Complete (store the response), the two store operations
// every new request costs. None of the peers has idempotency keys, so the
// bare call is the only comparison. The memory store keeps its default
// bounds; a run long enough to fill it measures the steady state in which
// each claim evicts the oldest completed record.

var (
	idemFingerprint = idempotency.Fingerprint{1, 2, 3}
	idemResponse    = idempotency.Response{
		Status: 201,
		Header: []idempotency.Field{{Name: "Content-Type", Value: "application/json"}},
		Body:   []byte(`{"id":"ch_1","amount":100}`),
	}
)

// idemKey returns a key distinct for every i, spread over the stores' shards
// (a Fibonacci hash fills the leading bytes) without hashing a string.
func idemKey(i int) (k idempotency.Key) {
	binary.BigEndian.PutUint64(k[0:], uint64(i)*0x9E3779B97F4A7C15)
	binary.BigEndian.PutUint64(k[8:], uint64(i))
	return k
}

// claimComplete returns a call that claims the i-th key in s and completes it,
// keeping the response for retention.
func claimComplete(s idempotency.Store, retention time.Duration) func(int) error {
	return func(i int) error {
		k := idemKey(i)
		res, err := s.Claim(bg, k, idemFingerprint, idempotency.DefaultLease)
		if err != nil {
			return err
		}
		if res.Status != idempotency.Claimed {
			return fmt.Errorf("bench: claim of a new key: %v", res.Status)
		}
		return s.Complete(bg, k, res.Owner, idemResponse, retention)
	}
}

func BenchmarkIdempotency(b *testing.B) {
	variants := []variant{
		{"bare", func(int) error { return ok(bg) }},
		{"bulwark-memory", claimComplete(idempotency.NewMemoryStore(idempotency.MemoryConfig{}), idempotency.DefaultRetention)},
	}
	runVariants(b, variants, runOpts{})
}
