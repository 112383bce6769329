package breaker

import (
	"sync"
	"sync/atomic"
	"time"
)

// tally is what a window holds: calls, and how many of them failed or were
// slow.
type tally struct {
	calls, failures, slow int64
}

// window is a sliding window of call outcomes.
type window interface {
	// record adds one outcome and returns the window's tally after it.
	// elapsed is the time of the outcome since the breaker's epoch, read
	// from its clock's Since: monotonic on the real clock, so that a step of
	// the wall clock (NTP, a resumed VM) cannot move calls out of the window.
	record(elapsed time.Duration, failed, slow bool) tally
	// tally returns the current tally, at elapsed since the epoch.
	tally(elapsed time.Duration) tally
	// timed reports whether the window needs the time of each call.
	timed() bool
}

// Slot values of the count window. A slot is empty until the window has
// seen as many calls as it has slots.
const (
	slotEmpty   uint32 = 0
	slotSuccess uint32 = 1
	slotFailure uint32 = 2
	slotSlow    uint32 = 4 // or-ed onto success or failure
)

// countWindow holds the outcomes of the last len(slots) calls in a ring and
// keeps running totals, without a lock: a recorder claims the next slot with
// one atomic add, swaps its outcome in, and adjusts the totals by the
// difference between what it wrote and what it replaced. The totals always
// converge to the ring's contents; between two recorders' steps a reader may
// see one outcome counted before another has left, which is harmless for a
// threshold check.
//
// The slot sequence comes from the breaker's counter of closed-state calls,
// which never resets (it doubles as the source of the calls metric), and
// consecutive calls land a stride of slots apart so that two cores recording
// at once rarely write the same cache line.
type countWindow struct {
	seq                   *atomic.Uint64
	stride                uint64
	calls, failures, slow atomic.Int64
	slots                 []atomic.Uint32
}

func newCountWindow(n int, seq *atomic.Uint64) *countWindow {
	return &countWindow{seq: seq, stride: strideFor(uint64(n)), slots: make([]atomic.Uint32, n)}
}

// strideFor returns a step, coprime with n, that moves at least a cache line
// (16 slots) from one call's slot to the next: every n consecutive calls
// still map to n distinct slots.
func strideFor(n uint64) uint64 {
	if n <= 16 {
		return 1
	}
	for s := uint64(17); ; s += 2 {
		if gcd(s, n) == 1 {
			return s
		}
	}
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func (w *countWindow) timed() bool { return false }

func (w *countWindow) record(_ time.Duration, failed, slow bool) tally {
	v := slotSuccess
	if failed {
		v = slotFailure
	}
	if slow {
		v |= slotSlow
	}
	i := ((w.seq.Add(1) - 1) * w.stride) % uint64(len(w.slots))
	old := w.slots[i].Swap(v)
	if old == slotEmpty {
		w.calls.Add(1)
	}
	// Only a change of failure or slowness touches the shared totals, so a
	// stream of successes writes nothing but the ring.
	if d := int64(v&slotFailure)>>1 - int64(old&slotFailure)>>1; d != 0 {
		w.failures.Add(d)
	}
	if d := int64(v&slotSlow)>>2 - int64(old&slotSlow)>>2; d != 0 {
		w.slow.Add(d)
	}
	return tally{calls: w.calls.Load(), failures: w.failures.Load(), slow: w.slow.Load()}
}

func (w *countWindow) tally(time.Duration) tally {
	return tally{calls: w.calls.Load(), failures: w.failures.Load(), slow: w.slow.Load()}
}

// timeWindow holds the outcomes of the last d in buckets of d/len(buckets).
type timeWindow struct {
	seq     *atomic.Uint64 // the breaker's closed-call counter
	mu      sync.Mutex
	width   int64   // nanoseconds per bucket
	buckets []tally // bucket i%len holds the calls of time index i
	head    int64   // index of the newest bucket seen
	sum     tally
}

func newTimeWindow(d time.Duration, n int, seq *atomic.Uint64) *timeWindow {
	return &timeWindow{seq: seq, width: int64(d) / int64(n), buckets: make([]tally, n), head: -1 << 62}
}

func (w *timeWindow) timed() bool { return true }

// advance drops the buckets that have left the window by elapsed. w.mu is
// held.
func (w *timeWindow) advance(elapsed time.Duration) int64 {
	idx := int64(elapsed) / w.width
	if idx <= w.head {
		return idx
	}
	n := int64(len(w.buckets))
	from := w.head + 1
	if idx-from >= n {
		from = idx - n + 1
	}
	for i := from; i <= idx; i++ {
		b := w.bucket(i)
		w.sum.calls -= b.calls
		w.sum.failures -= b.failures
		w.sum.slow -= b.slow
		*b = tally{}
	}
	w.head = idx
	return idx
}

// bucket returns the bucket of time index i, which may be negative: a
// clock's first reading is the breaker's epoch, and index 0 is its bucket.
func (w *timeWindow) bucket(i int64) *tally {
	n := int64(len(w.buckets))
	return &w.buckets[(i%n+n)%n]
}

func (w *timeWindow) record(elapsed time.Duration, failed, slow bool) tally {
	w.seq.Add(1)
	w.mu.Lock()
	defer w.mu.Unlock()
	idx := w.advance(elapsed)
	if idx <= w.head-int64(len(w.buckets)) {
		return w.sum // a call that ended before the window: too old to count
	}
	// Every index in (head-len, head] has its own bucket, reset by advance.
	b := w.bucket(idx)
	b.calls++
	w.sum.calls++
	if failed {
		b.failures++
		w.sum.failures++
	}
	if slow {
		b.slow++
		w.sum.slow++
	}
	return w.sum
}

func (w *timeWindow) tally(elapsed time.Duration) tally {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.advance(elapsed)
	return w.sum
}
