package redisrate

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwark-go/bulwark/internal/testenv"
	"github.com/bulwark-go/bulwark/ratelimit"
	"golang.org/x/time/rate"
)

// bucketModel is a reference for the GCRA script written the other way
// round: as a token bucket that holds credit, in microseconds of emission
// interval, refilled by the time that passes and capped at burst×interval.
// A request of cost c needs c×interval of credit. GCRA keeps the same state
// as one timestamp (the theoretical arrival time, TAT = now + tolerance −
// credit); the two must agree on every decision to the microsecond.
type bucketModel struct {
	interval, burst int64
	credit, last    int64 // credit as of time last (µs)
	started         bool
}

func (m *bucketModel) allow(now, cost int64) (allowed bool, remaining, reset, retry int64) {
	full := m.interval * m.burst
	if !m.started {
		m.credit, m.last, m.started = full, now, true
	}
	m.credit = min(full, m.credit+max(now-m.last, 0))
	m.last = max(m.last, now)
	need := m.interval * cost
	if need > m.credit {
		return false, m.credit / m.interval, full - m.credit, need - m.credit
	}
	m.credit -= need
	return true, m.credit / m.interval, full - m.credit, 0
}

var fuzzKeys atomic.Int64

// FuzzGCRAModel drives the real script in Redis with explicit times (the
// script's test-only "now" argument) through random sequences of steps and
// costs, on a fresh key per input, and checks every Decision against
// bucketModel. The emission interval is a second or more, so a key's native
// TTL (at least one interval, in real time) cannot run out while an input
// runs.
func FuzzGCRAModel(f *testing.F) {
	rdb := newClient(f, testenv.RedisAddr(f))
	prefix := testPrefix(f, rdb)
	f.Add(uint8(5), uint8(1), []byte{0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 100, 1, 0, 1})
	f.Add(uint8(3), uint8(2), []byte{0, 3, 0, 4, 50, 2, 10, 0, 255, 3, 0, 1})
	f.Add(uint8(1), uint8(1), []byte{0, 1, 0, 1, 99, 1, 1, 1, 0, 0})
	f.Add(uint8(12), uint8(4), []byte{0, 12, 7, 1, 13, 2, 200, 6, 0, 0, 33, 5})
	f.Fuzz(func(t *testing.T, burstB, secondsB uint8, ops []byte) {
		burst := 1 + int(burstB%16)
		seconds := 1 + int64(secondsB%4) // emission interval: 1 to 4 s per unit
		if len(ops) > 64 {
			ops = ops[:64]
		}
		l := New("fuzz", rdb, rate.Limit(1/float64(seconds)), burst, WithKeyPrefix(prefix), WithTimeout(testTimeout))
		m := &bucketModel{interval: seconds * 1_000_000, burst: int64(burst)}
		key := "k" + strconv.FormatInt(fuzzKeys.Add(1), 10)
		now := time.Now()
		for i := 0; i+1 < len(ops); i += 2 {
			// A step of 0 to 2.55 intervals in hundredths, and a cost of 0
			// to burst+1 (Allow refuses a cost above the burst before any
			// I/O; the script, asked directly, denies it like the model).
			now = now.Add(time.Duration(ops[i]) * time.Duration(seconds) * 10 * time.Millisecond)
			cost := int(ops[i+1]) % (burst + 2)
			d, err := l.decide(bg, key, cost, &now)
			if err != nil {
				t.Fatalf("op %d: %v", i/2, err)
			}
			ok, rem, reset, retry := m.allow(now.UnixMicro(), int64(cost))
			want := ratelimit.Decision{
				Allowed: ok, Policy: ratelimit.DefaultPolicy, Limit: burst,
				Window: time.Duration(burst) * time.Duration(seconds) * time.Second, Remaining: int(rem),
				Reset: time.Duration(reset) * time.Microsecond, RetryAfter: time.Duration(retry) * time.Microsecond,
			}
			if d != want {
				t.Fatalf("op %d (step %d, cost %d): script %+v, model %+v", i/2, ops[i], cost, d, want)
			}
		}
	})
}
