package main

import (
	"context"
	"fmt"
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

// histogram counts durations in buckets of at most 1/64 (1.6%) relative
// width: values below 64ns exactly, above that by their top 7 bits. It
// records without allocating.
type histogram struct {
	counts [64 * 64]uint64
	n      uint64
}

func bucketOf(ns uint64) int {
	if ns < 64 {
		return int(ns)
	}
	e := bits.Len64(ns) - 7 // shift that leaves the top 7 bits, 64..127
	return (e+1)*64 + int(ns>>e) - 64
}

// bucketValue is the middle of bucket i.
func bucketValue(i int) float64 {
	if i < 64 {
		return float64(i)
	}
	e := i/64 - 1
	lo := uint64(i%64+64) << e
	return float64(lo) + float64(uint64(1)<<e)/2
}

func (h *histogram) record(d time.Duration) {
	h.counts[bucketOf(uint64(max(d, 0)))]++
	h.n++
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
}

// quantile returns the q-quantile (0 < q ≤ 1) of the recorded durations, in
// nanoseconds, to the bucket's precision; NaN when nothing was recorded.
func (h *histogram) quantile(q float64) float64 {
	if h.n == 0 {
		return math.NaN()
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		if seen += c; seen >= rank {
			return bucketValue(i)
		}
	}
	return bucketValue(len(h.counts) - 1)
}

// result is what one measurement of a variant found.
type result struct {
	requests uint64        // completed in the window
	elapsed  time.Duration // of the window
	hist     histogram     // latencies completed in the window
	allocs   allocStats    // of the client process during the window
	server   allocStats    // of the server process during the window
}

func (r *result) rate() float64 { return float64(r.requests) / r.elapsed.Seconds() }

// Phases of a measurement.
const (
	warming int32 = iota
	measuring
	stopping
)

// measure runs a closed loop: workers goroutines each call do, one call after
// the other, as fast as the answers come. After warmup it records for
// duration: calls completed in that window, their latencies and the
// allocations of both processes (serverStats reads the server's counters).
// The first error stops the measurement.
func measure(ctx context.Context, workers int, warmup, duration time.Duration,
	do func(ctx context.Context, worker int) error, serverStats func() (allocStats, error)) (*result, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		phase    atomic.Int32
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	hists := make([]histogram, workers)
	counts := make([]uint64, workers)
	for w := range workers {
		wg.Go(func() {
			h := &hists[w]
			for phase.Load() != stopping {
				start := time.Now()
				err := do(ctx, w)
				if err != nil {
					errOnce.Do(func() {
						firstErr = fmt.Errorf("worker %d: %w", w, err)
						phase.Store(stopping)
						cancel()
					})
					return
				}
				if phase.Load() == measuring {
					h.record(time.Since(start))
					counts[w]++
				}
			}
		})
	}
	stop := func() {
		phase.Store(stopping)
		wg.Wait()
	}
	sleep := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		}
	}
	if !sleep(warmup) {
		stop()
		return nil, firstErrOr(firstErr, ctx.Err())
	}
	srv0, err := serverStats()
	if err != nil {
		stop()
		return nil, err
	}
	cli0 := readAllocStats()
	start := time.Now()
	phase.CompareAndSwap(warming, measuring)
	ok := sleep(duration)
	phase.Store(stopping)
	elapsed := time.Since(start)
	cli1 := readAllocStats()
	wg.Wait()
	if !ok || firstErr != nil {
		return nil, firstErrOr(firstErr, ctx.Err())
	}
	srv1, err := serverStats()
	if err != nil {
		return nil, err
	}
	r := &result{elapsed: elapsed}
	for w := range workers {
		r.hist.merge(&hists[w])
		r.requests += counts[w]
	}
	r.allocs = allocStats{cli1.mallocs - cli0.mallocs, cli1.bytes - cli0.bytes}
	r.server = allocStats{srv1.mallocs - srv0.mallocs, srv1.bytes - srv0.bytes}
	return r, nil
}

func firstErrOr(err, alt error) error {
	if err != nil {
		return err
	}
	return alt
}
