// Command httpserver is a small orders API protected by bulwark's server
// middleware: a per-client-IP rate limit, a bulkhead, a circuit breaker and
// Idempotency-Key handling on order creation. It serves its Prometheus
// metrics on the same mux.
//
//	go run ./examples/httpserver                      # memory stores
//	go run ./examples/httpserver -store=redis         # rate limit and keys in Redis
//	go run ./examples/httpserver -store=postgres      # keys in PostgreSQL
//
// Then:
//
//	curl -i -X POST localhost:8080/orders -H 'Authorization: Bearer alice' \
//	     -H 'Idempotency-Key: "order-1"' -d '{"item":"book","quantity":1}'
//
// Sending the same request again answers with the stored response and
// Idempotent-Replayed: true; the order is created once. Each route's handler
// runs inside, outermost first:
//
//	RateLimit (429) → Bulkhead (503) → Breaker (503) → authenticate (401) → Idempotency → handler
//
// Idempotency keys are scoped by the caller's principal, here a digest of the
// bearer token; a real service takes it from its own authentication.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/httpmw"
	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/idempotency/pgstore"
	"github.com/bulwark-go/bulwark/idempotency/redisstore"
	"github.com/bulwark-go/bulwark/ratelimit"
	"github.com/bulwark-go/bulwark/ratelimit/redisrate"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"
)

type config struct {
	addr          string
	store         string
	redisAddr     string
	redisPrefix   string
	postgresURL   string
	postgresTable string
	rate          float64
	burst         int
	concurrency   int
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("httpserver", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.addr, "addr", "127.0.0.1:8080", "listen address")
	fs.StringVar(&c.store, "store", "memory", "where rate limits and idempotency keys live: memory, redis or postgres (keys only; the limit stays local)")
	fs.StringVar(&c.redisAddr, "redis-addr", "127.0.0.1:6379", "Redis address for -store=redis")
	fs.StringVar(&c.redisPrefix, "redis-prefix", "orders:", "prefix of every Redis key, one per environment")
	fs.StringVar(&c.postgresURL, "postgres-url", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "PostgreSQL URL for -store=postgres")
	fs.StringVar(&c.postgresTable, "postgres-table", pgstore.DefaultTable, "idempotency table for -store=postgres (created if missing)")
	fs.Float64Var(&c.rate, "rate", 20, "requests per second allowed per client IP")
	fs.IntVar(&c.burst, "burst", 40, "burst allowed per client IP")
	fs.IntVar(&c.concurrency, "concurrency", 64, "requests handled at once; as many more wait up to 1s")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	var bad error
	switch {
	case fs.NArg() > 0:
		bad = fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case c.store != "memory" && c.store != "redis" && c.store != "postgres":
		bad = fmt.Errorf("-store must be memory, redis or postgres, not %q", c.store)
	case c.rate <= 0 || c.rate > 1e6 || c.burst < 1 || c.concurrency < 1:
		bad = errors.New("-rate must be in (0, 1e6], -burst and -concurrency at least 1")
	}
	if bad != nil {
		fmt.Fprintln(stderr, "httpserver:", bad)
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
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(ctx, cfg, log, nil); err != nil {
		log.Error("httpserver stopped", "err", err)
		os.Exit(1)
	}
}

// run serves until ctx ends, then shuts down gracefully: it stops accepting,
// lets requests in flight finish (up to 10s) and closes the stores. When
// listening is set it is called with the bound address once the server
// accepts connections.
func run(ctx context.Context, cfg config, log *slog.Logger, listening func(addr string)) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	limiter, store, closeStores, err := openStores(ctx, cfg, reg)
	if err != nil {
		return err
	}
	defer closeStores()

	// One instance of each primitive for the whole API; the name is the
	// metrics' name label.
	bh := bulkhead.New("orders-api", bulkhead.WithLimit(cfg.concurrency), bulkhead.WithQueue(cfg.concurrency),
		bulkhead.WithMaxWait(time.Second), bulkhead.WithRegisterer(reg))
	br := breaker.New("orders-api", breaker.WithRegisterer(reg)) // opens when handlers answer 5xx
	guard := idempotency.New("orders", store, idempotency.WithRegisterer(reg))

	// Every rejection is an RFC 9457 problem; log why before writing it.
	opts := []httpmw.Option{
		httpmw.WithScope(idempotencyScope),
		httpmw.WithErrorWriter(func(w http.ResponseWriter, r *http.Request, p httpmw.Problem) {
			if p.Err != nil && p.Status >= 500 {
				log.Warn("request refused", "path", r.URL.Path, "type", p.Type, "err", p.Err)
			}
			httpmw.WriteProblem(w, r, p)
		}),
	}
	protect := httpmw.Chain(
		httpmw.RateLimit(limiter, opts...), // per client IP: httpmw.KeyByIP()
		httpmw.Bulkhead(bh, opts...),
		httpmw.Breaker(br, opts...),
		authenticate,
	)
	idempotent := httpmw.Idempotency(guard, opts...) // inside the mux, so it sees the route pattern

	book := newOrderBook(reg)
	mux := http.NewServeMux()
	mux.Handle("POST /orders", protect(idempotent(http.HandlerFunc(book.create))))
	mux.Handle("GET /orders/{id}", protect(http.HandlerFunc(book.get)))
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("serving", "addr", ln.Addr().String(), "store", cfg.store, "metrics", "http://"+ln.Addr().String()+"/metrics")
	if listening != nil {
		listening(ln.Addr().String())
	}

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	<-served // http.ErrServerClosed
	return nil
}

