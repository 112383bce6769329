package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"time"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/grpcmw"
	"github.com/bulwark-go/bulwark/httpmw"
	"github.com/bulwark-go/bulwark/ratelimit"
	fsbulkhead "github.com/failsafe-go/failsafe-go/bulkhead"
	"github.com/failsafe-go/failsafe-go/circuitbreaker"
	"github.com/failsafe-go/failsafe-go/failsafehttp"
	gmratelimit "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/ratelimit"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// Limits of the server stacks, so high that no request is ever rejected:
// the benchmark measures what the stacks cost when they let everything
// through. The bulkhead's limit is above the generator's concurrency.
const (
	limiterRate   = 1e12
	limiterBurst  = 1_000_000_000
	bulkheadLimit = 256
)

// errDenied is a rejection by a peer's limiter; none is expected.
var errDenied = errors.New("loopback: denied")

var helloBody = []byte("hello\n")

func hello(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(helloBody)
}

// httpHandler returns the handler of an HTTP variant.
func httpHandler(variant string) (http.Handler, error) {
	switch variant {
	case "bare":
		return http.HandlerFunc(hello), nil
	case "bulwark-stack", "bulwark-stack+headers":
		// Metrics on, on a registry nobody scrapes: their cost is counted.
		// The RateLimit header fields (on by default) only with +headers,
		// as in the in-process HTTPHandler group.
		reg := prometheus.NewRegistry()
		l := ratelimit.NewLocal("loopback", limiterRate, limiterBurst, ratelimit.WithRegisterer(reg))
		bh := bulkhead.New("loopback", bulkhead.WithLimit(bulkheadLimit), bulkhead.WithRegisterer(reg))
		br := breaker.New("loopback", breaker.WithRegisterer(reg))
		return httpmw.Chain(
			httpmw.RateLimit(l, httpmw.WithRateLimitHeaders(variant == "bulwark-stack+headers")),
			httpmw.Bulkhead(bh),
			httpmw.Breaker(br),
		)(http.HandlerFunc(hello)), nil
	case "failsafe-breaker+bulkhead":
		return failsafehttp.NewHandler(http.HandlerFunc(hello),
			circuitbreaker.NewBuilder[*http.Response]().
				WithFailureThresholdRatio(50, 100).
				WithDelay(30*time.Second).
				Build(),
			fsbulkhead.New[*http.Response](bulkheadLimit)), nil
	}
	return nil, fmt.Errorf("unknown HTTP variant %q", variant)
}

// testService answers UnaryCall at once with an empty response.
type testService struct {
	testpb.UnimplementedTestServiceServer
}

var emptyResponse = &testpb.SimpleResponse{}

func (testService) UnaryCall(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return emptyResponse, nil
}

// rateLimit is a go-grpc-middleware Limiter on x/time/rate.
type rateLimit struct{ l *rate.Limiter }

func (r rateLimit) Limit(context.Context) error {
	if !r.l.Allow() {
		return errDenied
	}
	return nil
}

// grpcServerOptions returns the server options of a gRPC variant.
func grpcServerOptions(variant string) ([]grpc.ServerOption, error) {
	switch variant {
	case "bare":
		return nil, nil
	case "bulwark-chains":
		reg := prometheus.NewRegistry()
		return []grpc.ServerOption{grpc.ChainUnaryInterceptor(grpcmw.UnaryServerInterceptor(
			grpcmw.WithRateLimit(ratelimit.NewLocal("loopback", limiterRate, limiterBurst,
				ratelimit.WithRegisterer(reg)), grpcmw.KeyFromPeer),
			grpcmw.WithBulkhead(bulkhead.New("loopback", bulkhead.WithLimit(bulkheadLimit),
				bulkhead.WithRegisterer(reg))),
			grpcmw.WithBreaker(breaker.New("loopback", breaker.WithRegisterer(reg))),
		))}, nil
	case "go-grpc-middleware-retry+ratelimit":
		return []grpc.ServerOption{grpc.ChainUnaryInterceptor(gmratelimit.UnaryServerInterceptor(
			rateLimit{rate.NewLimiter(limiterRate, limiterBurst)}))}, nil
	}
	return nil, fmt.Errorf("unknown gRPC variant %q", variant)
}

// server is one variant's server, listening on a loopback port.
type server struct {
	addr  string
	serve func() error // blocks until stop
	stop  func()
}

// newServer listens on addr and returns the server of proto/variant.
func newServer(proto, variant, addr string) (*server, error) {
	switch proto {
	case "http":
		h, err := httpHandler(variant)
		if err != nil {
			return nil, err
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, err
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		return &server{
			addr: ln.Addr().String(),
			serve: func() error {
				if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
					return err
				}
				return nil
			},
			stop: func() { _ = srv.Close() },
		}, nil
	case "grpc":
		opts, err := grpcServerOptions(variant)
		if err != nil {
			return nil, err
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, err
		}
		srv := grpc.NewServer(opts...)
		testpb.RegisterTestServiceServer(srv, testService{})
		return &server{
			addr:  ln.Addr().String(),
			serve: func() error { return srv.Serve(ln) },
			stop:  srv.Stop,
		}, nil
	}
	return nil, fmt.Errorf("unknown protocol %q", proto)
}

// allocStats is a process's allocation counters.
type allocStats struct{ mallocs, bytes uint64 }

func readAllocStats() allocStats {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return allocStats{m.Mallocs, m.TotalAlloc}
}

// serveProcess is the server process: it prints the address it listens on,
// then answers each "stats" line on in with its allocation counters, and
// stops when in ends.
func serveProcess(proto, variant, addr, profiles string, in io.Reader, out io.Writer) (err error) {
	s, err := newServer(proto, variant, addr)
	if err != nil {
		return err
	}
	if profiles != "" {
		stop, err := startProfiles(filepath.Join(profiles, proto+"-"+variant))
		if err != nil {
			s.stop()
			return err
		}
		defer func() { err = errors.Join(err, stop()) }()
	}
	done := make(chan error, 1)
	go func() { done <- s.serve() }()
	if _, err := fmt.Fprintln(out, s.addr); err != nil {
		s.stop()
		return err
	}
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		if sc.Text() != "stats" {
			s.stop()
			return fmt.Errorf("unknown command %q", sc.Text())
		}
		a := readAllocStats()
		if _, err := fmt.Fprintln(out, a.mallocs, a.bytes); err != nil {
			s.stop()
			return err
		}
	}
	s.stop()
	return errors.Join(sc.Err(), <-done)
}

// startProfiles starts a CPU profile into prefix.cpu.pprof; the function it
// returns stops it and writes the heap profile into prefix.heap.pprof.
func startProfiles(prefix string) (func() error, error) {
	cpu, err := os.Create(prefix + ".cpu.pprof")
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(cpu); err != nil {
		return nil, errors.Join(err, cpu.Close())
	}
	return func() error {
		pprof.StopCPUProfile()
		err := cpu.Close()
		heap, herr := os.Create(prefix + ".heap.pprof")
		if herr != nil {
			return errors.Join(err, herr)
		}
		return errors.Join(err, pprof.Lookup("allocs").WriteTo(heap, 0), heap.Close())
	}, nil
}
