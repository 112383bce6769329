package storetest

import (
	"context"
	"encoding/binary"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/internal/parallel"
)

// Goroutines is the concurrency of the parallel benchmarks.
const Goroutines = 64

// Bench benchmarks one claim plus one complete of a fresh key — the work of
// one new idempotent request — serially and from Goroutines goroutines. It
// reports ops/s, where an op is the claim+complete pair; allocs/op counts
// the pair too.
func Bench(b *testing.B, s idempotency.Store) {
	var seq atomic.Uint64
	base := uint64(time.Now().UnixNano())
	resp := idempotency.Response{
		Status: 201,
		Header: []idempotency.Field{{Name: "Content-Type", Value: "application/json"}},
		Body:   []byte(`{"id":"ord_1234567890","status":"created"}`),
	}
	one := func(ctx context.Context) {
		var k idempotency.Key
		n := seq.Add(1)
		binary.LittleEndian.PutUint64(k[:], n*0x9E3779B97F4A7C15)
		binary.LittleEndian.PutUint64(k[8:], base)
		r, err := s.Claim(ctx, k, idempotency.Fingerprint{}, time.Minute)
		if err != nil || r.Status != idempotency.Claimed {
			b.Fatalf("claim: %v %v", r.Status, err)
		}
		if err := s.Complete(ctx, k, r.Owner, resp, time.Minute); err != nil {
			b.Fatalf("complete: %v", err)
		}
	}
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			one(ctx)
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		parallel.Run(b, Goroutines, func(pw *parallel.Worker) {
			for pw.Next() {
				one(ctx)
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	})
}
