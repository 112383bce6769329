package retry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bulwark-go/bulwark"
	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/internal/metrics"
)

// Defaults of a policy built with no options.
const (
	// DefaultMaxAttempts is the number of attempts in total, the first call
	// included: one call and up to two retries.
	DefaultMaxAttempts = 3
	// DefaultMaxElapsed caps the time spent retrying; see [WithMaxElapsed].
	DefaultMaxElapsed = 30 * time.Second
	// DefaultMaxHintWait is the longest wait a hint can ask for before
	// retrying stops instead; see [WithMaxHintWait].
	DefaultMaxHintWait = 10 * time.Second
)

// Policy retries a call that fails with a retryable error, waiting between
// attempts as a backoff schedule says, as a server hint asks, and as a shared
// [Budget] allows.
//
// Algorithm, for each call: run an attempt; on success return nil. On failure
// stop with an [*Error] when the caller's context has ended, when the error is
// not retryable (see [Retryable]) or its [bulwark.Hint] asks for a longer
// wait than [WithMaxHintWait] allows, when the attempts are used up, when the
// schedule says [backoff.Stop], when the budget refuses the retry, or when
// the next wait would end at or after the context's deadline or after the
// elapsed cap. Otherwise wait (the schedule's delay, or the hint's
// RetryAfter) and try again.
//
// A Policy is safe for concurrent use; every call gets its own schedule,
// created only when its first attempt fails. The zero Policy is not usable:
// build one with [New].
type Policy struct {
	name           string
	maxAttempts    int
	newBackOff     func() backoff.BackOff
	maxElapsed     time.Duration
	attemptTimeout time.Duration
	maxHintWait    time.Duration
	classify       func(error) bool
	budget         *Budget
	onRetry        func(attempt int, err error, delay time.Duration)
	clock          clock.Clock

	wait prometheus.Observer

	// tallies counts calls as they end, for the collector that reads them
	// at scrape time; nil without a registerer, when nobody reads them.
	tallies *[numTallies]tally
}

// A policy's counters are spread over numTallies stripes.
const (
	tallyBits  = 5
	numTallies = 1 << tallyBits
)

// tally is one stripe of a policy's counters: calls by result, and the
// attempts of calls that did not succeed at once. Each takes a cache line of
// its own (the array of them is a 2 KiB heap object, so cache-line aligned),
// so that calls ending on different cores add on different lines.
type tally struct {
	results       [numResults]atomic.Uint64
	otherAttempts atomic.Uint64
	_             [64 - 8*(numResults+1)]byte
}

// Option configures a [Policy].
type Option func(*config)

type config struct {
	maxAttempts    int
	newBackOff     func() backoff.BackOff
	maxElapsed     time.Duration
	attemptTimeout time.Duration
	maxHintWait    time.Duration
	classify       func(error) bool
	budget         *Budget
	budgetSet      bool
	onRetry        func(int, error, time.Duration)
	reg            prometheus.Registerer
	clock          clock.Clock
}

// WithMaxAttempts sets the number of attempts in total, the first call
// included: WithMaxAttempts(3) calls the function at most three times, and
// WithMaxAttempts(1) never retries. The default is [DefaultMaxAttempts].
// It panics when n < 1.
func WithMaxAttempts(n int) Option {
	if n < 1 {
		panic(fmt.Sprintf("retry: WithMaxAttempts(%d): attempts count the first call and must be at least 1", n))
	}
	return func(c *config) { c.maxAttempts = n }
}

// WithBackOff sets the factory of backoff schedules. A [backoff.BackOff] is
// not safe for concurrent use, so the policy calls newBackOff once per call,
// when the first attempt of that call fails (a call that succeeds at once never
// creates one), and calls Reset on the result before asking it for delays. The
// schedule may return [backoff.Stop] to end retrying. The number of attempts,
// the elapsed cap and the budget still apply on top of the schedule.
//
// The default, also used when newBackOff is nil, is an exponential schedule
// with jitter: 100 ms, then doubling, each delay drawn uniformly within ±50%,
// intervals capped at 10 s, and no elapsed limit of its own.
func WithBackOff(newBackOff func() backoff.BackOff) Option {
	return func(c *config) { c.newBackOff = newBackOff }
}

// WithMaxElapsed caps the time a call spends retrying: no wait starts that
// would end more than d after the first attempt failed. (The clock is read only
// once a call fails, so that a call that succeeds at once never reads it; the
// first attempt's own duration is therefore not counted.) Zero or less removes
// the cap. The default is [DefaultMaxElapsed]. The caller's context deadline is
// always honoured as well.
func WithMaxElapsed(d time.Duration) Option {
	return func(c *config) { c.maxElapsed = max(d, 0) }
}