// openStores returns the rate limiter and the idempotency store -store asks
// for, and a function that closes their connections.
func openStores(ctx context.Context, cfg config, reg prometheus.Registerer) (ratelimit.Limiter, idempotency.Store, func(), error) {
	perIP := func(opts ...ratelimit.Option) *ratelimit.Local {
		return ratelimit.NewLocal("orders-api", rate.Limit(cfg.rate), cfg.burst, opts...)
	}
	switch cfg.store {
	case "redis":
		// ContextTimeoutEnabled makes go-redis honour the short deadlines the
		// limiter and the guard put on each call, so a hung Redis costs each
		// request milliseconds, not the client's read timeout.
		rdb := redis.NewClient(&redis.Options{Addr: cfg.redisAddr, ContextTimeoutEnabled: true})
		if err := rdb.Ping(ctx).Err(); err != nil {
			_ = rdb.Close()
			return nil, nil, nil, fmt.Errorf("redis at %s: %w", cfg.redisAddr, err)
		}
		// The limit holds across replicas; if Redis goes away each replica
		// enforces the same limit alone rather than none at all.
		limiter := redisrate.New("orders-api", rdb, rate.Limit(cfg.rate), cfg.burst,
			redisrate.WithKeyPrefix(cfg.redisPrefix+"ratelimit:"),
			redisrate.WithFailureMode(redisrate.FallbackLocal(perIP())),
			redisrate.WithRegisterer(reg))
		store := redisstore.New(rdb, redisstore.WithPrefix(cfg.redisPrefix+"idempotency:"))
		return limiter, store, func() { _ = rdb.Close() }, nil
	case "postgres":
		pool, err := pgxpool.New(ctx, cfg.postgresURL)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("postgres: %w", err)
		}
		store := pgstore.New(pool, pgstore.WithTable(cfg.postgresTable))
		if err := store.CreateTable(ctx); err != nil {
			pool.Close()
			return nil, nil, nil, fmt.Errorf("postgres: %w", err)
		}
		// Expired records already count as absent; deleting them frees space.
		cleanupCtx, stopCleanup := context.WithCancel(context.Background())
		cleaned := make(chan struct{})
		go func() {
			defer close(cleaned)
			tick := time.NewTicker(time.Minute)
			defer tick.Stop()
			for {
				select {
				case <-cleanupCtx.Done():
					return
				case <-tick.C:
					_, _ = store.Cleanup(cleanupCtx, 0)
				}
			}
		}()
		return perIP(ratelimit.WithRegisterer(reg)), store, func() { stopCleanup(); <-cleaned; pool.Close() }, nil
	}
	return perIP(ratelimit.WithRegisterer(reg)), idempotency.NewMemoryStore(idempotency.MemoryConfig{}), func() {}, nil
}
