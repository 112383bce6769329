package redisrate

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/bulwark-go/bulwark/ratelimit"
	"github.com/bulwark-go/bulwark/ratelimit/internal/rlmetrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"
)

// DefaultTimeout bounds one decision's round trip unless [WithTimeout] says
// otherwise: long enough for a healthy Redis on the same network (a decision
// takes well under a millisecond there), short enough that an outage adds
// little to each request before the failure mode takes over.
const DefaultTimeout = 50 * time.Millisecond

// DefaultKeyPrefix starts every Redis key the limiter writes unless
// [WithKeyPrefix] says otherwise.
const DefaultKeyPrefix = "bulwark:ratelimit:"

// ErrUnavailable is wrapped by the error a [FailClosed] limiter returns when
// Redis could not decide (down, slow beyond the timeout, or answering with an
// error). The error also wraps the cause.
var ErrUnavailable = errors.New("redisrate: store unavailable")

//go:embed gcra.lua
var gcraSource string

// FailureMode says what a decision is when Redis cannot make it. Every such
// decision is counted as decision="error" in
// bulwark_ratelimit_decisions_total, whatever the mode.
type FailureMode struct {
	kind  failureKind
	local *ratelimit.Local
}

type failureKind int

const (
	failOpen failureKind = iota
	failClosed
	fallbackLocal
)

// FailOpen allows the request: Allow returns an allowed Decision that
// describes the policy, with Remaining and Reset zero (the state is unknown),
// and a nil error.
//
// It is the default because the limiter protects a service from excess load
// and abuse, while an outage of Redis is neither: failing closed would turn a
// Redis outage into an outage of every endpoint behind the limiter. The cost
// is that limits are not enforced until Redis answers again; the error
// counter makes that visible. Where that cost is too high, use
// [FallbackLocal] (limits enforced per replica) or [FailClosed].
func FailOpen() FailureMode { return FailureMode{kind: failOpen} }

// FailClosed refuses to decide: Allow returns a denied Decision that
// describes the policy (Remaining and Reset zero) and an error that wraps
// [ErrUnavailable] and the cause. Adapters answer such an error with 503, not
// 429.
func FailClosed() FailureMode { return FailureMode{kind: failClosed} }

// FallbackLocal asks l instead and returns its decision and error. Size l
// for one replica: with n replicas sharing a limit of r per second, give
// each fallback r/n and the burst divided likewise, so that the fleet stays
// near the limit while Redis is away. l counts its own decisions under its
// own name. It panics when l is nil.
//
// A cost above l's burst but within the limiter's is denied, not refused
// with [ratelimit.ErrCostExceedsLimit]: l alone could never allow it, but
// Redis can once it answers again, and that error tells callers that no
// retry can help. The Decision is Redis's answer for a drained bucket — the
// limiter's policy, Remaining 0, Reset the Window, RetryAfter the time the
// limit takes to refill that cost — with a nil error, l's bucket is left
// alone, and only this limiter counts it (as decision="error"). Only a cost
// above the limiter's own burst returns ErrCostExceedsLimit.
func FallbackLocal(l *ratelimit.Local) FailureMode {
	if l == nil {
		panic("redisrate: FallbackLocal(nil)")
	}
	return FailureMode{kind: fallbackLocal, local: l}
}

// Option configures a [Limiter].
type Option func(*config)

type config struct {
	reg     prometheus.Registerer
	timeout time.Duration
	mode    FailureMode
	prefix  string
	policy  string
}

// WithRegisterer registers the limiter's metrics on reg. The default, nil,
// registers nothing.
func WithRegisterer(reg prometheus.Registerer) Option {
	return func(c *config) { c.reg = reg }
}

