package reliability

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// phaser numbers the phases of a fault scenario (healthy, faulty,
// restored...), so that each request can be judged by the phase it ran in
// from start to end; requests that straddle a change are left out.
type phaser struct{ cur atomic.Int32 }

func (p *phaser) next()      { p.cur.Add(1) }
func (p *phaser) get() int32 { return p.cur.Load() }

// sample is one request of a load run.
type sample struct {
	phase   int32 // -1 when the request straddled a phase change
	took    time.Duration
	status  int
	worker  int
	seq     int
	header  map[string]string
	errText string
}

// runWorkers runs fn on workers goroutines, each paced by its own ticker of
// period every, until ctx ends, and returns every sample. fn returns the
// sample's status, a few header fields and an error text.
func runWorkers(ctx context.Context, ph *phaser, workers int, every time.Duration,
	fn func(ctx context.Context, worker, seq int) (int, map[string]string, string)) []sample {
	var (
		mu  sync.Mutex
		all []sample
		wg  sync.WaitGroup
	)
	for w := range workers {
		wg.Go(func() {
			tick := time.NewTicker(every)
			defer tick.Stop()
			var mine []sample
			for seq := 0; ; seq++ {
				select {
				case <-ctx.Done():
					mu.Lock()
					all = append(all, mine...)
					mu.Unlock()
					return
				case <-tick.C:
				}
				p0 := ph.get()
				start := time.Now()
				status, hdr, errText := fn(context.WithoutCancel(ctx), w, seq)
				s := sample{phase: p0, took: time.Since(start), status: status, worker: w, seq: seq, header: hdr, errText: errText}
				if ph.get() != p0 {
					s.phase = -1
				}
				mine = append(mine, s)
			}
		})
	}
	wg.Wait()
	return all
}

// byPhase splits samples by phase, dropping those that straddled a change.
func byPhase(all []sample) map[int32][]sample {
	m := make(map[int32][]sample)
	for _, s := range all {
		if s.phase >= 0 {
			m[s.phase] = append(m[s.phase], s)
		}
	}
	return m
}

func maxTook(ss []sample) time.Duration {
	var m time.Duration
	for _, s := range ss {
		m = max(m, s.took)
	}
	return m
}

func statusMix(ss []sample) map[int]int {
	m := make(map[int]int)
	for _, s := range ss {
		m[s.status]++
	}
	return m
}
