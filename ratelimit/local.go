package ratelimit

import (
	"cmp"
	"context"
	"fmt"
	"hash/maphash"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/ratelimit/internal/rlmetrics"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// DefaultMaxKeys is the number of keys a [Local] remembers unless
// [WithMaxKeys] says otherwise. At about 150 bytes per key (measured by
// TestLocalMemoryBound, which holds it under 256) it bounds the limiter's
// memory to roughly 15 MB.
const DefaultMaxKeys = 100_000

const (
	shardBits = 6
	numShards = 1 << shardBits
	// evictScan is how many of a shard's least recently used keys eviction
	// inspects for a full bucket before it forgets the least recent one.
	evictScan = 8
)

// Option configures a [Local].
type Option func(*config)

type config struct {
	reg     prometheus.Registerer
	clk     clock.Clock
	maxKeys int
	policy  string
}

// WithRegisterer registers the limiter's metrics on reg. The default, nil,
// registers nothing (and never touches the global registry).
func WithRegisterer(reg prometheus.Registerer) Option {
	return func(c *config) { c.reg = reg }
}

// WithClock sets the time source; tests pass a [clock.Fake]. The default is the
// system clock.
func WithClock(clk clock.Clock) Option {
	return func(c *config) { c.clk = clk }
}

// WithMaxKeys bounds the number of keys the limiter remembers at once; the
// default is [DefaultMaxKeys]. The bound is split evenly over 64 shards and
// raised to 64 when smaller. See [Local] for what is forgotten first.
func WithMaxKeys(n int) Option {
	return func(c *config) { c.maxKeys = n }
}

// WithPolicy sets the policy name reported in [Decision.Policy], the name
// quoted in the RateLimit and RateLimit-Policy header fields. The default is
// [DefaultPolicy].
func WithPolicy(name string) Option {
	return func(c *config) { c.policy = name }
}

// Local is an in-process keyed rate limiter: one token bucket of rate r and
// burst b per key, created full when a key is first seen. The bucket is
// golang.org/x/time/rate's algorithm — tokens refill continuously at r up
// to b, an event spends its cost — kept inline under the shard's mutex
// rather than in a rate.Limiter, whose own mutex would be taken twice more
// per decision (once to decide, once to read the tokens left for
// Remaining): one lock per decision instead of three.
//
// Keys are spread over 64 shards, each with its own mutex, so unrelated keys
// rarely contend. A key is remembered by a 64-bit hash/maphash of it with a
// seed drawn at construction, never by its bytes, so the memory per key is
// fixed whatever the key's length; two distinct keys share a bucket only if
// their hashes collide (probability about n²/2⁶⁵ for n live keys, and the
// seed is unknown to clients, so a collision cannot be aimed).
//
// Memory is bounded: at most [WithMaxKeys] keys are remembered. When a new key
// arrives at a full shard, the limiter first forgets an idle key whose bucket
// has refilled completely — forgetting it changes nothing, since it would be
// created full again — looking at the shard's eight least recently used keys;
// only when none of them is full does it forget the least recently used key,
// which then starts over with a full bucket if it returns. So an overflow of
// distinct keys can loosen the limit for the least active keys, never grow
// memory.
//
// The zero value is not usable; construct with [NewLocal]. A Local is safe for
// concurrent use. As a [bulwark.Policy] (Do) it limits all calls together
// under the key "".
type Local struct {
	name   string
	limit  rate.Limit
	burst  int
	policy string
	window time.Duration
	clk    clock.Clock
	epoch  time.Time // bucket times are nanoseconds since epoch (monotonic)
	seed   maphash.Seed
	_      [64]byte // the fields above are read by every decision
	shards [numShards]shard
}

type shard struct {
	mu   sync.Mutex
	keys map[uint64]*entry
	max  int
	lru  entry // sentinel of a circular list: lru.next is the most recently used
	// Decisions on the shard's keys, read at scrape time: counted here,
	// beside the mutex a decision holds anyway, so that counting shares no
	// cache line between shards.
	allowed, denied atomic.Uint64
	_               [64]byte
}

type entry struct {
	h          uint64
	prev, next *entry
	// gen counts the keys this entry has served: evict hands entries on,
	// so a waiter that reserved from it recognises its own bucket by h and
	// gen together, even when its key came back to the same entry.
	gen uint64
	bucket
	// Two keys' entries never share a cache line, so that decisions for
	// different keys on different cores do not invalidate each other.
	_ [16]byte
}

// bucket is one key's token bucket: tokens as they stood at last, a clock
// reading in nanoseconds since the limiter's epoch. It may go negative
// when WaitN reserves tokens ahead of time.
type bucket struct {
	tokens float64
	last   int64
}

// NewLocal returns a keyed limiter that allows r events per second per key
// with bursts of up to burst events. r may be rate.Inf (everything is allowed,
// Window is zero). It panics when r is not positive or burst is less than 1:
// such a limiter would refuse every request, which is a configuration mistake.
// name is the metric label.
func NewLocal(name string, r rate.Limit, burst int, opts ...Option) *Local {
	if r <= 0 || math.IsNaN(float64(r)) || burst < 1 {
		panic(fmt.Sprintf("ratelimit: NewLocal(%q): rate %v and burst %d must be positive", name, r, burst))
	}
	c := config{maxKeys: DefaultMaxKeys, policy: DefaultPolicy}
	for _, o := range opts {
		o(&c)
	}
	l := &Local{
		name:   name,
		limit:  r,
		burst:  burst,
		policy: c.policy,
		clk:    cmp.Or(c.clk, clock.Real()),
		seed:   maphash.MakeSeed(),
	}
	l.epoch = l.clk.Now()
	rlmetrics.RegisterDecisions(c.reg, name, l, (*Local).readDecisions)
	if r != rate.Inf {
		l.window = durationFor(float64(burst), r)
	}
	maxKeys := max(c.maxKeys, numShards)
	for i := range l.shards {
		s := &l.shards[i]
		s.max = maxKeys / numShards
		if i < maxKeys%numShards {
			s.max++
		}
		s.keys = make(map[uint64]*entry)
		s.lru.next, s.lru.prev = &s.lru, &s.lru
	}
	return l
}

// readDecisions adds the decisions counted in every shard to dst.
func (l *Local) readDecisions(dst []uint64) {
	for i := range l.shards {
		dst[rlmetrics.Allowed] += l.shards[i].allowed.Load()
		dst[rlmetrics.Denied] += l.shards[i].denied.Load()
	}
}

// Name returns the limiter's name.
func (l *Local) Name() string { return l.name }

// Len returns the number of keys the limiter remembers now.
func (l *Local) Len() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.keys)
		s.mu.Unlock()
	}
	return n
}

