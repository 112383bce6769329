package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/grpcmw"
	"github.com/bulwark-go/bulwark/retry"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// summary is what the client saw.
type summary struct {
	Calls, OK, Failed   int
	PushedBack          int // calls that succeeded after a rate-limit pushback (step 1)
	Replayed            int // answers replayed from the server's idempotency store (step 2)
	FailedFast          int // calls the open breaker refused before the network (step 3)
	Opened              int // times the client's breaker opened
	Charges, Duplicates int // what the in-process server did; zero with -target
}

// clientInterceptor is the client side this example is about: retries
// (3 attempts in all, under a budget), a breaker per target, and an
// idempotency-key on every call, the same on each of its attempts.
func clientInterceptor(cfg config, reg prometheus.Registerer, p *printer) grpc.UnaryClientInterceptor {
	policy := retry.New("ledger-client",
		retry.WithMaxAttempts(3),
		retry.WithAttemptTimeout(time.Second),
		// Twice the default budget, so that step 2's burst is retried too;
		// the default (10 tokens) suits steady traffic.
		retry.WithBudget(retry.NewBudget(20, retry.DefaultBudgetRatio)),
		retry.WithRegisterer(reg))
	return grpcmw.UnaryClientInterceptor(
		grpcmw.WithRetry(policy),
		grpcmw.WithBreakers(grpcmw.BreakerPerTarget(
			breaker.WithCountWindow(10),
			breaker.WithFailureRate(0.5, 4),
			breaker.WithOpenDuration(cfg.open),
			breaker.WithHalfOpen(1, 2),
			breaker.OnStateChange(func(name string, from, to breaker.State) {
				p.event(to == breaker.Open, fmt.Sprintf("    client breaker %s: %v → %v", name, from, to))
			}),
			breaker.WithRegisterer(reg))),
		grpcmw.WithIdempotencyKeys(),
	)
}

// scenario makes the calls of the three steps in the command's
// documentation and prints them.
func scenario(ctx context.Context, client testpb.TestServiceClient, cfg config, p *printer) (summary, error) {
	var s summary
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer alice")
	call := func(fault string) (attempts int, err error) {
		cctx := ctx
		if fault != "" {
			cctx = metadata.AppendToOutgoingContext(ctx, faultHeader, fault)
		}
		var header metadata.MD
		req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("order 42")}}
		_, err = client.UnaryCall(cctx, req, grpcmw.ReportAttempts(&attempts), grpc.Header(&header))
		s.Calls++
		line := fmt.Sprintf("OK (attempts %d)", attempts)
		switch {
		case err != nil:
			s.Failed++
			st := status.Convert(err)
			line = fmt.Sprintf("%v: %s (attempts %d)", st.Code(), st.Message(), attempts)
			if errors.Is(err, breaker.ErrOpen) {
				s.FailedFast++
				line = fmt.Sprintf("%v, failed fast: client breaker open", st.Code())
			}
		case len(header.Get(grpcmw.ReplayedHeader)) > 0:
			s.OK++
			s.Replayed++
			line = fmt.Sprintf("OK, replayed by the server (attempts %d)", attempts)
		default:
			s.OK++
		}
		p.call(s.Calls, line)
		return attempts, err
	}

	p.event(false, "1. a burst above the server's rate limit (10 at once, 20/s): RESOURCE_EXHAUSTED + pushback, then a retry")
	for range 16 {
		if n, err := call(""); err == nil && n > 1 {
			s.PushedBack++
		}
	}

	pause(ctx, 600*time.Millisecond) // the server's rate limit refills
	p.event(false, "2. the server charges, then the answer is lost: the retry carries the same idempotency-key")
	for range 3 {
		call("lose")
	}

	p.event(false, fmt.Sprintf("3. the server is down for %v, then back", cfg.outage))
	end := time.Now().Add(cfg.outage)
	for time.Now().Before(end.Add(4*cfg.open)) && ctx.Err() == nil {
		fault := ""
		if time.Now().Before(end) {
			fault = "down"
		}
		if _, err := call(fault); status.Code(err) == codes.Canceled {
			break
		}
		pause(ctx, 60*time.Millisecond) // below the server's rate limit
	}
	p.flush()
	s.Opened = p.opened
	return s, ctx.Err()
}

func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// printer prints one line per call, folding runs of identical lines, and
// the breaker's transitions between them.
type printer struct {
	out io.Writer

	mu     sync.Mutex
	last   string
	first  int
	n      int
	opened int
}

func (p *printer) call(i int, line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if line == p.last && p.n > 0 {
		p.n++
		return
	}
	p.flushLocked()
	p.last, p.first, p.n = line, i, 1
}

func (p *printer) event(opened bool, line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.flushLocked()
	if opened {
		p.opened++
	}
	fmt.Fprintln(p.out, line)
}

func (p *printer) flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.flushLocked()
}

func (p *printer) flushLocked() {
	switch {
	case p.n == 1:
		fmt.Fprintf(p.out, "call %d: %s\n", p.first, p.last)
	case p.n > 1:
		fmt.Fprintf(p.out, "calls %d–%d: %s\n", p.first, p.first+p.n-1, p.last)
	}
	p.n, p.last = 0, ""
}
