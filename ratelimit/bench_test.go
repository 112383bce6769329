package ratelimit

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/bulwark-go/bulwark/internal/parallel"
)

// The rate is so high that every decision is allowed: these measure the
// allowed path, metrics on. BenchmarkBareRate is x/time/rate alone, for the
// ratio (the target: Local ≈ bare Allow + the key lookup).

const benchKeys = 1024

func benchKeyNames() []string {
	keys := make([]string, benchKeys)
	for i := range keys {
		keys[i] = "client-" + strconv.Itoa(i)
	}
	return keys
}

func BenchmarkLocalAllow(b *testing.B) {
	l := NewLocal("bench", 1e12, 1e9, WithRegisterer(prometheus.NewRegistry()))
	keys := benchKeyNames()
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			d, _ := l.Allow(bg, keys[i%benchKeys], 1)
			if !d.Allowed {
				b.Fatal("denied")
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		var g atomic.Int64
		parallel.Run(b, 0, func(pw *parallel.Worker) {
			i := int(g.Add(1)) * 101
			for pw.Next() {
				i++
				d, _ := l.Allow(bg, keys[i%benchKeys], 1)
				if !d.Allowed {
					b.Error("denied")
					return
				}
			}
		})
	})
}

func BenchmarkBareRate(b *testing.B) {
	lims := make([]*rate.Limiter, benchKeys)
	for i := range lims {
		lims[i] = rate.NewLimiter(1e12, 1e9)
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if !lims[i%benchKeys].Allow() {
				b.Fatal("denied")
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		var g atomic.Int64
		parallel.Run(b, 0, func(pw *parallel.Worker) {
			i := int(g.Add(1)) * 101
			for pw.Next() {
				i++
				if !lims[i%benchKeys].Allow() {
					b.Error("denied")
					return
				}
			}
		})
	})
}

// BenchmarkLocalNewKeys measures the worst case for memory: every call brings
// a key never seen, so every call inserts one and evicts another.
func BenchmarkLocalNewKeys(b *testing.B) {
	l := NewLocal("bench", 1e12, 1e9, WithMaxKeys(10_000))
	keys := make([]string, 1<<16)
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i) + "-" + time.Duration(i).String()
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		_, _ = l.Allow(bg, keys[i%len(keys)], 1)
	}
}
