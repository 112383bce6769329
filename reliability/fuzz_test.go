package reliability

import (
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/ratelimit"
)

// FuzzLocalKeyBound sends random keys and costs to a ratelimit.Local with a
// small WithMaxKeys bound, moving a fake clock, and checks after every
// decision that it remembers at most max(bound, 64) keys (the bound is
// raised to one key per shard) and that every decision is well formed:
// remaining within the quota, a retry-after exactly when denied, a cost of
// zero always allowed.
func FuzzLocalKeyBound(f *testing.F) {
	f.Add(uint16(0), []byte("abcdefghijklmnopqrstuvwxyz0123456789"))
	f.Add(uint16(100), []byte{1, 2, 3, 1, 2, 3, 250, 1, 0, 0, 0, 0})
	f.Add(uint16(64), []byte{9, 9, 9, 9, 9, 9, 9, 9, 9, 255, 9, 9})
	f.Fuzz(func(t *testing.T, maxKeys uint16, ops []byte) {
		const burst = 4
		clk := clock.NewFake(time.Time{})
		l := ratelimit.NewLocal("fuzz", rate.Limit(2), burst, ratelimit.WithMaxKeys(int(maxKeys)), ratelimit.WithClock(clk))
		bound := max(int(maxKeys), 64)
		if len(ops) > 4000 {
			ops = ops[:4000]
		}
		for i, b := range ops {
			if b == 255 {
				clk.Advance(700 * time.Millisecond)
				continue
			}
			// Keys spread well beyond the bound: the byte and its position.
			key := string([]byte{b, byte(i), byte(i >> 8)})
			cost := int(b) % (burst + 1)
			d, err := l.Allow(bg, key, cost)
			if err != nil {
				t.Fatalf("op %d: %v", i, err)
			}
			if d.Remaining < 0 || d.Remaining > burst || d.Limit != burst ||
				(d.RetryAfter > 0) == d.Allowed || (cost == 0 && !d.Allowed) {
				t.Fatalf("op %d: cost %d: ill-formed %+v", i, cost, d)
			}
			if n := l.Len(); n > bound {
				t.Fatalf("op %d: %d keys remembered, bound %d", i, n, bound)
			}
		}
	})
}
