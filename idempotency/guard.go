package idempotency

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bulwark-go/bulwark"
	"github.com/bulwark-go/bulwark/clock"
)

// Defaults of a Guard's options.
const (
	DefaultLease        = 30 * time.Second
	DefaultRetention    = 24 * time.Hour
	DefaultStoreTimeout = time.Second
)

type config struct {
	lease, retention, storeTimeout time.Duration
	required, failOpen             bool
	remember                       func(status int) bool
	reg                            prometheus.Registerer
	clock                          clock.Clock
}

// Option configures a Guard.
type Option func(*config)

// WithLease sets how long a claim holds its key before another request may
// take it over (default 30 s). While the request runs the Guard renews the
// lease every third of its length, so only a process that stopped (crashed,
// hung, partitioned from the store) loses it. Values <= 0 mean the default.
func WithLease(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.lease = d
		}
	}
}

// WithRetention sets how long a completed response is replayed (default
// 24 h). Values <= 0 mean the default.
func WithRetention(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.retention = d
		}
	}
}

// WithRequired makes a request without a key a client error
// (ResultMissingKey with ErrMissingKey). By default (false) such requests run
// unprotected.
func WithRequired(required bool) Option { return func(c *config) { c.required = required } }

// WithFailOpen chooses what happens when the store fails or times out on a
// claim. By default (false) the Guard fails closed: Begin returns a
// *StoreError and nothing runs (the adapter answers 503 / Unavailable). With
// true the request runs unprotected (ResultStoreError, Run() true), and the
// failure is counted as result="store_error".
func WithFailOpen(open bool) Option { return func(c *config) { c.failOpen = open } }

// WithRemember sets which outcomes Lease.Finish stores for replay; for the
// others it releases the key, so that a retry runs again. The default,
// RememberHTTP, remembers HTTP 2xx to 4xx but for the "try again later"
// statuses, and releases 5xx (and anything else). The gRPC adapter passes
// its own function over gRPC codes.
func WithRemember(f func(status int) bool) Option {
	return func(c *config) {
		if f != nil {
			c.remember = f
		}
	}
}

// RememberHTTP reports whether status is an HTTP status worth replaying:
// 200 to 499, except 408 Request Timeout, 425 Too Early and 429 Too Many
// Requests, which ask the client to try again later and so must not be
// replayed to that retry for the whole retention. It is the default of
// WithRemember.
func RememberHTTP(status int) bool {
	switch status {
	case 408, 425, 429:
		return false
	}
	return status >= 200 && status < 500
}

// WithRegisterer registers the Guard's metrics on reg. Nil (the default)
// registers nothing; the global registry is never used implicitly.
func WithRegisterer(reg prometheus.Registerer) Option { return func(c *config) { c.reg = reg } }

// WithClock sets the clock that times lease renewals and store latency
// (default: the real clock). Tests pass a [clock.Fake].
func WithClock(c clock.Clock) Option { return func(cfg *config) { cfg.clock = c } }

// WithStoreTimeout bounds each store operation (default 1 s): a store that
// does not answer in time counts as failed. The deadline is a context
// deadline, measured in real time by the store's driver. Values <= 0 mean
// the default.
func WithStoreTimeout(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.storeTimeout = d
		}
	}
}

// Guard runs the idempotency protocol for one route group, independent of
// the transport: adapters (httpmw, grpcmw) turn a request into a Request,
// call Begin, map the Outcome to their status codes (see the package
// documentation for the table) and, when the handler ran, hand its result to
// Lease.Finish.
//
// The zero Guard is not usable; make one with New. A Guard is safe for
// concurrent use. It starts one
// goroutine per request it lets run, to renew the lease, and stops it when
// the lease is completed or released.
type Guard struct {
	name  string
	store Store
	cfg   config
	m     guardMetrics
}

// New returns a Guard named name (the metric label) over store. A nil store
// means a MemoryStore with default limits on the Guard's clock.
func New(name string, store Store, opts ...Option) *Guard {
	cfg := config{
		lease:        DefaultLease,
		retention:    DefaultRetention,
		storeTimeout: DefaultStoreTimeout,
		remember:     RememberHTTP,
	}
	for _, o := range opts {
		o(&cfg)
	}
	cfg.clock = cmp.Or(cfg.clock, clock.Real())
	if store == nil {
		store = NewMemoryStore(MemoryConfig{Clock: cfg.clock})
	}
	return &Guard{name: name, store: store, cfg: cfg, m: newGuardMetrics(cfg.reg, name)}
}