// WithAttemptTimeout gives every attempt its own child context that expires d
// after the attempt starts; the caller's deadline still wins when it is
// earlier. An attempt ended by this timeout is retryable (the caller's context
// is still live); an attempt ended by the caller's context is not. The timeout
// is a context deadline and so runs on the real clock, not on [WithClock].
// Zero or less, the default, means no per-attempt timeout.
func WithAttemptTimeout(d time.Duration) Option {
	return func(c *config) { c.attemptTimeout = max(d, 0) }
}

// WithMaxHintWait sets the longest wait a hint can ask for. When the failed
// attempt's error carries a [bulwark.Hint] with RetryAfter > 0, the next wait
// is RetryAfter instead of the schedule's delay, if RetryAfter ≤ d; a longer
// hint stops retrying at once, as NotRetryable, without drawing on the
// budget. Waiting less than asked would mostly be refused again — an open
// breaker's hint is the time until it admits a probe, and it refuses every
// call before — and waiting more is more than the caller accepts. Zero or
// less removes the limit. The default is [DefaultMaxHintWait]. A hint with
// NoRetry stops retrying under [Retryable], the default classifier; a
// [WithClassifier] decides for itself.
func WithMaxHintWait(d time.Duration) Option {
	return func(c *config) { c.maxHintWait = max(d, 0) }
}

// WithClassifier replaces [Retryable] as the test of whether a failed
// attempt's error may be retried. It is never asked about attempts that failed
// after the caller's own context ended: those always stop retrying. Compose
// with [Retryable] to keep the default rules:
//
//	retry.WithClassifier(func(err error) bool {
//		return retry.Retryable(err) && !errors.Is(err, ErrInvalidInput)
//	})
func WithClassifier(retryable func(error) bool) Option {
	return func(c *config) { c.classify = retryable }
}

// WithBudget makes the policy draw its retries from b, which may be shared
// with other policies. WithBudget(nil) removes the budget: every retryable
// failure may be retried up to the attempt limit. The default is a budget of
// the policy's own, NewBudget([DefaultBudgetMaxTokens], [DefaultBudgetRatio]).
func WithBudget(b *Budget) Option {
	return func(c *config) { c.budget, c.budgetSet = b, true }
}

// WithOnRetry sets a hook called before each wait with the number of the
// attempt that failed (1 for the first call), its error and the delay about to
// be waited. It runs on the calling goroutine and must not block.
func WithOnRetry(f func(attempt int, err error, delay time.Duration)) Option {
	return func(c *config) { c.onRetry = f }
}

// WithRegisterer registers the policy's metrics on reg. Nil, the default,
// registers nothing.
func WithRegisterer(reg prometheus.Registerer) Option {
	return func(c *config) { c.reg = reg }
}

// WithClock sets the clock that times waits and the elapsed cap, and whose
// Now is compared with the context's deadline before each wait. Nil, the
// default, is the system clock.
func WithClock(c clock.Clock) Option {
	return func(cfg *config) { cfg.clock = c }
}

// New returns a retry policy called name (the value of the metrics' name
// label). With no options it makes [DefaultMaxAttempts] attempts in total with
// exponential backoff and jitter, caps retrying at [DefaultMaxElapsed] and
// hint waits at [DefaultMaxHintWait], has no per-attempt timeout, and draws
// retries from a budget of its own.
func New(name string, opts ...Option) *Policy {
	cfg := config{
		maxAttempts: DefaultMaxAttempts,
		maxElapsed:  DefaultMaxElapsed,
		maxHintWait: DefaultMaxHintWait,
	}
	for _, o := range opts {
		o(&cfg)
	}
	if !cfg.budgetSet {
		cfg.budget = NewBudget(DefaultBudgetMaxTokens, DefaultBudgetRatio)
	}
	p := &Policy{
		name:           name,
		maxAttempts:    cfg.maxAttempts,
		newBackOff:     cfg.newBackOff,
		maxElapsed:     cfg.maxElapsed,
		attemptTimeout: cfg.attemptTimeout,
		maxHintWait:    cfg.maxHintWait,
		classify:       cfg.classify,
		budget:         cfg.budget,
		onRetry:        cfg.onRetry,
		clock:          cmp.Or(cfg.clock, clock.Real()),
	}
	if p.newBackOff == nil {
		clk := p.clock
		p.newBackOff = func() backoff.BackOff { return defaultBackOff(clk) }
	}
	p.initMetrics(cfg.reg)
	return p
}

func defaultBackOff(clk clock.Clock) backoff.BackOff {
	return backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(100*time.Millisecond),
		backoff.WithRandomizationFactor(0.5),
		backoff.WithMultiplier(2),
		backoff.WithMaxInterval(10*time.Second),
		backoff.WithMaxElapsedTime(0),
		backoff.WithClockProvider(clk),
	)
}

// Name returns the policy's name.
func (p *Policy) Name() string { return p.name }

