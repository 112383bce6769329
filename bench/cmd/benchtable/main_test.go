package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const sample = `goos: linux
cpu: Test CPU
BenchmarkBreaker/bare/serial-2         	65105331	         3.0 ns/op	       0 B/op	       0 allocs/op
BenchmarkBreaker/bulwark-two-phase/serial-2         	13530164	        30 ns/op	       0 B/op	       0 allocs/op
BenchmarkBreaker/gobreaker-Execute/serial-2         	 1239694	       200 ns/op	       0 B/op	       0 allocs/op
BenchmarkBreaker/bulwark-two-phase/parallel-2       	 9474972	        50 ns/op	       16 B/op	       1 allocs/op
BenchmarkBreaker/gobreaker-Execute/parallel-2         	 1239694	       100 ns/op	       0 B/op	       0 allocs/op
BenchmarkBreaker/bulwark-two-phase/serial-2         	--- FAIL: BenchmarkBreaker/bulwark-two-phase/serial
BenchmarkBreaker/bulwark-two-phase/serial-2         	13530164	        10 ns/op	       0 B/op	       0 allocs/op
BenchmarkBreaker/gobreaker-Execute/serial-2         	 1239694	       100 ns/op	       0 B/op	       0 allocs/op
BenchmarkBreaker/bulwark-two-phase/serial-2         	13530164	        20 ns/op	       0 B/op	       0 allocs/op
BenchmarkBreaker/gobreaker-Execute/serial-2         	 1239694	       150 ns/op	       0 B/op	       0 allocs/op
BenchmarkRedisLimiter/bulwark-redisrate/parallel-2 	 7309	     1000 ns/op	         1.000 cmds/op	     39000 decisions/s	     856 B/op	      15 allocs/op
BenchmarkRedisLimiter/redis_rate/parallel-2 	 7309	     1000 ns/op	         1.000 cmds/op	     30000 decisions/s	     856 B/op	      22 allocs/op
BenchmarkHTTPHandler/bare/serial-2 	 10	     20 ns/op	       0 B/op	       0 allocs/op
BenchmarkHTTPHandler/bulwark-stack/serial-2 	 10	     120 ns/op	       0 B/op	       0 allocs/op
BenchmarkHTTPHandler/failsafe-breaker+bulkhead/serial-2 	 10	     520 ns/op	       0 B/op	       0 allocs/op
BenchmarkGRPCLoopback/bare/50callers-2	1000	40000 ns/op	25000 calls/s	1000.0 p50-µs	4000.0 p99-µs	50.0 srv-allocs/op	79.0 cli-allocs/op	129.0 allocs/op	8500 B/op
BenchmarkGRPCLoopback/bulwark-chains/50callers-2	1000	41000 ns/op	24390 calls/s	1100.0 p50-µs	4000.0 p99-µs	53.0 srv-allocs/op	81.0 cli-allocs/op	134.0 allocs/op	8600 B/op
BenchmarkGRPCLoopback/go-grpc-middleware-retry+ratelimit/50callers-2	1000	44000 ns/op	22727 calls/s	1200.0 p50-µs	5000.0 p99-µs	52.0 srv-allocs/op	81.0 cli-allocs/op	133.0 allocs/op	8700 B/op
BenchmarkGRPCLoopback/bare/50callers-2	1000	20000 ns/op	50000 calls/s	1000.0 p50-µs	4000.0 p99-µs	50.0 srv-allocs/op	79.0 cli-allocs/op	129.0 allocs/op	8500 B/op
BenchmarkGRPCLoopback/bulwark-chains/50callers-2	1000	33333 ns/op	30000 calls/s	1000.0 p50-µs	4000.0 p99-µs	53.0 srv-allocs/op	81.0 cli-allocs/op	134.0 allocs/op	8600 B/op
BenchmarkGRPCLoopback/go-grpc-middleware-retry+ratelimit/50callers-2	1000	22000 ns/op	45454 calls/s	1000.0 p50-µs	4000.0 p99-µs	52.0 srv-allocs/op	81.0 cli-allocs/op	133.0 allocs/op	8700 B/op
BenchmarkGRPCLoopback/bare/50callers-2	1000	50000 ns/op	20000 calls/s	1000.0 p50-µs	4000.0 p99-µs	50.0 srv-allocs/op	79.0 cli-allocs/op	129.0 allocs/op	8500 B/op
BenchmarkGRPCLoopback/bulwark-chains/50callers-2	1000	25000 ns/op	40000 calls/s	1000.0 p50-µs	4000.0 p99-µs	53.0 srv-allocs/op	81.0 cli-allocs/op	134.0 allocs/op	8600 B/op
BenchmarkGRPCLoopback/go-grpc-middleware-retry+ratelimit/50callers-2	1000	53000 ns/op	18868 calls/s	1000.0 p50-µs	4000.0 p99-µs	52.0 srv-allocs/op	81.0 cli-allocs/op	133.0 allocs/op	8700 B/op
BenchmarkNew/x/a/b/serial-4 	 10	     5 ns/op
PASS
`

func TestParse(t *testing.T) {
	res := &results{series: map[id]series{}}
	require.NoError(t, res.parse(strings.NewReader(sample)))
	require.Equal(t, "Test CPU", res.cpu)
	require.Equal(t, 4, res.procs)
	s := res.series[id{"Breaker", "bulwark-two-phase", "serial"}]
	require.Equal(t, []float64{30, 10, 20}, s["ns/op"])
	v, ok := s.value("ns/op")
	require.True(t, ok)
	require.Equal(t, 20.0, v)
	require.Contains(t, res.series, id{"New", "x/a/b", "serial"})
	require.Equal(t, id{"Breaker", "bare", "serial"}, res.order[0])
}

