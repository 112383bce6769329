// Command demo runs the same failure schedule against a checkout service
// twice — once with plain net/http and a naive retry loop, once with bulwark —
// and prints what callers and the payments ledger saw, side by side.
//
//	go run ./examples/demo
//
// The upstream "payments" service keeps a ledger of charges and follows a
// fault schedule: healthy, then an outage (503s, and charges whose response
// is lost), then slow (charges answered after the caller's timeout), then
// recovered. A load generator sends checkout requests at a fixed rate.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"time"

	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/idempotency/pgstore"
	"github.com/bulwark-go/bulwark/idempotency/redisstore"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
)

type options struct {
	duration    time.Duration
	rate        int
	store       string
	redisAddr   string
	postgresURL string
	metricsAddr string
	hold        bool
	json        bool
	slowDelay   time.Duration
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&o.duration, "duration", 12*time.Second, "length of each of the two runs")
	fs.IntVar(&o.rate, "rate", 50, "checkout requests per second")
	fs.StringVar(&o.store, "store", "memory", "idempotency store: memory, redis or postgres")
	fs.StringVar(&o.redisAddr, "redis-addr", "127.0.0.1:6379", "Redis address for -store=redis")
	fs.StringVar(&o.postgresURL, "postgres-url", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "PostgreSQL URL for -store=postgres")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "127.0.0.1:0", "where to serve /metrics during the run")
	fs.BoolVar(&o.hold, "hold", false, "keep serving /metrics after the run until interrupted")
	fs.BoolVar(&o.json, "json", false, "print the summary as JSON")
	fs.DurationVar(&o.slowDelay, "slow-delay", 400*time.Millisecond, "how late payments answers in the slow phase")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: demo [flags]\n\nRuns a fault schedule against checkout twice, without and with bulwark, and compares.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	var bad error
	switch {
	case fs.NArg() > 0:
		bad = fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case o.duration < 2*time.Second || o.duration > 10*time.Minute:
		bad = errors.New("-duration must be between 2s and 10m")
	case o.rate < 1 || o.rate > 2000:
		bad = errors.New("-rate must be between 1 and 2000")
	case o.store != "memory" && o.store != "redis" && o.store != "postgres":
		bad = fmt.Errorf("-store must be memory, redis or postgres, not %q", o.store)
	}
	if bad != nil {
		fmt.Fprintln(stderr, "demo:", bad)
		fs.Usage()
		return o, bad
	}
	return o, nil
}

func main() {
	opts, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, opts, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, opts options, out io.Writer) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector())
	ln, err := net.Listen("tcp", opts.metricsAddr)
	if err != nil {
		return fmt.Errorf("metrics listener: %w", err)
	}
	metricsSrv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = metricsSrv.Serve(ln) }()
	defer metricsSrv.Close()
	if !opts.json {
		fmt.Fprintf(out, "metrics: http://%s/metrics\n", ln.Addr())
	}

	store, closeStore, err := openStore(ctx, opts)
	if err != nil {
		return err
	}
	defer closeStore()

	tty := isTerminal(out)
	var summaries []summary
	for _, mode := range []string{"net/http", "bulwark"} {
		if !opts.json {
			fmt.Fprintf(out, "\n== %s: %v at %d requests/s\n", mode, opts.duration, opts.rate)
		}
		var env *bulwarkEnv
		if mode == "bulwark" {
			env = &bulwarkEnv{reg: reg, store: store}
		}
		s, err := runOnce(ctx, opts, mode, env, out, tty)
		if err != nil {
			return err
		}
		summaries = append(summaries, s)
	}
	if opts.json {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(summaries); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(out)
		printTable(out, summaries)
	}
	if opts.hold {
		fmt.Fprintf(out, "\nholding: metrics at http://%s/metrics until interrupted\n", ln.Addr())
		<-ctx.Done()
	}
	return nil
}

// openStore returns the idempotency store the flags ask for.
func openStore(ctx context.Context, opts options) (idempotency.Store, func(), error) {
	switch opts.store {
	case "redis":
		rdb := redis.NewClient(&redis.Options{Addr: opts.redisAddr, ContextTimeoutEnabled: true})
		if err := rdb.Ping(ctx).Err(); err != nil {
			_ = rdb.Close()
			return nil, nil, fmt.Errorf("redis at %s: %w", opts.redisAddr, err)
		}
		prefix := fmt.Sprintf("bulwark:demo:%d:", time.Now().UnixNano())
		return redisstore.New(rdb, redisstore.WithPrefix(prefix)), func() { _ = rdb.Close() }, nil
	case "postgres":
		pool, err := pgxpool.New(ctx, opts.postgresURL)
		if err != nil {
			return nil, nil, fmt.Errorf("postgres: %w", err)
		}
		table := fmt.Sprintf("bulwark_demo_%d", time.Now().UnixNano())
		s := pgstore.New(pool, pgstore.WithTable(table))
		if err := s.CreateTable(ctx); err != nil {
			pool.Close()
			return nil, nil, fmt.Errorf("postgres at %s: %w", opts.postgresURL, err)
		}
		return s, func() {
			_, _ = pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+table)
			pool.Close()
		}, nil
	}
	return idempotency.NewMemoryStore(idempotency.MemoryConfig{}), func() {}, nil
}

// bulwarkEnv is what the bulwark run shares with the rest of the process.
type bulwarkEnv struct {
	reg   *prometheus.Registry
	store idempotency.Store
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
