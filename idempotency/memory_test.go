package idempotency_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/idempotency/internal/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestMemoryConformance(t *testing.T) {
	storetest.Run(t, storetest.Backend{
		Open: func(t *testing.T, clk clock.Clock) func() idempotency.Store {
			s := idempotency.NewMemoryStore(idempotency.MemoryConfig{Clock: clk})
			return func() idempotency.Store { return s }
		},
	})
}

// nthKey returns distinct keys cheaply (no hashing), spread over the shards.
func nthKey(i uint64) idempotency.Key {
	var k idempotency.Key
	binary.LittleEndian.PutUint64(k[:], i*0x9E3779B97F4A7C15)
	binary.LittleEndian.PutUint64(k[8:], i)
	return k
}

// TestMemoryBounds pushes 1,000,000 distinct keys through a store bounded to
// 10,000 records and checks the bounds hold throughout.
func TestMemoryBounds(t *testing.T) {
	n := 1_000_000
	if testing.Short() {
		n = 100_000
	}
	const maxEntries, maxBytes = 10_000, 4 << 20
	clk := clock.NewFake(time.Time{})
	s := idempotency.NewMemoryStore(idempotency.MemoryConfig{MaxEntries: maxEntries, MaxBytes: maxBytes, Clock: clk})
	ctx := context.Background()
	resp := idempotency.Response{Status: 200, Body: make([]byte, 200)}
	for i := range n {
		k := nthKey(uint64(i))
		r, err := s.Claim(ctx, k, idempotency.Fingerprint{}, time.Minute)
		require.NoError(t, err)
		require.Equal(t, idempotency.Claimed, r.Status)
		if i%10 == 0 {
			require.NoError(t, s.Release(ctx, k, r.Owner)) // a 5xx: forgotten
		} else {
			require.NoError(t, s.Complete(ctx, k, r.Owner, resp, 24*time.Hour))
		}
		if i%50_000 == 0 {
			require.LessOrEqual(t, s.Len(), maxEntries)
			require.LessOrEqual(t, s.Bytes(), int64(maxBytes))
			clk.Advance(time.Second)
		}
	}
	require.LessOrEqual(t, s.Len(), maxEntries)
	require.LessOrEqual(t, s.Bytes(), int64(maxBytes))
	require.Greater(t, s.Len(), maxEntries/2, "eviction keeps the store useful")

	// The newest record is still replayed.
	last := nthKey(uint64(n - 1))
	r, err := s.Claim(ctx, last, idempotency.Fingerprint{}, time.Minute)
	require.NoError(t, err)
	require.Equal(t, idempotency.Completed, r.Status)
}

// TestMemoryExpiredRecordsVanish: expired records are removed as traffic
// flows, without waiting for the store to fill.
func TestMemoryExpiredRecordsVanish(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	s := idempotency.NewMemoryStore(idempotency.MemoryConfig{Clock: clk})
	ctx := context.Background()
	for i := range 1000 {
		k := nthKey(uint64(i))
		r, err := s.Claim(ctx, k, idempotency.Fingerprint{}, time.Minute)
		require.NoError(t, err)
		require.NoError(t, s.Complete(ctx, k, r.Owner, idempotency.Response{Status: 200}, time.Hour))
	}
	require.Equal(t, 1000, s.Len())
	clk.Advance(time.Hour)
	for i := 1000; i < 2000; i++ {
		_, err := s.Claim(ctx, nthKey(uint64(i)), idempotency.Fingerprint{}, time.Minute)
		require.NoError(t, err)
	}
	require.Equal(t, 1000, s.Len(), "each claim removed expired records")
	require.Equal(t, int64(1000*idempotency.EntryOverhead), s.Bytes())
}