// Allow spends cost tokens of key's bucket if it holds that many now and
// reports the decision; it never blocks and ignores ctx. A cost of 0 reports
// the bucket's state: it is not counted as a decision, and a key the limiter
// does not remember reads as a full bucket without being remembered. A cost
// above the burst returns [ErrCostExceedsLimit] (except with rate.Inf, which
// allows any cost), a negative one [ErrInvalidCost]. An allowed decision does
// not allocate.
func (l *Local) Allow(_ context.Context, key string, cost int) (d Decision, _ error) {
	if err := l.checkCost(cost); err != nil {
		return l.policyOnly(), err
	}
	if cost == 0 {
		l.peek(&d, key)
		return d, nil
	}
	if l.limit == rate.Inf {
		s, _ := l.shard(key)
		s.allowed.Add(1)
		l.fillDecision(&d, true, bucket{}, 0, cost)
		return d, nil
	}
	now := l.now()
	s, h := l.shard(key)
	s.mu.Lock()
	e := s.get(h, now, l)
	tokens := l.fill(&e.bucket, now)
	ok := tokens >= float64(cost)
	if ok {
		e.tokens = tokens - float64(cost)
		s.allowed.Add(1)
	} else {
		s.denied.Add(1)
	}
	b := e.bucket
	s.mu.Unlock()
	l.fillDecision(&d, ok, b, now, cost)
	return d, nil
}

// peek sets *d to the state of key's bucket, changing nothing: a key that is
// not remembered has a full bucket, and looking at it must not make the
// limiter remember it (or evict another key to do so).
func (l *Local) peek(d *Decision, key string) {
	now := l.now()
	b := bucket{tokens: float64(l.burst), last: now}
	if l.limit != rate.Inf {
		s, h := l.shard(key)
		s.mu.Lock()
		if e, ok := s.keys[h]; ok {
			b.tokens = l.level(&e.bucket, now)
		}
		s.mu.Unlock()
	}
	l.fillDecision(d, true, b, now, 0)
}

// Do runs fn if the bucket of the key "" has a token, spending it, and
// otherwise returns a *[LimitedError] without calling fn. It makes Local a
// [bulwark.Policy] that limits all calls through it together; use [For] for a
// policy on another key.
func (l *Local) Do(ctx context.Context, fn func(context.Context) error) error {
	return do(ctx, l, "", fn)
}

// Wait blocks until key's bucket has a token and spends it: client-side
// throttling. See [Local.WaitN].
func (l *Local) Wait(ctx context.Context, key string) error {
	return l.WaitN(ctx, key, 1)
}

