package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// result is what one caller saw.
type result struct {
	phase   Phase
	at      time.Duration // since the run started
	status  int           // 0 when the request failed without a response
	latency time.Duration
}

// loadgen sends checkout requests at a fixed rate and records what callers saw.
type loadgen struct {
	rate     int
	duration time.Duration
	timeout  time.Duration
	maxInFly int

	mu      sync.Mutex
	results []result

	sent, ok, failed, shed atomic.Int64
}

// run sends requests to url until the duration has passed, then waits for
// the requests in flight.
func (l *loadgen) run(ctx context.Context, url string, sched *schedule, tick func()) {
	client := &http.Client{Timeout: l.timeout, Transport: &http.Transport{MaxIdleConnsPerHost: l.maxInFly}}
	defer client.CloseIdleConnections()
	interval := time.Second / time.Duration(l.rate)
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	second := time.NewTicker(time.Second)
	defer second.Stop()
	deadline := time.NewTimer(l.duration)
	defer deadline.Stop()
	sem := make(chan struct{}, l.maxInFly)
	var wg sync.WaitGroup
	defer wg.Wait()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-second.C:
			tick()
			continue
		case <-ticker.C:
		}
		select {
		case sem <- struct{}{}:
		default:
			l.shed.Add(1) // the load generator itself is saturated
			continue
		}
		wg.Add(1)
		l.sent.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			l.one(ctx, client, url, fmt.Sprintf("order-%06d", n), sched)
		}()
	}
}

func (l *loadgen) one(ctx context.Context, client *http.Client, url, order string, sched *schedule) {
	start := time.Now()
	body := fmt.Sprintf(`{"order":%q,"amount":1999}`, order)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewBufferString(body))
	req.Header.Set("Content-Type", "application/json")
	status := 0
	resp, err := client.Do(req)
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		status = resp.StatusCode
	}
	r := result{phase: sched.at(start), at: start.Sub(sched.start), status: status, latency: time.Since(start)}
	if status == http.StatusOK {
		l.ok.Add(1)
	} else {
		l.failed.Add(1)
	}
	l.mu.Lock()
	l.results = append(l.results, r)
	l.mu.Unlock()
}

// latencies returns the p50 and p99 latency of successful requests.
func (l *loadgen) latencies() (p50, p99 time.Duration) {
	l.mu.Lock()
	var ds []time.Duration
	for _, r := range l.results {
		if r.status == http.StatusOK {
			ds = append(ds, r.latency)
		}
	}
	l.mu.Unlock()
	if len(ds) == 0 {
		return 0, 0
	}
	slices.Sort(ds)
	q := func(f float64) time.Duration { return ds[min(len(ds)-1, int(f*float64(len(ds))))] }
	return q(0.50), q(0.99)
}

// recovery returns how long after the faults ended (the start of the
// recovered phase) the first whole second began in which at least 95% of
// requests succeeded; -1 when that never happened.
func (l *loadgen) recovery(sched *schedule) time.Duration {
	from := sched.phaseStart(Recovered)
	type bucket struct{ ok, all int }
	buckets := map[int]*bucket{}
	l.mu.Lock()
	for _, r := range l.results {
		if r.at < from {
			continue
		}
		i := int((r.at - from) / time.Second)
		b := buckets[i]
		if b == nil {
			b = &bucket{}
			buckets[i] = b
		}
		b.all++
		if r.status == http.StatusOK {
			b.ok++
		}
	}
	l.mu.Unlock()
	for i := 0; i < len(buckets)+1; i++ {
		if b := buckets[i]; b != nil && b.all > 0 && float64(b.ok) >= 0.95*float64(b.all) {
			return time.Duration(i) * time.Second
		}
	}
	return -1
}

// inPhase returns how many requests started in phase p.
func (l *loadgen) inPhase(p Phase) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var n int64
	for _, r := range l.results {
		if r.phase == p {
			n++
		}
	}
	return n
}