func TestSplitName(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want id
	}{
		{"Breaker", id{group: "Breaker"}},
		{"Breaker/bare", id{"Breaker", "bare", ""}},
		{"Breaker/bare/serial", id{"Breaker", "bare", "serial"}},
		{"HTTP/a/b/parallel", id{"HTTP", "a/b", "parallel"}},
	} {
		require.Equal(t, tc.want, splitName(tc.in), tc.in)
	}
}

func TestMedianSpread(t *testing.T) {
	require.Equal(t, 2.0, median([]float64{3, 1, 2}))
	require.Equal(t, 2.5, median([]float64{4, 1, 2, 3}))
	require.InDelta(t, 0.5, spread([]float64{1, 2, 3}), 1e-9)
	require.Zero(t, spread([]float64{7}))
}

func TestBound(t *testing.T) {
	require.True(t, atMost(0.25).ok(0.25))
	require.False(t, atMost(0.25).ok(0.3))
	require.Equal(t, "by 20%", atMost(0.25).miss(0.3))
	require.True(t, atLeast(1.3).ok(1.4))
	require.False(t, atLeast(1.3).ok(0.65))
	require.Equal(t, "by 50%", atLeast(1.3).miss(0.65))
	require.Equal(t, "by 2", atMost(0).miss(2))
}

func TestTable(t *testing.T) {
	res := &results{series: map[id]series{}}
	require.NoError(t, res.parse(strings.NewReader(sample)))
	var out bytes.Buffer
	newTable(res, groups, nil).write(&out, "bench/run", time.Date(2030, 1, 2, 0, 0, 0, 0, time.UTC))
	got := out.String()
	for _, want := range []string{
		"Measured 2030-01-02 on ",
		"median of 1–3 runs",
		"| Breaker serial | bulwark-two-phase | 20 ±50% | 0 | 0 | 0.13 |  |",
		"| Breaker serial | gobreaker-Execute | 150 ±33% | 0 | 0 | 1 (ref) |  |",
		"| Breaker parallel | bulwark-two-phase | 50 | 1 | 16 | 0.50 |  |",
		"| RedisLimiter parallel | bulwark-redisrate | 1000 | 15 | 856 | 1.30 | 39.0k decisions/s, 1 cmds/op |",
		"| New serial | x/a/b | 5 |  |  |  |  |",
		// Paired: the median of the ratios within each run is 0.98, where
		// the ratio of the medians would be 1.2.
		"| GRPCLoopback 50callers | bare | 40.0k ±38% | 129 | 8500 | 1 (ref) | 25.0k calls/s, 79 cli-allocs/op, 1000 p50-µs, 4000 p99-µs, 50 srv-allocs/op |",
		"| GRPCLoopback 50callers | bulwark-chains | 33.3k ±24% | 134 | 8600 | 0.98 | 30.0k calls/s, 81 cli-allocs/op, 1000 p50-µs (1.00×), 4000 p99-µs (1.00×), 53 srv-allocs/op |",
		"- **missed**: GRPCLoopback 50callers bulwark-chains — ns/op added to bare, ratio to what " +
			"go-grpc-middleware-retry+ratelimit adds 0.333 (≤ 1); cli-allocs/op added to bare 2 (≤ 2); " +
			"srv-allocs/op added to bare 3 (≤ 2, missed by 50%)",
		"ratios of calls/s to bare (p50-µs and p99-µs too, in the last column), each the median of the ratios within each round.",
		"| HTTPHandler serial | bare | 20 | 0 | 0 | floor |  |",
		"| HTTPHandler serial | bulwark-stack | 120 | 0 | 0 | 0.20 |  |",
		"- met: HTTPHandler serial bulwark-stack — added ns/op ratio to failsafe-breaker+bulkhead's 0.2 (≤ 0.33); allocs/op 0 (≤ 1)",
		"- met: Breaker serial bulwark-two-phase — ns/op ratio to gobreaker-Execute 0.133 (≤ 0.25); allocs/op 0 (≤ 0)",
		"- **missed**: Breaker parallel bulwark-two-phase — ns/op ratio to gobreaker-Execute 0.5 (≤ 0.25, missed by 100%); allocs/op 1 (≤ 0, missed by 1)",
		"- **missed**: RedisLimiter parallel bulwark-redisrate — decisions/s ratio to redis_rate 1.3 (≥ 1.3); allocs/op 15 (≤ 8, missed by 88%); cmds/op 1 (≤ 1)",
	} {
		require.Contains(t, got, want)
	}
	// serial rows come before parallel rows, groups in config order.
	require.Less(t, strings.Index(got, "| Breaker serial | bare"), strings.Index(got, "| Breaker parallel"))
	require.Less(t, strings.Index(got, "| Breaker parallel"), strings.Index(got, "| RedisLimiter"))
	require.Less(t, strings.Index(got, "| RedisLimiter"), strings.Index(got, "| New serial"))
}

func TestRefOverride(t *testing.T) {
	res := &results{series: map[id]series{}}
	require.NoError(t, res.parse(strings.NewReader(sample)))
	var out bytes.Buffer
	newTable(res, groups, map[string]string{"Breaker": "bare"}).write(&out, "x", time.Now())
	require.Contains(t, out.String(), "| Breaker serial | bare | 3 | 0 | 0 | 1 (ref) |  |")
}