// WithTimeout bounds each decision's round trip to Redis; the default is
// [DefaultTimeout]. A non-positive d leaves only the caller's context to
// bound it.
//
// Build the client you pass to [New] with Options.ContextTimeoutEnabled set:
// go-redis applies a context's deadline to socket reads and writes only then.
// Without it the timeout still bounds connecting (an unreachable Redis costs
// each decision the timeout, as go-redis retries the dial until then), but a
// Redis that accepts connections and does not answer holds each decision for
// the client's ReadTimeout (seconds) instead.
func WithTimeout(d time.Duration) Option {
	return func(c *config) { c.timeout = d }
}

// WithFailureMode says what a decision is when Redis cannot make it; the
// default is [FailOpen].
func WithFailureMode(m FailureMode) Option {
	return func(c *config) { c.mode = m }
}

// WithKeyPrefix sets the start of every Redis key; the default is
// [DefaultKeyPrefix]. Give each environment sharing one Redis its own.
func WithKeyPrefix(p string) Option {
	return func(c *config) { c.prefix = p }
}

// WithPolicy sets [ratelimit.Decision.Policy], the name quoted in the
// RateLimit header fields; the default is [ratelimit.DefaultPolicy].
func WithPolicy(name string) Option {
	return func(c *config) { c.policy = name }
}

// Limiter is a [ratelimit.Limiter] whose state lives in Redis, so that all
// replicas using the same name (and the same key prefix) share one quota per
// key. It allows r units per second per key with bursts of up to burst, the
// same policy as a [ratelimit.Local] of that rate and burst, with GCRA.
//
// Each request key becomes one Redis key, prefix + name + ":" + 32 hex digits
// of the SHA-256 of the request key: fixed length whatever the request key
// (a long or binary key cannot bloat Redis or break the protocol), no
// ambiguity between names, and a key that clients cannot pick to collide
// with someone else's. Replicas must configure the same rate and burst for a
// name; a replica with other settings would apply its own to the shared
// state.
//
// The zero value is not usable; construct with [New]. A Limiter is safe for
// concurrent use. As a [bulwark.Policy] (Do) it limits all calls together
// under the key ""; use [ratelimit.For] for another key.
type Limiter struct {
	name     string
	rdb      redis.UniversalClient
	script   *redis.Script
	burst    int
	interval time.Duration // per unit, a whole number of microseconds
	policy   string
	window   time.Duration
	head     string // prefix + name + ":"
	timeout  time.Duration
	mode     FailureMode
	// Command arguments boxed once, so a decision does not box them again.
	shaArg, intervalArg, burstArg any
	counts                        rlmetrics.Counts
	store                         prometheus.Observer
}

// maxWindowMicros is the longest window the script handles: Redis's Lua
// numbers are doubles, exact for integers up to 2⁵³, and the script adds the
// window to the time in µs since 1970, which 2⁵² leaves room for until 2112.
const maxWindowMicros = 1 << 52

// New returns a limiter named name (the metric label and part of every key)
// that keeps its state in Redis through rdb — a *redis.Client,
// *redis.ClusterClient or *redis.Ring, built with ContextTimeoutEnabled (see
// [WithTimeout]) — and allows r units per second per key
// with bursts of up to burst.
//
// The time per unit, 1/r, is kept in whole microseconds (rounded to the
// nearest), so r may be at most 1,000,000 per second, and the script does its
// arithmetic in Redis's Lua numbers, exact up to 2⁵³ µs since 1970, so the
// window (burst/r) may be at most 2⁵² µs, about 142 years. New panics on a rate or window
// outside these bounds, or a burst below 1: configuration mistakes, caught
// before any request. It does no I/O; the script is sent to Redis by the first
// decision that finds it missing.
func New(name string, rdb redis.UniversalClient, r rate.Limit, burst int, opts ...Option) *Limiter {
	if !(r > 0 && r <= 1e6) || burst < 1 {
		panic(fmt.Sprintf("redisrate: New(%q): rate %v must be in (0, 1e6] and burst %d positive", name, r, burst))
	}
	if window := math.Round(1e6/float64(r)) * float64(burst); window > maxWindowMicros {
		panic(fmt.Sprintf("redisrate: New(%q): a burst of %d at rate %v is a window of %.0f µs, over the 2⁵² µs the script computes exactly", name, burst, r, window))
	}
	if rdb == nil {
		panic(fmt.Sprintf("redisrate: New(%q): nil Redis client", name))
	}
	c := config{timeout: DefaultTimeout, mode: FailOpen(), prefix: DefaultKeyPrefix, policy: ratelimit.DefaultPolicy}
	for _, o := range opts {
		o(&c)
	}
	us := int64(math.Round(1e6 / float64(r)))
	script := redis.NewScript(gcraSource)
	l := &Limiter{
		name:        name,
		rdb:         rdb,
		script:      script,
		shaArg:      script.Hash(),
		burst:       burst,
		interval:    time.Duration(us) * time.Microsecond,
		policy:      c.policy,
		window:      time.Duration(us*int64(burst)) * time.Microsecond,
		head:        c.prefix + name + ":",
		timeout:     c.timeout,
		mode:        c.mode,
		intervalArg: us,
		burstArg:    burst,
		store:       rlmetrics.NewStoreSeconds(c.reg, name),
	}
	rlmetrics.RegisterDecisions(c.reg, name, l, func(l *Limiter, dst []uint64) { l.counts.Read(dst) })
	return l
}

