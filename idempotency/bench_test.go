package idempotency_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/idempotency/internal/storetest"
	"github.com/bulwark-go/bulwark/internal/parallel"
)

func BenchmarkMemoryClaimComplete(b *testing.B) {
	storetest.Bench(b, idempotency.NewMemoryStore(idempotency.MemoryConfig{}))
}

func BenchmarkMemoryReplay(b *testing.B) {
	s := idempotency.NewMemoryStore(idempotency.MemoryConfig{})
	ctx := context.Background()
	k := idempotency.DeriveKey("s", "POST", "/", "k")
	r, _ := s.Claim(ctx, k, idempotency.Fingerprint{}, idempotency.DefaultLease)
	_ = s.Complete(ctx, k, r.Owner, idempotency.Response{Status: 200, Body: []byte("ok")}, idempotency.DefaultRetention)
	b.ReportAllocs()
	parallel.Run(b, 0, func(pw *parallel.Worker) {
		for pw.Next() {
			if r, _ := s.Claim(ctx, k, idempotency.Fingerprint{}, idempotency.DefaultLease); r.Status != idempotency.Completed {
				b.Fatal(r.Status)
			}
		}
	})
}

// BenchmarkGuardNewRequest is what an adapter pays per new request with
// metrics on: key validation and derivation, claim, the renewal goroutine,
// and complete.
func BenchmarkGuardNewRequest(b *testing.B) {
	g := idempotency.New("bench", nil, idempotency.WithRegisterer(prometheus.NewRegistry()))
	ctx := context.Background()
	resp := idempotency.Response{Status: 201, Body: []byte(`{"id":1}`)}
	keys := make([]string, 1<<16)
	for i := range keys {
		keys[i] = "key-" + strconv.Itoa(i)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		out, err := g.Begin(ctx, idempotency.Request{Scope: strconv.Itoa(i >> 16), Method: "POST", Route: "/orders", Key: keys[i&(len(keys)-1)]})
		if err != nil || out.Lease == nil {
			b.Fatal(out.Result, err)
		}
		if err := out.Lease.Finish(ctx, resp); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDeriveKey(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = idempotency.DeriveKey("tenant-42", "POST", "/v1/orders", "8e03978e-40d5-43e8-bc93-6894a57f9324")
	}
}
