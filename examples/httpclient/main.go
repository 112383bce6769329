// Command httpclient sends requests through an http.Client whose transport is
// bulwark's: retries with a retry budget, a circuit breaker per upstream host
// and an Idempotency-Key on every POST, so that a retried POST takes effect
// once. It prints, for each request, what the caller saw, how many attempts
// reached the network and the breaker's state.
//
//	go run ./examples/httpclient                  # against a built-in flaky upstream
//	go run ./examples/httpclient -url http://127.0.0.1:8080/orders \
//	    -header 'Authorization: Bearer alice' -body '{"item":"book","quantity":1}'
//
// Without -url it starts a flaky upstream of its own, a charges endpoint
// behind bulwark's Idempotency middleware, that is healthy, then loses
// responses after making the charge, then is down for a while, then recovers;
// at the end it reports how many charges it made for how many requests.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/httpmw"
	"github.com/bulwark-go/bulwark/retry"
	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"
)

type config struct {
	url      string
	method   string
	body     string
	header   string
	requests int
	interval time.Duration
	open     time.Duration
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("httpclient", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.url, "url", "", "target URL; empty starts a built-in flaky upstream")
	fs.StringVar(&c.method, "method", http.MethodPost, "request method")
	fs.StringVar(&c.body, "body", `{"amount":1999}`, "request body")
	fs.StringVar(&c.header, "header", "", `one extra request header, "Name: value"`)
	fs.IntVar(&c.requests, "n", 30, "number of requests, sent one after another")
	fs.DurationVar(&c.interval, "interval", 50*time.Millisecond, "pause between requests")
	fs.DurationVar(&c.open, "open", 300*time.Millisecond, "how long an open breaker waits before a probe")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	var bad error
	switch {
	case fs.NArg() > 0:
		bad = fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case c.requests < 1 || c.interval < 0 || c.open <= 0:
		bad = errors.New("-n must be at least 1, -interval not negative, -open positive")
	case c.header != "" && !strings.Contains(c.header, ":"):
		bad = errors.New(`-header must look like "Name: value"`)
	}
	if bad != nil {
		fmt.Fprintln(stderr, "httpclient:", bad)
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
		fmt.Fprintln(os.Stderr, "httpclient:", err)
		os.Exit(1)
	}
}

// summary is what one run did.
type summary struct {
	Requests, Succeeded, Failed int
	Replayed                    int   // successes answered from the upstream's idempotency store
	Attempts                    int64 // requests that reached the network
	Opened                      int   // times a breaker opened
	Charges, Duplicates         int   // what the built-in upstream did; -1 with -url
}

// newClient returns the http.Client this example is about. Its transport
// retries failed attempts (3 in all, under a budget shared by every request),
// keeps one breaker per upstream host, and adds an Idempotency-Key to every
// POST and PATCH, the same on each attempt. base is the transport that
// reaches the network.
func newClient(base http.RoundTripper, cfg config, reg prometheus.Registerer, onState func(host string, from, to breaker.State)) *http.Client {
	policy := retry.New("upstream",
		retry.WithMaxAttempts(3),
		retry.WithAttemptTimeout(time.Second),
		retry.WithBackOff(func() backoff.BackOff {
			b := backoff.NewExponentialBackOff()
			b.InitialInterval = 20 * time.Millisecond
			return b
		}),
		retry.WithRegisterer(reg))
	transport := httpmw.NewTransport(base,
		httpmw.WithRetry(policy),
		httpmw.WithBreakers(func(host string) *breaker.Breaker {
			return breaker.New(host,
				breaker.WithCountWindow(10),
				breaker.WithFailureRate(0.5, 4),
				breaker.WithOpenDuration(cfg.open),
				breaker.WithHalfOpen(1, 2),
				breaker.OnStateChange(func(_ string, from, to breaker.State) { onState(host, from, to) }),
				breaker.WithRegisterer(reg))
		}, 0),
		// WithIdempotencyKeys is on by default with retries: each POST gets
		// a random key, sent unchanged on every attempt.
	)
	return &http.Client{Transport: transport, Timeout: 10 * time.Second}
}

// run sends cfg.requests requests and prints what happened to out.
func run(ctx context.Context, cfg config, out io.Writer) (summary, error) {
	s := summary{Charges: -1, Duplicates: -1}
	var up *upstream
	if cfg.url == "" {
		up = startUpstream(2 * cfg.open) // down long enough for the breaker to open and probe
		defer up.Close()
		cfg.url = up.URL + "/charges"
		fmt.Fprintf(out, "built-in flaky upstream at %s\n", cfg.url)
	}

	// Count the attempts that reach the network below bulwark's transport.
	var attempts atomic.Int64
	base := &http.Transport{}
	defer base.CloseIdleConnections()
	counting := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		attempts.Add(1)
		return base.RoundTrip(r)
	})
	var mu sync.Mutex
	state := breaker.Closed // of the one upstream this program calls
	client := newClient(counting, cfg, prometheus.NewRegistry(), func(host string, from, to breaker.State) {
		mu.Lock()
		state = to
		if to == breaker.Open {
			s.Opened++
		}
		mu.Unlock()
		fmt.Fprintf(out, "    breaker %s: %v → %v\n", host, from, to)
	})

	for i := 1; i <= cfg.requests && ctx.Err() == nil; i++ {
		before := attempts.Load()
		status, replayed, err := send(ctx, client, cfg)
		if replayed != "" {
			s.Replayed++
		}
		n := attempts.Load() - before
		mu.Lock()
		st := state
		mu.Unlock()
		s.Requests++
		switch {
		case err != nil:
			s.Failed++
			fmt.Fprintf(out, "request %2d: error: %v (attempts sent: %d, breaker %v)\n", i, short(err), n, st)
		default:
			if status >= 500 {
				s.Failed++
			} else {
				s.Succeeded++
			}
			fmt.Fprintf(out, "request %2d: %d %s%s (attempts sent: %d, breaker %v)\n",
				i, status, http.StatusText(status), replayed, n, st)
		}
		select {
		case <-ctx.Done():
		case <-time.After(cfg.interval):
		}
	}
	s.Attempts = attempts.Load()
	fmt.Fprintf(out, "\n%d requests: %d succeeded, %d failed; %d attempts reached the network; breaker openings: %d\n",
		s.Requests, s.Succeeded, s.Failed, s.Attempts, s.Opened)
	if up != nil {
		s.Charges, s.Duplicates = up.charges()
		fmt.Fprintf(out, "the upstream made %d charges, %d of them duplicates: a lost response was retried with the same Idempotency-Key and replayed\n",
			s.Charges, s.Duplicates)
	}
	return s, ctx.Err()
}

// send makes one request and returns its status and a note when the
// upstream replayed a stored response.
func send(ctx context.Context, client *http.Client, cfg config) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, cfg.method, cfg.url, strings.NewReader(cfg.body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	if name, value, ok := strings.Cut(cfg.header, ":"); ok {
		req.Header.Set(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	note := ""
	if resp.Header.Get("Idempotent-Replayed") == "true" {
		note = ", replayed"
	}
	return resp.StatusCode, note, nil
}

// short says why a request failed: the breaker's rejection, and why
// retrying stopped.
func short(err error) string {
	msg := err.Error()
	var open *breaker.OpenError
	if errors.As(err, &open) {
		msg = fmt.Sprintf("breaker open, probe in %v", open.RetryAfter.Round(time.Millisecond))
	}
	var r *retry.Error
	if errors.As(err, &r) {
		msg += fmt.Sprintf("; no retry: %v", r.Reason)
	}
	return msg
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