// Name returns the limiter's name.
func (l *Limiter) Name() string { return l.name }

// Allow takes cost units from key's shared quota if it holds them now and
// reports the decision, in one round trip to Redis. A cost of 0 reports the
// state without writing and is not counted as a decision; a denied request
// writes nothing. A cost above the burst returns
// [ratelimit.ErrCostExceedsLimit] and a negative one
// [ratelimit.ErrInvalidCost], without I/O, whatever the [FailureMode]. When
// Redis fails or does not answer within the timeout, the FailureMode decides
// (a fallback never refuses a cost within this burst for good; see
// [FallbackLocal]); when ctx itself ends first, Allow returns ctx.Err().
func (l *Limiter) Allow(ctx context.Context, key string, cost int) (ratelimit.Decision, error) {
	switch {
	case cost < 0:
		return l.policyOnly(false), ratelimit.ErrInvalidCost
	case cost > l.burst:
		return l.policyOnly(false), ratelimit.ErrCostExceedsLimit
	}
	return l.decide(ctx, key, cost, nil)
}

// Do runs fn if the quota of the key "" has a unit, spending it, and
// otherwise returns a *[ratelimit.LimitedError] without calling fn. An error
// from the failure mode is returned as is.
func (l *Limiter) Do(ctx context.Context, fn func(context.Context) error) error {
	return ratelimit.For(l, "").Do(ctx, fn)
}

// decide runs the script; now, when not nil, replaces Redis's clock (tests).
//
// It sends EVALSHA through Process rather than Script.Run, which builds the
// same command with more allocations; when the server does not know the
// script (a fresh or flushed Redis, a failover), it falls back to EVAL, which
// also caches the script for the next decisions.
func (l *Limiter) decide(ctx context.Context, key string, cost int, now *time.Time) (ratelimit.Decision, error) {
	rctx, cancel := ctx, context.CancelFunc(nil)
	if dl, ok := ctx.Deadline(); l.timeout > 0 && (!ok || time.Until(dl) > l.timeout) {
		// A caller's deadline that comes sooner already bounds the call.
		rctx, cancel = context.WithTimeout(ctx, l.timeout)
	}
	rkey := l.redisKey(key)
	var cmd *redis.Cmd
	if now == nil {
		cmd = redis.NewCmd(rctx, "evalsha", l.shaArg, "1", rkey, l.intervalArg, l.burstArg, cost)
	} else {
		cmd = redis.NewCmd(rctx, "evalsha", l.shaArg, "1", rkey, l.intervalArg, l.burstArg, cost, now.UnixMicro())
	}
	cmd.SetFirstKeyPos(3)
	start := time.Now()
	err := l.rdb.Process(rctx, cmd)
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		args := cmd.Args()[4:]
		cmd = l.script.Eval(rctx, l.rdb, []string{rkey}, args...)
		err = cmd.Err()
	}
	l.store.Observe(time.Since(start).Seconds())
	if cancel != nil {
		cancel()
	}
	if err == nil {
		var reply []any
		if reply, err = cmd.Slice(); err == nil {
			var d ratelimit.Decision
			if d, err = l.parse(reply); err == nil {
				switch {
				case cost == 0: // a look at the state, not a decision
				case d.Allowed:
					l.counts.Inc(rlmetrics.Allowed)
				default:
					l.counts.Inc(rlmetrics.Denied)
				}
				return d, nil
			}
		}
	}
	return l.fail(ctx, key, cost, err)
}