// Budget returns the policy's budget, nil when it has none.
func (p *Policy) Budget() *Budget { return p.budget }

// Do calls fn until it succeeds or the policy stops retrying, and returns nil
// or an [*Error] that wraps the last attempt's error. Each attempt receives a
// context derived from ctx (with its own deadline under [WithAttemptTimeout]).
// Do implements [bulwark.Policy]; a call that succeeds at once does not
// allocate.
func (p *Policy) Do(ctx context.Context, fn func(context.Context) error) error {
	var l Loop
	p.BeginIn(ctx, &l, 0)
	for {
		actx, cancel := l.Context()
		err := fn(actx)
		cancel()
		if !l.Next(err) {
			return l.Err()
		}
	}
}

// Retryable is the default classification: it reports whether err may be
// retried. Every non-nil error is retryable except those marked permanent —
// by [bulwark.Permanent] or by a rejection whose [bulwark.Hint] has NoRetry
// (see [bulwark.IsPermanent]) — and those wrapping a [*backoff.PermanentError].
// The caller's own context cancellation is handled before classification and
// always stops retrying.
func Retryable(err error) bool {
	if err == nil || bulwark.IsPermanent(err) {
		return false
	}
	_, permanent := errors.AsType[*backoff.PermanentError](err)
	return !permanent
}

var _ bulwark.Policy = (*Policy)(nil)

func (p *Policy) initMetrics(reg prometheus.Registerer) {
	wait := metrics.Register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "bulwark_retry_wait_seconds",
		Help:    "Waits before retries, in seconds, as planned: a wait cut short by the caller's context counts in full.",
		Buckets: metrics.DurationBuckets,
	}, []string{"name"}))
	p.wait = wait.WithLabelValues(p.name)
	if reg == nil {
		return
	}
	p.tallies = new([numTallies]tally)
	metrics.AddInstance(metrics.Register(reg, newCounters()), p.name, p, (*Policy).readCounters)
	if p.budget != nil {
		metrics.Register(reg, newBudgetGauge()).policies.Add(p)
	}
}

// budgetGauge is the collector of bulwark_retry_budget_tokens: the tokens
// left in the budgets of the policies registered with it, read at scrape
// time. It holds the policies weakly, so that a policy nobody uses any more
// (one replaced on a configuration reload, say) is garbage collected with its
// budget and drops out, and the gauge follows the policies in use. Policies
// that share a name are reported together, as the bulkhead's gauges are:
// the series is the sum of their budgets' tokens, a budget shared by several
// of them counted once.
type budgetGauge struct {
	desc     *prometheus.Desc
	policies metrics.WeakSet[Policy]
}

func newBudgetGauge() *budgetGauge {
	return &budgetGauge{desc: prometheus.NewDesc("bulwark_retry_budget_tokens",
		"Tokens left in the retry budget of a retry policy; retries stop at half the capacity.",
		[]string{"name"}, nil)}
}

// Describe implements [prometheus.Collector].
func (g *budgetGauge) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }

// Collect implements [prometheus.Collector].
func (g *budgetGauge) Collect(ch chan<- prometheus.Metric) {
	type named struct {
		name   string
		budget *Budget
	}
	var names []string
	sums := map[string]float64{}
	counted := map[named]bool{}
	for _, p := range g.policies.Live() {
		if _, ok := sums[p.name]; !ok {
			names = append(names, p.name)
			sums[p.name] = 0
		}
		if k := (named{p.name, p.budget}); !counted[k] {
			counted[k] = true
			sums[p.name] += p.budget.Tokens()
		}
	}
	for _, name := range names {
		ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, sums[name], name)
	}
}

// newCounters returns the collector of attempts_total and calls_total, in
// the order readCounters fills.
func newCounters() *metrics.Counters {
	return metrics.NewCounters(
		metrics.Family{
			Name: "bulwark_retry_attempts_total",
			Help: "Attempts made by retry policies, first calls included; a call's attempts are counted when it ends.",
		},
		metrics.Family{
			Name:  "bulwark_retry_calls_total",
			Help:  "Calls through retry policies by result: first_try, after_retry, exhausted, not_retryable, budget_exhausted or canceled.",
			Label: "result",
			Kinds: resultLabels[:],
		},
	)
}

// readCounters adds p's attempts, then its calls by result, to dst.
func (p *Policy) readCounters(dst []uint64) {
	// Every count only grows, so each sum does too; a scrape that races a
	// call may see its result before its attempts or after, and the
	// collector keeps the highest reading of each series.
	for i := range p.tallies {
		t := &p.tallies[i]
		firstTry := t.results[resFirstTry].Load()
		dst[0] += firstTry + t.otherAttempts.Load()
		dst[1+resFirstTry] += firstTry
		for r := resFirstTry + 1; r < numResults; r++ {
			dst[1+r] += t.results[r].Load()
		}
	}
}
