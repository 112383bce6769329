// Command loopback measures HTTP and gRPC servers over real TCP on
// 127.0.0.1: each variant's server runs in a process of its own, and this
// process loads it with a closed-loop generator at saturation — a fixed
// number of workers, each sending its next request as soon as the previous
// one is answered. Variants are measured one after the other, A B C A B C …,
// for several rounds, so that a slow spell of a shared machine spreads over
// all of them.
//
// HTTP (group HTTPLoopback): GET /hello answered 200 with a short body by
// a bare handler, bulwark's server stack (httpmw RateLimit keyed by client
// IP + Bulkhead + Breaker, metrics on), the same with the RateLimit header
// fields on, or failsafe-go's breaker + bulkhead (failsafehttp), loaded by one plain net/http client over 50 keep-alive
// connections.
//
// gRPC (group GRPCLoopback): grpc_testing TestService.UnaryCall answered at
// once, bare, through bulwark's chains (client: grpcmw retry + breaker;
// server: rate limit by peer + bulkhead + breaker, metrics on) or through
// go-grpc-middleware's (client: retry; server: rate limit), 50 workers on
// one ClientConn.
//
// No limit is ever reached: every stack lets every request through, and the
// benchmark measures what it costs to do so. Each measurement prints one line
// in the format of go test -bench, for cmd/benchtable:
//
//	BenchmarkHTTPLoopback/<variant>/50conns-<GOMAXPROCS> <requests> <ns> ns/op <r> req/s <p50> p50-µs <p99> p99-µs <n> srv-allocs/op <n> cli-allocs/op <n> allocs/op <n> B/op
//
// where ns/op is the wall time per request (the inverse of the rate),
// allocs/op and B/op count the allocations of both processes per request,
// srv-allocs/op those of the server alone and cli-allocs/op those of the
// client alone.
//
// Usage:
//
//	loopback [-rounds 5] [-duration 3s] [-warmup 500ms] [-workers 50] [-protos http,grpc] [-profiles dir]
//
// With -profiles, each server process writes a CPU profile of its whole life
// and a heap (allocations) profile at its end into dir, named
// <proto>-<variant>.cpu.pprof and .heap.pprof, for go tool pprof.
//
// With -serve proto/variant it is instead one variant's server: it listens
// on -addr, prints the address, answers each "stats" line on standard input
// with its allocation counters and exits when standard input ends.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strings"
	"time"
)

// proto is a protocol measured, with its variants in the order they run.
type proto struct {
	name     string // for -serve and -protos
	group    string // benchmark group
	mode     string // the <mode> part of the names
	unit     string // the rate unit
	variants []string
	client   func(addr, variant string, workers int) (*client, error)
}

var protos = []proto{
	{
		name: "http", group: "HTTPLoopback", mode: "50conns", unit: "req/s",
		variants: []string{"bare", "bulwark-stack", "bulwark-stack+headers", "failsafe-breaker+bulkhead"},
		client: func(addr, _ string, workers int) (*client, error) {
			return newHTTPClient(addr, workers, workers)
		},
	},
	{
		name: "grpc", group: "GRPCLoopback", mode: "50callers", unit: "calls/s",
		variants: []string{"bare", "bulwark-chains", "go-grpc-middleware-retry+ratelimit"},
		client: func(addr, variant string, _ int) (*client, error) {
			return newGRPCClient(addr, variant)
		},
	},
}

func main() {
	serve := flag.String("serve", "", "run as the server of `proto/variant` instead")
	addr := flag.String("addr", "127.0.0.1:0", "with -serve: the address to listen on")
	rounds := flag.Int("rounds", 5, "measurements of each variant")
	duration := flag.Duration("duration", 3*time.Second, "length of each measurement")
	warmup := flag.Duration("warmup", 500*time.Millisecond, "load before each measurement, not measured")
	workers := flag.Int("workers", 50, "concurrent requests (and HTTP connections)")
	only := flag.String("protos", "http,grpc", "comma-separated protocols to measure")
	profiles := flag.String("profiles", "", "write a CPU and a heap profile of each server process into `dir`")
	flag.Parse()

	if *serve != "" {
		p, variant, _ := strings.Cut(*serve, "/")
		if err := serveProcess(p, variant, *addr, *profiles, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "loopback server:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Stdout, os.Stderr, config{
		rounds: *rounds, duration: *duration, warmup: *warmup, workers: *workers,
		protos: strings.Split(*only, ","),
		start: func(proto, variant string) (target, error) {
			return startProcess(proto, variant, *profiles)
		},
	}); err != nil {
		fmt.Fprintln(os.Stderr, "loopback:", err)
		os.Exit(1)
	}
}