// WaitN blocks until key's bucket can pay n tokens and spends them. It
// reserves the tokens at once, so waiters are served in arrival order, and
// waits on a timer from the limiter's clock. When ctx ends first it returns
// ctx.Err() and gives the reserved tokens back. When ctx has a deadline that
// comes before the tokens could be ready, it returns at once, without
// spending anything, a *[LimitedError] that wraps context.DeadlineExceeded
// and carries the wait it would have needed as RetryAfter. n above the burst
// returns [ErrCostExceedsLimit]; n of 0 returns at once, and is not counted
// as a decision.
func (l *Local) WaitN(ctx context.Context, key string, n int) error {
	if err := l.checkCost(n); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if n == 0 {
		// Nothing to pay and nothing to count: no wait, even behind
		// reservations that hold the bucket below zero.
		return nil
	}
	if l.limit == rate.Inf {
		s, _ := l.shard(key)
		s.allowed.Add(1)
		return nil
	}
	now := l.now()
	s, h := l.shard(key)
	s.mu.Lock()
	e := s.get(h, now, l)
	gen := e.gen
	tokens := l.fill(&e.bucket, now) - float64(n)
	var delay time.Duration
	if tokens < 0 {
		delay = l.waitFor(&e.bucket, now, float64(n))
	}
	deadline, hasDeadline := ctx.Deadline()
	tooLate := hasDeadline && delay > 0 && deadline.Sub(l.epoch.Add(time.Duration(now))) < delay
	if !tooLate {
		e.tokens = tokens // reserved: later callers queue behind this one
	}
	s.mu.Unlock()
	switch {
	case delay == 0:
		s.allowed.Add(1)
		return nil
	case tooLate:
		s.denied.Add(1)
		d := l.policyOnly()
		d.RetryAfter = delay
		return &LimitedError{Decision: d, Err: context.DeadlineExceeded}
	}
	t := l.clk.NewTimer(delay)
	select {
	case <-t.C():
		s.allowed.Add(1)
		return nil
	case <-ctx.Done():
		t.Stop()
		l.giveBack(s, h, e, gen, n)
		s.denied.Add(1)
		return ctx.Err()
	}
}

// giveBack returns n tokens reserved by a wait that was cancelled, unless
// the key was forgotten meanwhile (its bucket then starts full anyway). The
// entry may since serve another key, or this key again with a new bucket:
// gen tells the bucket the tokens were reserved from.
func (l *Local) giveBack(s *shard, h uint64, e *entry, gen uint64, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.keys[h] == e && e.gen == gen {
		now := l.now()
		e.tokens = min(l.fill(&e.bucket, now)+float64(n), float64(l.burst))
	}
}

// now returns the clock's time as nanoseconds since the limiter's epoch.
func (l *Local) now() int64 { return int64(l.clk.Since(l.epoch)) }

// fill refills b up to now and returns its tokens. The shard's mutex is held.
func (l *Local) fill(b *bucket, now int64) float64 {
	if elapsed := now - b.last; elapsed > 0 {
		b.tokens = l.level(b, now)
		b.last = now
	}
	return b.tokens
}

// level returns the tokens b would hold at now, without changing it.
func (l *Local) level(b *bucket, now int64) float64 {
	elapsed := now - b.last
	if elapsed <= 0 {
		return b.tokens
	}
	return min(b.tokens+float64(elapsed)*float64(l.limit)/float64(time.Second), float64(l.burst))
}

func (l *Local) checkCost(cost int) error {
	switch {
	case cost < 0:
		return ErrInvalidCost
	case cost > l.burst && l.limit != rate.Inf:
		return ErrCostExceedsLimit
	}
	return nil
}

func (l *Local) shard(key string) (*shard, uint64) {
	h := maphash.String(l.seed, key)
	return &l.shards[h>>(64-shardBits)], h
}

// policyOnly is a denied decision that describes the policy but no bucket.
func (l *Local) policyOnly() Decision {
	return Decision{Policy: l.policy, Limit: l.burst, Window: l.window}
}

// fillDecision sets *d, whose fields are zero, to the decision on b, a
// bucket filled up to now, after a request for cost. It fills d in place: a
// Decision returned by value was written field by field and then copied
// whole, and the copy, reading what was still being written, cost an allowed
// decision a fifth of its time.
func (l *Local) fillDecision(d *Decision, ok bool, b bucket, now int64, cost int) {
	d.Allowed, d.Policy, d.Limit, d.Window = ok, l.policy, l.burst, l.window
	if l.limit == rate.Inf {
		d.Remaining = l.burst
		return
	}
	tokens := b.tokens
	switch {
	case tokens >= float64(l.burst):
		// Also where float64 rounds a burst near math.MaxInt up, past
		// what int(tokens) can hold.
		d.Remaining = l.burst
	case tokens >= 1:
		d.Remaining = int(tokens)
	}
	// Reset keeps the plain estimate, which may be a nanosecond short:
	// checking it costs every allowed decision a tenth of its time.
	if full := float64(l.burst); tokens < full {
		d.Reset = durationFor(full-tokens, l.limit)
	}
	if !ok && float64(cost) > tokens {
		d.RetryAfter = l.waitFor(&b, now, float64(cost))
	}
}

