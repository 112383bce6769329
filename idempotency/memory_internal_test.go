package idempotency

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/clock"
)

// TestMemoryConcurrentBytes: goroutines claim, complete and release keys of
// every shard of a small store, with responses up to three times a shard's
// share of MaxBytes and retentions short enough to expire. The byte count
// never exceeds MaxBytes, no lease is lost while it lasts (with leases that
// outlast the test's clock, none is), and once the calls are done the count
// equals the bytes of the records held.
func TestMemoryConcurrentBytes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		lease time.Duration
	}{{"leases outlast the test", time.Hour}, {"leases lapse", 5 * time.Millisecond}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testMemoryConcurrentBytes(t, tc.lease)
		})
	}
}

func testMemoryConcurrentBytes(t *testing.T, leaseFor time.Duration) {
	const maxBytes, workers, ops = 16 << 10, 16, 1000
	leaseLost := error(nil) // allowed only when leases lapse
	if leaseFor < time.Hour {
		leaseLost = ErrLeaseLost
	}
	clk := clock.NewFake(time.Time{})
	s := NewMemoryStore(MemoryConfig{MaxEntries: 64, MaxBytes: maxBytes, Clock: clk})
	require.Equal(t, 4, s.mask+1, "four shards of 4 KiB each")
	ctx := context.Background()
	var large atomic.Int64 // responses stored that are larger than a shard's share
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			type lease struct {
				key   Key
				owner Token
			}
			var held []lease
			check := func(op string, err error, allowed ...error) bool {
				if b := s.Bytes(); b > maxBytes {
					t.Errorf("%s: %d bytes counted; MaxBytes %d", op, b, maxBytes)
					return false
				}
				for _, a := range allowed {
					if errors.Is(err, a) {
						return true
					}
				}
				if err != nil {
					t.Errorf("%s: %v", op, err)
					return false
				}
				return true
			}
			for range ops {
				if len(held) == 2 {
					l := held[0]
					held = held[1:]
					if rng.IntN(4) == 0 {
						if !check("release", s.Release(ctx, l.key, l.owner), leaseLost) {
							return
						}
						continue
					}
					body := make([]byte, rng.IntN(12<<10))
					retention := time.Duration(1+rng.IntN(50)) * time.Millisecond
					err := s.Complete(ctx, l.key, l.owner, Response{Status: 200, Body: body}, retention)
					if !check("complete", err, ErrStoreFull, leaseLost) {
						return
					}
					if err == nil && len(body) > maxBytes/4 {
						large.Add(1)
					}
					continue
				}
				k := Key{0: byte(rng.IntN(64))}
				r, err := s.Claim(ctx, k, Fingerprint{}, leaseFor)
				if !check("claim", err, ErrStoreFull) {
					return
				}
				if err == nil && r.Status == Claimed {
					held = append(held, lease{k, r.Owner})
				}
				if rng.IntN(8) == 0 {
					clk.Advance(time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
	require.Positive(t, large.Load(), "responses larger than a shard's share of MaxBytes are stored")

	var held int64
	records := 0
	for i := 0; i <= s.mask; i++ {
		sh := &s.shards[i]
		sh.mu.Lock()
		require.LessOrEqual(t, len(sh.m), sh.maxEntries)
		records += len(sh.m)
		for _, e := range sh.m {
			held += e.size()
		}
		sh.mu.Unlock()
	}
	require.Positive(t, records)
	require.Equal(t, held, s.Bytes(), "the count is exact once the calls are done")
}