// TestMemoryNeverEvictsInFlight: a store full of leases refuses new claims
// rather than dropping a running request's lease.
func TestMemoryNeverEvictsInFlight(t *testing.T) {
	s := idempotency.NewMemoryStore(idempotency.MemoryConfig{MaxEntries: 4, MaxBytes: 1 << 20})
	ctx := context.Background()
	var owners []idempotency.Token
	i := uint64(0)
	for ; len(owners) < 4; i++ {
		r, err := s.Claim(ctx, nthKey(i), idempotency.Fingerprint{}, time.Minute)
		if err != nil {
			require.ErrorIs(t, err, idempotency.ErrStoreFull)
			break
		}
		owners = append(owners, r.Owner)
	}
	require.LessOrEqual(t, s.Len(), 4)
	_, err := s.Claim(ctx, nthKey(1000), idempotency.Fingerprint{}, time.Minute)
	if err == nil {
		// The new key landed in a shard with room; fill until full.
		for j := uint64(1001); err == nil; j++ {
			_, err = s.Claim(ctx, nthKey(j), idempotency.Fingerprint{}, time.Minute)
		}
	}
	require.ErrorIs(t, err, idempotency.ErrStoreFull)
	// Every lease still holds.
	for j := uint64(0); j < uint64(len(owners)); j++ {
		require.NoError(t, s.Extend(ctx, nthKey(j), owners[j], time.Minute))
	}
}

// TestMemoryBytesBound: a response larger than the budget is refused as too
// large, and completed responses are evicted to make room for new ones.
func TestMemoryBytesBound(t *testing.T) {
	const budget = 8 * 1024
	s := idempotency.NewMemoryStore(idempotency.MemoryConfig{MaxEntries: 1000, MaxBytes: budget})
	ctx := context.Background()
	k := nthKey(1)
	r, err := s.Claim(ctx, k, idempotency.Fingerprint{}, time.Minute)
	require.NoError(t, err)
	require.ErrorIs(t, s.Complete(ctx, k, r.Owner, idempotency.Response{Body: make([]byte, budget)}, time.Hour), idempotency.ErrResponseTooLarge)
	require.NoError(t, s.Release(ctx, k, r.Owner))
	for i := range uint64(100) {
		k := nthKey(i + 10)
		r, err := s.Claim(ctx, k, idempotency.Fingerprint{}, time.Minute)
		require.NoError(t, err)
		require.NoError(t, s.Complete(ctx, k, r.Owner, idempotency.Response{Body: make([]byte, 1000)}, time.Hour))
		require.LessOrEqual(t, s.Bytes(), int64(budget))
	}
}

// TestMemoryHugeDurations: a lease or retention too long for the deadline to
// be represented lasts as long as the store can count, rather than wrapping
// around to a deadline in the past (a completed record born expired would
// let its repeat run again).
func TestMemoryHugeDurations(t *testing.T) {
	const forever = time.Duration(math.MaxInt64)
	clk := clock.NewFake(time.Time{})
	s := idempotency.NewMemoryStore(idempotency.MemoryConfig{Clock: clk})
	ctx := context.Background()
	k := nthKey(1)
	r, err := s.Claim(ctx, k, idempotency.Fingerprint{}, forever)
	require.NoError(t, err)
	again, err := s.Claim(ctx, k, idempotency.Fingerprint{}, time.Minute)
	require.NoError(t, err)
	require.Equal(t, idempotency.InFlight, again.Status, "a claim with a huge lease holds the key")
	require.NoError(t, s.Extend(ctx, k, r.Owner, forever))
	again, err = s.Claim(ctx, k, idempotency.Fingerprint{}, time.Minute)
	require.NoError(t, err)
	require.Equal(t, idempotency.InFlight, again.Status, "an extension by a huge lease holds the key")
	require.NoError(t, s.Complete(ctx, k, r.Owner, idempotency.Response{Status: 201}, forever))
	clk.Advance(100 * 365 * 24 * time.Hour)
	again, err = s.Claim(ctx, k, idempotency.Fingerprint{}, time.Minute)
	require.NoError(t, err)
	require.Equal(t, idempotency.Completed, again.Status, "a response kept for a huge retention is replayed")
}

// TestMemoryExtendRequeues: an extended lease moves to the back of its
// shard's expiry queue, so a long-running request claimed early does not
// keep the expired records queued behind it from being removed.
func TestMemoryExtendRequeues(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	s := idempotency.NewMemoryStore(idempotency.MemoryConfig{Clock: clk})
	ctx := context.Background()
	sameShard := func(i byte) idempotency.Key { return idempotency.Key{0: 7, 1: i} }
	long, err := s.Claim(ctx, sameShard(0), idempotency.Fingerprint{}, 10*time.Second)
	require.NoError(t, err)
	short, err := s.Claim(ctx, sameShard(1), idempotency.Fingerprint{}, time.Minute)
	require.NoError(t, err)
	require.NoError(t, s.Complete(ctx, sameShard(1), short.Owner, idempotency.Response{Status: 200}, time.Second))
	clk.Advance(5 * time.Second)
	require.NoError(t, s.Extend(ctx, sameShard(0), long.Owner, 10*time.Second))
	_, err = s.Claim(ctx, sameShard(2), idempotency.Fingerprint{}, time.Minute)
	require.NoError(t, err)
	require.Equal(t, 2, s.Len(), "the claim removed the expired record queued behind the extended lease")
}

