package redisrate

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwark-go/bulwark/internal/parallel"
	"github.com/bulwark-go/bulwark/internal/testenv"
	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkAllow measures allowed decisions that write state, metrics on,
// against the real Redis: serial, and from 64 goroutines, reporting decisions
// per second.
func BenchmarkAllow(b *testing.B) {
	rdb := newClient(b, testenv.RedisAddr(b))
	l := New("bench", rdb, 1e6, 1_000_000_000, WithKeyPrefix(testPrefix(b, rdb)),
		WithRegisterer(prometheus.NewRegistry()), WithFailureMode(FailClosed()),
		WithTimeout(time.Second)) // a loaded 2-core machine can exceed the default; fail only on real errors
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = "client-" + strconv.Itoa(i)
	}
	if _, err := l.Allow(bg, "warm", 1); err != nil { // loads the script
		b.Fatal(err)
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if d, err := l.Allow(bg, keys[i%len(keys)], 1); err != nil || !d.Allowed {
				b.Fatal(d, err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
	})
	b.Run("parallel64", func(b *testing.B) {
		b.ReportAllocs()
		var g atomic.Int64
		parallel.Run(b, 64, func(pw *parallel.Worker) {
			i := int(g.Add(1)) * 37
			for pw.Next() {
				i++
				if d, err := l.Allow(bg, keys[i%len(keys)], 1); err != nil || !d.Allowed {
					b.Error(d, err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
	})
}
