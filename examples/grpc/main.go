// Command grpc runs a gRPC server and client that both use bulwark's
// interceptors, on grpc-go's own interop TestService (no protoc needed).
//
//	go run ./examples/grpc                        # server and client in one process
//	go run ./examples/grpc -serve 127.0.0.1:9090  # only the server
//	go run ./examples/grpc -target 127.0.0.1:9090 # only the client
//
// The server applies a rate limit per client address, a bulkhead, a breaker
// and idempotency keys to UnaryCall, which makes a "charge". The client
// retries under a budget, keeps a breaker per target and sends an
// idempotency-key with every call. The client then walks through three
// situations and prints each call's code, attempts and whether the answer
// was replayed:
//
//  1. a burst above the server's rate limit: RESOURCE_EXHAUSTED with a
//     grpc-retry-pushback-ms trailer, which the client waits out and retries;
//  2. lost answers: the server charges, then the connection drops; the retry
//     carries the same key and gets the stored answer (idempotent-replayed);
//  3. an outage: UNAVAILABLE until the client's breaker opens and calls fail
//     fast; the breaker probes and closes when the server is back.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

type config struct {
	serve  string // listen address of a server-only run
	target string // server address of a client-only run
	outage time.Duration
	open   time.Duration
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("grpc", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.serve, "serve", "", "run only the server, listening on this address, until interrupted")
	fs.StringVar(&c.target, "target", "", "run only the client, against the server at this address")
	fs.DurationVar(&c.outage, "outage", time.Second, "how long the outage of step 3 lasts")
	fs.DurationVar(&c.open, "open", 200*time.Millisecond, "how long the client's open breaker waits before a probe")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	var bad error
	switch {
	case fs.NArg() > 0:
		bad = fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case c.serve != "" && c.target != "":
		bad = errors.New("-serve and -target are exclusive: run two processes, or neither flag for both in one")
	case c.outage <= 0 || c.open <= 0:
		bad = errors.New("-outage and -open must be positive")
	}
	if bad != nil {
		fmt.Fprintln(stderr, "grpc:", bad)
		fs.Usage()
	}
	return c, bad
}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "grpc:", err)
		os.Exit(1)
	}
}

// run runs the server, the client or both, as cfg says.
func run(ctx context.Context, cfg config, out io.Writer) (summary, error) {
	reg := prometheus.NewRegistry()
	target := cfg.target
	var svc *ledger
	if target == "" {
		addr := cfg.serve
		if addr == "" {
			addr = "127.0.0.1:0"
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return summary{}, err
		}
		svc = &ledger{keys: map[string]int{}}
		srv := newServer(svc, reg)
		served := make(chan error, 1)
		go func() { served <- srv.Serve(ln) }()
		defer func() {
			srv.GracefulStop()
			<-served
		}()
		target = ln.Addr().String()
		fmt.Fprintf(out, "server listening on %s\n", target)
		if cfg.serve != "" {
			<-ctx.Done()
			return summary{}, nil
		}
	}

	p := &printer{out: out}
	// grpc-go's own retry stays off: the interceptor retries, and two
	// retry layers would multiply attempts.
	cc, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDisableRetry(),
		grpc.WithChainUnaryInterceptor(clientInterceptor(cfg, reg, p)))
	if err != nil {
		return summary{}, err
	}
	defer cc.Close()
	s, err := scenario(ctx, testpb.NewTestServiceClient(cc), cfg, p)
	if svc != nil {
		s.Charges, s.Duplicates = svc.charges()
		fmt.Fprintf(out, "\nthe server made %d charges, %d of them duplicates\n", s.Charges, s.Duplicates)
	}
	return s, err
}