// Request is what the Guard needs to know about one request.
type Request struct {
	// Scope is the principal or tenant the key belongs to (an account id,
	// an API key id): keys never collide across scopes. Empty is one
	// shared scope.
	Scope string
	// Method and Route name the operation (HTTP method and route pattern,
	// or the gRPC full method and an empty route).
	Method, Route string
	// Key is the client's idempotency key, raw; empty when absent.
	Key string
	// Fingerprint identifies the request's content (ReadFingerprint).
	Fingerprint Fingerprint
}

// Result classifies what Begin decided. Its String is the metric label.
type Result uint8

// Begin's results. See the package documentation for the status each maps to.
const (
	// ResultNew: the key was claimed; run the handler, then Lease.Finish.
	ResultNew Result = iota + 1
	// ResultReplayed: the request completed before; answer with
	// Outcome.Response, marked as a replay, or, when that is only the
	// record that there was one ([Response.Replayable] is false), with
	// "already processed, response not replayable".
	ResultReplayed
	// ResultInFlight: another request with the key is running.
	ResultInFlight
	// ResultMismatch: the key was used for a different request.
	ResultMismatch
	// ResultMissingKey: no key. Rejected when the key is required, run
	// unprotected otherwise.
	ResultMissingKey
	// ResultInvalidKey: the key is malformed.
	ResultInvalidKey
	// ResultStoreError: the store failed. Rejected when failing closed,
	// run unprotected when failing open.
	ResultStoreError
)

var resultNames = [...]string{"unknown", "new", "replayed", "in_flight", "mismatch", "missing_key", "invalid_key", "store_error"}

// String returns the metric label of r: "new", "replayed", "in_flight",
// "mismatch", "missing_key", "invalid_key" or "store_error".
func (r Result) String() string {
	if int(r) < len(resultNames) {
		return resultNames[r]
	}
	return resultNames[0]
}

// Outcome is Begin's decision.
type Outcome struct {
	Result Result
	// Lease is the claim to finish after the handler ran (ResultNew only).
	Lease *Lease
	// Response is the stored result (ResultReplayed only); read-only.
	Response Response
	// RetryAfter is the time left on the other request's lease
	// (ResultInFlight only). Adapters tell the client the hint of the
	// returned error instead ([InFlightError.RetryHint]), at most
	// InFlightPoll.
	RetryAfter time.Duration
	// Err is the store failure that was tolerated when failing open.
	Err error
	run bool
}

// Run reports whether the adapter should run the handler: for ResultNew
// (then finish Lease), and unprotected for a missing key that is not
// required or a store failure when failing open.
func (o Outcome) Run() bool { return o.run }

var (
	errMissingKey = bulwark.Permanent(ErrMissingKey)
	errInvalidKey = bulwark.Permanent(ErrInvalidKey)
	errMismatch   = bulwark.Permanent(ErrMismatch)
)