// config is what run measures, and how it starts servers.
type config struct {
	rounds           int
	duration, warmup time.Duration
	workers          int
	protos           []string
	start            func(proto, variant string) (target, error)
}

// target is a running server.
type target interface {
	addr() string
	stats() (allocStats, error)
	close() error
}

// run starts a server for every variant, then measures them in rounds and
// prints a line per measurement on out, progress on log.
func run(ctx context.Context, out, log io.Writer, c config) (err error) {
	type running struct {
		p       *proto
		variant string
		t       target
	}
	var all []running
	defer func() {
		for _, r := range all {
			err = errors.Join(err, r.t.close())
		}
	}()
	for _, name := range c.protos {
		i := protoIndex(name)
		if i < 0 {
			return fmt.Errorf("unknown protocol %q", name)
		}
		p := &protos[i]
		for _, v := range p.variants {
			t, err := c.start(p.name, v)
			if err != nil {
				return fmt.Errorf("starting %s/%s: %w", p.name, v, err)
			}
			all = append(all, running{p, v, t})
		}
	}
	procs := runtime.GOMAXPROCS(0)
	for round := 1; round <= c.rounds; round++ {
		for _, r := range all {
			res, err := measureOne(ctx, c, r.p, r.variant, r.t)
			if err != nil {
				return fmt.Errorf("%s/%s: %w", r.p.name, r.variant, err)
			}
			fmt.Fprintf(log, "loopback: round %d of %d: %s %s: %.0f %s\n",
				round, c.rounds, r.p.name, r.variant, res.rate(), r.p.unit)
			writeResult(out, fmt.Sprintf("%s/%s/%s-%d", r.p.group, r.variant, r.p.mode, procs), r.p.unit, res)
		}
	}
	return nil
}

func protoIndex(name string) int {
	for i := range protos {
		if protos[i].name == name {
			return i
		}
	}
	return -1
}

func measureOne(ctx context.Context, c config, p *proto, variant string, t target) (*result, error) {
	cl, err := p.client(t.addr(), variant, c.workers)
	if err != nil {
		return nil, err
	}
	defer cl.close()
	res, err := measure(ctx, c.workers, c.warmup, c.duration, cl.do, t.stats)
	if err != nil {
		return nil, err
	}
	if res.requests == 0 {
		return nil, errors.New("no request completed")
	}
	return res, nil
}

// writeResult prints res as a go test -bench line.
func writeResult(w io.Writer, name, unit string, res *result) {
	n := float64(res.requests)
	fmt.Fprintf(w, "Benchmark%s\t%d\t%.0f ns/op\t%.0f %s\t%.1f p50-µs\t%.1f p99-µs\t%.1f srv-allocs/op\t%.1f cli-allocs/op\t%.1f allocs/op\t%.0f B/op\n",
		name, res.requests, float64(res.elapsed.Nanoseconds())/n, res.rate(), unit,
		res.hist.quantile(0.50)/1e3, res.hist.quantile(0.99)/1e3,
		float64(res.server.mallocs)/n,
		float64(res.allocs.mallocs)/n,
		float64(res.server.mallocs+res.allocs.mallocs)/n,
		float64(res.server.bytes+res.allocs.bytes)/n)
}

// process is a server running as a child process of this one.
type process struct {
	cmd     *exec.Cmd
	in      io.WriteCloser
	out     *bufio.Reader
	address string
}

// startProcess runs this program again as the server of proto/variant.
func startProcess(proto, variant, profiles string) (target, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-serve", proto+"/"+variant, "-addr", "127.0.0.1:0", "-profiles", profiles)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, in: in, out: bufio.NewReader(outPipe)}
	line, err := p.out.ReadString('\n')
	if err != nil {
		return nil, errors.Join(fmt.Errorf("reading the address: %w", err), p.close())
	}
	p.address = strings.TrimSpace(line)
	return p, nil
}

func (p *process) addr() string { return p.address }

func (p *process) stats() (allocStats, error) {
	if _, err := io.WriteString(p.in, "stats\n"); err != nil {
		return allocStats{}, err
	}
	line, err := p.out.ReadString('\n')
	if err != nil {
		return allocStats{}, err
	}
	var a allocStats
	if _, err := fmt.Sscan(line, &a.mallocs, &a.bytes); err != nil {
		return allocStats{}, fmt.Errorf("server stats %q: %w", line, err)
	}
	return a, nil
}

// close ends standard input, on which the server exits, and waits for it.
func (p *process) close() error {
	_ = p.in.Close()
	return p.cmd.Wait()
}