// waitFor returns the time from now until b, a bucket filled up to now
// (b.last >= now) and left alone meanwhile, holds want tokens: the least d
// for which level(b, now+d) >= want, so that a caller who waits d is allowed
// and one who comes back a nanosecond early is not. It is
// time.Duration(math.MaxInt64) when that is further away than a Duration
// reaches.
//
// durationFor's estimate can miss by a nanosecond or so either way, because
// it rounds (want-tokens)/r and level rounds tokens + elapsed×r apart: from a
// fractional token count, waiting the estimate could leave 0.99999… of a
// token. So waitFor checks the estimate with level itself, which is
// monotonic in the time, and when level disagrees moves it to the first
// nanosecond level agrees with.
func (l *Local) waitFor(b *bucket, now int64, want float64) time.Duration {
	if b.tokens >= want {
		return 0
	}
	d := int64(durationFor(want-b.tokens, l.limit))
	if b.last == now && d > 0 && d < math.MaxInt64/2-now &&
		l.level(b, now+d) >= want && l.level(b, now+d-1) < want {
		return time.Duration(d) // the estimate is right: the common case
	}
	return l.searchWait(b, now, want, d)
}

// searchWait is waitFor when the estimate est is wrong or b.last > now (a
// decision that read the clock just before another one on the same key).
func (l *Local) searchWait(b *bucket, now int64, want float64, est int64) time.Duration {
	limit := math.MaxInt64 - max(now, b.last) // no later d overflows now+d
	if est >= limit-est {
		return time.Duration(math.MaxInt64) // beyond any wait worth checking
	}
	// lo is a time at which b is short of want, hi one at which it is not.
	lo, hi := int64(0), max(b.last-now, 0)+max(est, 1)
	for step := int64(1); l.level(b, now+hi) < want; step *= 2 {
		if step >= limit-hi {
			return time.Duration(math.MaxInt64)
		}
		lo, hi = hi, hi+step
	}
	for step := int64(1); hi-lo > 1; step *= 2 {
		m := max(hi-step, lo+1)
		if l.level(b, now+m) < want {
			lo = m
			break
		}
		hi = m
	}
	for hi-lo > 1 {
		m := lo + (hi-lo)/2
		if l.level(b, now+m) < want {
			lo = m
		} else {
			hi = m
		}
	}
	return time.Duration(hi)
}

// durationFor is the time r takes to refill tokens, rounded up to the
// nanosecond. It is exact in real numbers only: [Local.waitFor] corrects it
// to what the bucket's own arithmetic agrees with.
func durationFor(tokens float64, r rate.Limit) time.Duration {
	ns := math.Ceil(tokens / float64(r) * float64(time.Second))
	if ns >= math.MaxInt64 {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(ns)
}

// get returns the entry for h, creating it (and evicting another when the
// shard is full) if needed, and marks it most recently used. s.mu is held.
func (s *shard) get(h uint64, now int64, l *Local) *entry {
	if e, ok := s.keys[h]; ok {
		if s.lru.next != e {
			s.unlink(e)
			s.pushFront(e)
		}
		return e
	}
	var e *entry
	if len(s.keys) >= s.max {
		e = s.evict(now, l)
	}
	if e == nil {
		e = &entry{}
	}
	e.bucket = bucket{tokens: float64(l.burst), last: now}
	e.h = h
	e.gen++
	s.keys[h] = e
	s.pushFront(e)
	return e
}

// evict forgets one key and returns its entry for reuse: the first of the
// least recently used keys whose bucket is full, else the least recent.
func (s *shard) evict(now int64, l *Local) *entry {
	victim := s.lru.prev
	for e, i := s.lru.prev, 0; e != &s.lru && i < evictScan; e, i = e.prev, i+1 {
		if l.level(&e.bucket, now) >= float64(l.burst) {
			victim = e
			break
		}
	}
	if victim == &s.lru {
		return nil
	}
	s.unlink(victim)
	delete(s.keys, victim.h)
	return victim
}

func (s *shard) unlink(e *entry) {
	e.prev.next = e.next
	e.next.prev = e.prev
	e.prev, e.next = nil, nil
}

func (s *shard) pushFront(e *entry) {
	e.prev = &s.lru
	e.next = s.lru.next
	s.lru.next.prev = e
	s.lru.next = e
}