func (l *Limiter) parse(reply []any) (ratelimit.Decision, error) {
	var v [4]int64
	if len(reply) != len(v) {
		return ratelimit.Decision{}, fmt.Errorf("redisrate: unexpected script reply %v", reply)
	}
	for i, x := range reply {
		n, ok := x.(int64)
		if !ok {
			return ratelimit.Decision{}, fmt.Errorf("redisrate: unexpected script reply %v", reply)
		}
		v[i] = n
	}
	d := l.policyOnly(v[0] == 1)
	d.Remaining = int(max(v[1], 0))
	d.Reset = time.Duration(v[2]) * time.Microsecond
	d.RetryAfter = time.Duration(v[3]) * time.Microsecond
	return d, nil
}

func (l *Limiter) fail(ctx context.Context, key string, cost int, err error) (ratelimit.Decision, error) {
	// The caller's context ending is no decision: nothing is counted.
	if cerr := ctx.Err(); cerr != nil {
		return l.policyOnly(false), cerr
	}
	// A socket deadline taken from ctx can expire a moment before ctx's own
	// timer marks it done: that failure too is the caller's deadline.
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return l.policyOnly(false), context.DeadlineExceeded
	}
	if cost > 0 {
		l.counts.Inc(rlmetrics.Error)
	}
	switch l.mode.kind {
	case failClosed:
		return l.policyOnly(false), fmt.Errorf("%w: %w", ErrUnavailable, err)
	case fallbackLocal:
		d, err := l.mode.local.Allow(ctx, key, cost)
		if errors.Is(err, ratelimit.ErrCostExceedsLimit) {
			// cost fits Redis's burst (Allow checked) but not the
			// fallback's: Redis may allow it as soon as it answers, so
			// this is a denial for now, never ErrCostExceedsLimit. The
			// fallback did not decide it and does not count it.
			return l.drained(cost), nil
		}
		return d, err
	default:
		return l.policyOnly(true), nil
	}
}

// drained is the denial of a request for cost that the fallback cannot
// judge: Redis's answer for the key with its bucket drained. The shared
// state is unknown, and assuming the worst case keeps every hint within what
// Redis itself could have said: Remaining 0, Reset the Window, and
// RetryAfter cost×interval, the longest Redis ever asks a request of that
// cost to wait. There is no earlier moment to promise: each decision tries
// Redis first, so none is known at which Redis will answer again, and a
// RetryAfter of zero would invite clients to retry in a tight loop through
// the timeout of every attempt.
func (l *Limiter) drained(cost int) ratelimit.Decision {
	d := l.policyOnly(false)
	d.Reset = l.window
	d.RetryAfter = time.Duration(cost) * l.interval
	return d
}

func (l *Limiter) policyOnly(allowed bool) ratelimit.Decision {
	return ratelimit.Decision{Allowed: allowed, Policy: l.policy, Limit: l.burst, Window: l.window}
}

// redisKey is head + 32 hex digits of SHA-256(key).
func (l *Limiter) redisKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	var hx [32]byte
	hex.Encode(hx[:], sum[:16])
	var b strings.Builder
	b.Grow(len(l.head) + len(hx))
	b.WriteString(l.head)
	b.Write(hx[:])
	return b.String()
}
