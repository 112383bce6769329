package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestHistogram(t *testing.T) {
	var h histogram
	require.True(t, isNaN(h.quantile(0.5)))
	for i := 1; i <= 1000; i++ {
		h.record(time.Duration(i) * time.Microsecond)
	}
	for _, tc := range []struct{ q, want float64 }{
		{0.5, 500e3}, {0.99, 990e3}, {1, 1000e3}, {0.001, 1e3},
	} {
		require.InEpsilon(t, tc.want, h.quantile(tc.q), 1.0/64, "q=%v", tc.q)
	}
	// Small values are exact, and every bucket's middle falls in it.
	for ns := uint64(0); ns < 1<<20; ns += 7 {
		i := bucketOf(ns)
		require.Equal(t, i, bucketOf(uint64(bucketValue(i))), "ns=%d", ns)
		if ns < 64 {
			require.Equal(t, float64(ns), bucketValue(i))
		}
	}
	var m histogram
	m.record(time.Second)
	m.merge(&h)
	require.Equal(t, uint64(1001), m.n)
	require.InEpsilon(t, 1e9, m.quantile(1), 1.0/64)
}

func isNaN(f float64) bool { return f != f }

// inProcess is a server of newServer run in this process.
type inProcess struct {
	s    *server
	done chan error
}

func startInProcess(proto, variant string) (target, error) {
	s, err := newServer(proto, variant, "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &inProcess{s: s, done: make(chan error, 1)}
	go func() { p.done <- s.serve() }()
	return p, nil
}

func (p *inProcess) addr() string               { return p.s.addr }
func (p *inProcess) stats() (allocStats, error) { return readAllocStats(), nil }
func (p *inProcess) close() error {
	p.s.stop()
	return <-p.done
}

// TestRun measures every variant briefly against servers in this process
// and checks the lines cmd/benchtable reads.
func TestRun(t *testing.T) {
	var out, log bytes.Buffer
	err := run(context.Background(), &out, &log, config{
		rounds: 2, warmup: 20 * time.Millisecond, duration: 50 * time.Millisecond, workers: 4,
		protos: []string{"http", "grpc"}, start: startInProcess,
	})
	require.NoError(t, err, log.String())
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 2*(len(protos[0].variants)+len(protos[1].variants)))
	for _, l := range lines {
		f := strings.Fields(l)
		require.Len(t, f, 18, l)
		require.True(t, strings.HasPrefix(f[0], "BenchmarkHTTPLoopback/") || strings.HasPrefix(f[0], "BenchmarkGRPCLoopback/"), l)
		for i, unit := range []string{"ns/op", "", "p50-µs", "p99-µs", "srv-allocs/op", "cli-allocs/op", "allocs/op", "B/op"} {
			if unit != "" {
				require.Equal(t, unit, f[3+2*i], l)
			}
		}
	}
	require.Contains(t, out.String(), "BenchmarkHTTPLoopback/bulwark-stack/50conns-")
	require.Contains(t, out.String(), " req/s\t")
	require.Contains(t, out.String(), "BenchmarkGRPCLoopback/go-grpc-middleware-retry+ratelimit/50callers-")
	require.Contains(t, out.String(), " calls/s\t")
}

func TestRunUnknown(t *testing.T) {
	err := run(context.Background(), io.Discard, io.Discard, config{protos: []string{"smtp"}, start: startInProcess})
	require.ErrorContains(t, err, `unknown protocol "smtp"`)
	_, err = startInProcess("http", "nginx")
	require.ErrorContains(t, err, `unknown HTTP variant "nginx"`)
	_, err = startInProcess("grpc", "nginx")
	require.ErrorContains(t, err, `unknown gRPC variant "nginx"`)
}

// TestServeProcess drives the server process's protocol over pipes: the
// address first, then a line of counters per "stats", and an exit when its
// input ends.
func TestServeProcess(t *testing.T) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- serveProcess("http", "bulwark-stack", "127.0.0.1:0", "", inR, outW)
		outW.Close()
	}()
	out := bufio.NewReader(outR)
	addr, err := out.ReadString('\n')
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(addr, "127.0.0.1:"), addr)

	cl, err := newHTTPClient(strings.TrimSpace(addr), 1, 1)
	require.NoError(t, err)
	require.NoError(t, cl.do(context.Background(), 0))
	cl.close()

	_, err = io.WriteString(inW, "stats\n")
	require.NoError(t, err)
	line, err := out.ReadString('\n')
	require.NoError(t, err)
	require.Len(t, strings.Fields(line), 2, line)
	require.NoError(t, inW.Close())
	require.NoError(t, <-done)
}