// Begin validates req's key and claims it. It returns an Outcome and, when
// the adapter must not run the handler, the error that says why:
// ErrMissingKey or ErrInvalidKey (marked permanent), an *InFlightError with
// the retry-after hint, ErrMismatch (permanent) or a *StoreError. For a
// replay it returns the stored Response and a nil error. When Outcome.Run()
// is true the adapter runs the handler and, if Outcome.Lease is not nil,
// must call exactly one of Lease.Finish, Lease.Complete or Lease.Release
// afterwards, also when the handler panics (Release then).
func (g *Guard) Begin(ctx context.Context, req Request) (Outcome, error) {
	if req.Key == "" {
		g.m.missingKey.Inc()
		if g.cfg.required {
			return Outcome{Result: ResultMissingKey}, errMissingKey
		}
		return Outcome{Result: ResultMissingKey, run: true}, nil
	}
	if err := ValidateKey(req.Key); err != nil {
		g.m.invalidKey.Inc()
		return Outcome{Result: ResultInvalidKey}, errInvalidKey
	}
	key := DeriveKey(req.Scope, req.Method, req.Route, req.Key)

	sctx, cancel := context.WithTimeout(ctx, g.cfg.storeTimeout)
	start := g.cfg.clock.Now()
	res, err := g.store.Claim(sctx, key, req.Fingerprint, g.cfg.lease)
	g.m.claim.latency.Observe(g.cfg.clock.Now().Sub(start).Seconds())
	cancel()
	if err != nil {
		g.m.storeError.Inc()
		if ctx.Err() == nil { // as in op
			g.m.claim.errors.Inc()
		}
		serr := &StoreError{Op: "claim", Err: err}
		if g.cfg.failOpen && ctx.Err() == nil {
			return Outcome{Result: ResultStoreError, Err: serr, run: true}, nil
		}
		return Outcome{Result: ResultStoreError}, serr
	}
	switch res.Status {
	case Claimed:
		g.m.new.Inc()
		return Outcome{Result: ResultNew, Lease: g.startLease(ctx, key, res.Owner), run: true}, nil
	case Completed:
		g.m.replayed.Inc()
		return Outcome{Result: ResultReplayed, Response: res.Response}, nil
	case InFlight:
		g.m.inFlight.Inc()
		return Outcome{Result: ResultInFlight, RetryAfter: res.RetryAfter}, &InFlightError{RetryAfter: res.RetryAfter}
	case Mismatch:
		g.m.mismatch.Inc()
		return Outcome{Result: ResultMismatch}, errMismatch
	}
	g.m.storeError.Inc()
	serr := &StoreError{Op: "claim", Err: fmt.Errorf("idempotency: store returned status %d", res.Status)}
	return Outcome{Result: ResultStoreError}, serr
}

// Do runs fn under the protocol, for callers that are not HTTP or gRPC
// handlers (job consumers, message handlers). It returns fn's response, or
// the stored one on a replay (Outcome.Result tells which). When Begin
// rejects the request, fn does not run and Do returns Begin's error. When fn
// returns an error or panics, the key is released (nothing is remembered)
// and the error or panic is passed on. Otherwise the response is finished
// with Lease.Finish, under a context that ignores ctx's cancellation (the
// store timeout still bounds it); a failure to store it is returned as the
// error next to the valid response, since fn's effect has happened. A
// response the store can never hold is remembered as [NotReplayable]: a
// replay then returns that record, with Replayable false, and fn does not
// run again.
//
// Do does not make a Guard a bulwark.Policy: the protocol needs the request
// and the response, which Policy.Do does not carry.
func (g *Guard) Do(ctx context.Context, req Request, fn func(context.Context) (Response, error)) (Response, Outcome, error) {
	out, err := g.Begin(ctx, req)
	if err != nil {
		return Response{}, out, err
	}
	if !out.Run() {
		return out.Response, out, nil
	}
	if out.Lease == nil {
		resp, err := fn(ctx)
		return resp, out, err
	}
	resp, err := runReleasing(ctx, out.Lease, fn)
	if err != nil {
		return resp, out, err
	}
	// fn's effect has happened: store its response even if ctx ended while
	// it ran, or the retry would find the key locked, then run fn again.
	return resp, out, out.Lease.Finish(context.WithoutCancel(ctx), resp)
}

func runReleasing(ctx context.Context, l *Lease, fn func(context.Context) (Response, error)) (resp Response, err error) {
	ok := false
	defer func() {
		if !ok {
			_ = l.Release(context.WithoutCancel(ctx))
		}
	}()
	resp, err = fn(ctx)
	ok = err == nil
	return resp, err
}