// TestMemoryLargeRecord: MaxBytes bounds the whole store, not each shard: a
// record may take all of it, evicting the completed records of every shard
// to make room, but never a lease.
func TestMemoryLargeRecord(t *testing.T) {
	const maxBytes = 4 << 20 // 32 shards: 128 KiB each if it were split
	clk := clock.NewFake(time.Time{})
	s := idempotency.NewMemoryStore(idempotency.MemoryConfig{MaxBytes: maxBytes, Clock: clk})
	ctx := context.Background()
	claim := func(k idempotency.Key) idempotency.Token {
		t.Helper()
		r, err := s.Claim(ctx, k, idempotency.Fingerprint{}, time.Minute)
		require.NoError(t, err)
		require.Equal(t, idempotency.Claimed, r.Status)
		return r.Owner
	}
	replayed := func(k idempotency.Key, resp idempotency.Response) {
		t.Helper()
		r, err := s.Claim(ctx, k, idempotency.Fingerprint{}, time.Minute)
		require.NoError(t, err)
		require.Equal(t, idempotency.Completed, r.Status)
		require.Equal(t, resp.Body, r.Response.Body)
	}

	k := nthKey(0)
	resp := idempotency.Response{Status: 200, Body: bytes.Repeat([]byte{'x'}, 200<<10)}
	require.NoError(t, s.Complete(ctx, k, claim(k), resp, time.Hour), "a 200 KiB response in a 4 MiB store")
	replayed(k, resp)

	for i := range uint64(1000) {
		k := nthKey(i + 1)
		require.NoError(t, s.Complete(ctx, k, claim(k), idempotency.Response{Status: 200, Body: make([]byte, 1000)}, time.Hour))
	}

	// A byte more than MaxBytes can never fit: refused at once, evicting
	// nothing.
	k = nthKey(1999)
	owner := claim(k)
	held := s.Len()
	tooLarge := responseOfLen(t, maxBytes-idempotency.EntryOverhead+1)
	require.ErrorIs(t, s.Complete(ctx, k, owner, tooLarge, time.Hour), idempotency.ErrResponseTooLarge)
	require.Equal(t, held, s.Len())
	require.NoError(t, s.Release(ctx, k, owner))

	k = nthKey(2000)
	whole := responseOfLen(t, maxBytes-idempotency.EntryOverhead)
	require.NoError(t, s.Complete(ctx, k, claim(k), whole, time.Hour), "a record of exactly MaxBytes")
	require.Equal(t, 1, s.Len(), "every other record was evicted")
	require.Equal(t, int64(maxBytes), s.Bytes())
	replayed(k, whole)

	// A lease is never evicted: with one held, the same record does not
	// fit, and one that leaves room for the lease does.
	lease := nthKey(3000)
	leaseOwner := claim(lease)
	k = nthKey(3001)
	owner = claim(k)
	require.ErrorIs(t, s.Complete(ctx, k, owner, whole, time.Hour), idempotency.ErrStoreFull)
	require.NoError(t, s.Extend(ctx, lease, leaseOwner, time.Minute))
	rest := responseOfLen(t, maxBytes-2*idempotency.EntryOverhead)
	require.NoError(t, s.Complete(ctx, k, owner, rest, time.Hour))
	require.Equal(t, int64(maxBytes), s.Bytes())
	require.NoError(t, s.Release(ctx, lease, leaseOwner))
}

// responseOfLen returns a response whose encoding is n bytes long.
func responseOfLen(t *testing.T, n int) idempotency.Response {
	t.Helper()
	for body := n; body >= 0; body-- {
		r := idempotency.Response{Status: 200, Body: make([]byte, body)}
		if r.EncodedLen() == n {
			return r
		}
	}
	t.Fatalf("no response encodes to %d bytes", n)
	return idempotency.Response{}
}