// Lease is a claim on a key held by a running request. The Guard renews it
// in a background goroutine until Complete, Release or Finish, which stop
// that goroutine and wait for it before they touch the store. Leases come
// from Begin (there is no useful zero Lease). It is safe for concurrent use;
// only the first of those calls has an effect, later ones return an error.
type Lease struct {
	g      *Guard
	key    Key
	owner  Token
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

var errLeaseFinished = errors.New("idempotency: lease already completed or released")

func (g *Guard) startLease(ctx context.Context, key Key, owner Token) *Lease {
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l := &Lease{g: g, key: key, owner: owner, cancel: cancel, done: make(chan struct{})}
	go l.renew(rctx)
	return l
}

// Key returns the stored key the lease is on (a digest, safe to log).
func (l *Lease) Key() Key { return l.key }

// renew extends the lease every third of its length until ctx ends or the
// store says the lease is lost. A failed extension is retried at the next
// tick; two more chances remain before the lease lapses.
func (l *Lease) renew(ctx context.Context) {
	defer close(l.done)
	g := l.g
	every := g.cfg.lease / 3
	for {
		t := g.cfg.clock.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
		err := g.op(ctx, g.m.extend, "extend", func(ctx context.Context) error {
			return g.store.Extend(ctx, l.key, l.owner, g.cfg.lease)
		})
		switch {
		case err == nil:
			g.m.renewals.Inc()
		case errors.Is(err, ErrLeaseLost):
			return
		}
	}
}

// stop ends renewal and waits for the goroutine; it reports whether this was
// the first call.
func (l *Lease) stop() bool {
	first := false
	l.once.Do(func() { first = true })
	l.cancel()
	<-l.done
	return first
}

// Finish completes the lease with resp when the Guard remembers resp.Status
// (WithRemember), and releases it otherwise.
func (l *Lease) Finish(ctx context.Context, resp Response) error {
	if l.g.cfg.remember(resp.Status) {
		return l.Complete(ctx, resp)
	}
	return l.Release(ctx)
}

// Complete stores resp for replay. It returns ErrLeaseLost if the lease
// lapsed and the key was claimed again (the response is then not stored),
// or a *StoreError if the store failed (the key stays in flight until the
// lease lapses).
//
// When the store can never hold resp (ErrResponseTooLarge), Complete stores
// [NotReplayable](resp.Status) instead, so that a repeat is told the request
// was processed rather than running it again, and returns a *StoreError
// wrapping ErrResponseTooLarge. If the store cannot hold even that record,
// the key is released; if storing the record or the release fails, that
// error is joined to it and the key stays in flight until the lease lapses.
func (l *Lease) Complete(ctx context.Context, resp Response) error {
	if !l.stop() {
		return errLeaseFinished
	}
	g := l.g
	complete := func(resp Response) error {
		return g.op(ctx, g.m.complete, "complete", func(ctx context.Context) error {
			return g.store.Complete(ctx, l.key, l.owner, resp, g.cfg.retention)
		})
	}
	err := complete(resp)
	if errors.Is(err, ErrResponseTooLarge) && resp.Replayable() {
		err2 := complete(NotReplayable(resp.Status))
		if err2 == nil {
			return err
		}
		if !errors.Is(err2, ErrResponseTooLarge) {
			return errors.Join(err, err2)
		}
	}
	if errors.Is(err, ErrResponseTooLarge) {
		if rerr := l.release(ctx); rerr != nil {
			return errors.Join(err, rerr)
		}
	}
	return err
}

// Release frees the key so that the next request with it runs again; for
// failures that must not be remembered, and panics. Errors as for Complete.
func (l *Lease) Release(ctx context.Context) error {
	if !l.stop() {
		return errLeaseFinished
	}
	return l.release(ctx)
}

// release deletes the record; the renewal must have stopped.
func (l *Lease) release(ctx context.Context) error {
	g := l.g
	return g.op(ctx, g.m.release, "release", func(ctx context.Context) error {
		return g.store.Release(ctx, l.key, l.owner)
	})
}

// op runs one store call under the store timeout and records its latency.
// Errors other than ErrLeaseLost become a *StoreError for opName.
func (g *Guard) op(ctx context.Context, m opMetrics, opName string, call func(context.Context) error) error {
	sctx, cancel := context.WithTimeout(ctx, g.cfg.storeTimeout)
	start := g.cfg.clock.Now()
	err := call(sctx)
	m.latency.Observe(g.cfg.clock.Now().Sub(start).Seconds())
	cancel()
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrLeaseLost):
		g.m.leaseLost.Inc()
		return err
	}
	// Not the store failing: the caller's context ending (a lease's renewal
	// stopped), or a response too large for it.
	if ctx.Err() == nil && !errors.Is(err, ErrResponseTooLarge) {
		m.errors.Inc()
	}
	return &StoreError{Op: opName, Err: err}
}
