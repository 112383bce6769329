package breaker

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/bulwark-go/bulwark/clock"
	"github.com/prometheus/client_golang/prometheus"
)

// Option configures a [Breaker].
type Option func(*config)

type config struct {
	windowSize     int           // count-based window: last windowSize calls
	windowDuration time.Duration // time-based window when > 0
	windowBuckets  int
	failureRate    float64
	minCalls       int
	consecutive    int
	slowThreshold  time.Duration
	slowRate       float64
	openDuration   time.Duration
	maxOpen        time.Duration
	openFactor     float64
	jitter         float64
	random         func() float64 // draws the jitter, uniform in [0, 1)
	probes         int
	closeAfter     int
	classify       func(error) Outcome
	onStateChange  func(name string, from, to State)
	reg            prometheus.Registerer
	clock          clock.Clock
}

func defaults() config {
	return config{
		windowSize:   100,
		failureRate:  0.5,
		minCalls:     20,
		slowRate:     1,
		openDuration: 30 * time.Second,
		openFactor:   1,
		jitter:       0.1,
		random:       rand.Float64,
		probes:       1,
		closeAfter:   3,
		classify:     DefaultClassifier,
	}
}

// WithCountWindow makes the window the last n calls. This is the default,
// with n = 100, and the fastest window: recording an outcome takes two atomic
// operations and no lock. When n is smaller than the minimum number of calls
// ([WithFailureRate]), the minimum is n: a full window is enough to decide.
func WithCountWindow(n int) Option {
	return func(c *config) {
		if n < 1 {
			panic("breaker: WithCountWindow needs n >= 1")
		}
		c.windowSize, c.windowDuration = n, 0
	}
}

// WithTimeWindow makes the window the calls of the last d, kept in the given
// number of buckets (d/buckets is the resolution with which old calls leave
// the window). Recording an outcome then reads the clock and takes a short
// lock.
func WithTimeWindow(d time.Duration, buckets int) Option {
	return func(c *config) {
		if d <= 0 || buckets < 1 || d/time.Duration(buckets) <= 0 {
			panic("breaker: WithTimeWindow needs d > 0 and 1 <= buckets <= d in nanoseconds")
		}
		c.windowDuration, c.windowBuckets = d, buckets
	}
}

// WithFailureRate sets the failure rate, in (0, 1], at which the breaker
// opens once at least minCalls calls are in the window (or the count window
// is full, if it holds fewer). Defaults: 0.5 and 20.
func WithFailureRate(rate float64, minCalls int) Option {
	return func(c *config) {
		if rate <= 0 || rate > 1 || minCalls < 1 {
			panic("breaker: WithFailureRate needs 0 < rate <= 1 and minCalls >= 1")
		}
		c.failureRate, c.minCalls = rate, minCalls
	}
}

// WithConsecutiveFailures opens the breaker after k failures in a row,
// whatever the window says. Off by default.
func WithConsecutiveFailures(k int) Option {
	return func(c *config) {
		if k < 1 {
			panic("breaker: WithConsecutiveFailures needs k >= 1")
		}
		c.consecutive = k
	}
}

// WithSlowCalls counts calls that take threshold or longer as slow, and opens
// the breaker when the slow-call rate, in (0, 1], reaches rate once the
// window holds minCalls calls (see [WithFailureRate]). A slow probe in the
// half-open state reopens the breaker. Off by default; when on, admitting a
// call reads the clock.
func WithSlowCalls(threshold time.Duration, rate float64) Option {
	return func(c *config) {
		if threshold <= 0 || rate <= 0 || rate > 1 {
			panic("breaker: WithSlowCalls needs threshold > 0 and 0 < rate <= 1")
		}
		c.slowThreshold, c.slowRate = threshold, rate
	}
}

// WithOpenDuration sets how long the breaker stays open before it admits
// probes. Default: 30s.
func WithOpenDuration(d time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			panic("breaker: WithOpenDuration needs d > 0")
		}
		c.openDuration = d
	}
}

// WithGrowingOpenDuration multiplies the open duration by factor each time
// the breaker reopens from half-open without having closed, up to max. The
// duration returns to the base once the breaker closes. The jitter
// ([WithJitter]) applies to the grown duration after the cap, so an opening
// at the cap lasts max, ±fraction: up to max×(1+fraction). Off by default.
func WithGrowingOpenDuration(factor float64, max time.Duration) Option {
	return func(c *config) {
		if factor < 1 || max <= 0 {
			panic("breaker: WithGrowingOpenDuration needs factor >= 1 and max > 0")
		}
		c.openFactor, c.maxOpen = factor, max
	}
}

// WithJitter spreads each open duration uniformly over ±fraction of itself,
// so that a fleet of clients that tripped together does not probe together:
// with the default, a 30s opening lasts between 27s and 33s. The duration
// spread is the one grown and capped by [WithGrowingOpenDuration], so the
// jitter can take an opening past that cap by up to fraction of it. Default:
// 0.1; 0 turns it off.
func WithJitter(fraction float64) Option {
	return func(c *config) {
		if fraction < 0 || fraction >= 1 {
			panic("breaker: WithJitter needs 0 <= fraction < 1")
		}
		c.jitter = fraction
	}
}

// WithHalfOpen sets how many probe calls the half-open breaker runs at once
// (further calls are rejected with [ErrHalfOpenFull]) and how many successful
// probes close it. Defaults: 1 and 3.
func WithHalfOpen(maxProbes, successesToClose int) Option {
	return func(c *config) {
		if maxProbes < 1 || successesToClose < 1 {
			panic("breaker: WithHalfOpen needs maxProbes >= 1 and successesToClose >= 1")
		}
		c.probes, c.closeAfter = maxProbes, successesToClose
	}
}

// WithClassifier sets the function that turns a call's error into an
// [Outcome]. Default: [DefaultClassifier].
func WithClassifier(f func(error) Outcome) Option {
	return func(c *config) { c.classify = f }
}

// OnStateChange sets a function called after every state change. It is never
// called while the breaker holds a lock, so it may call any method of the
// breaker; calls are made one at a time, in the order of the changes.
func OnStateChange(f func(name string, from, to State)) Option {
	return func(c *config) { c.onStateChange = f }
}

// WithRegisterer registers the breaker's metrics on reg. Without it the
// breaker registers nothing. Breakers sharing a registry share one set of
// collectors; breakers with the same name are reported together (counters
// summed, bulwark_breaker_state counting the breakers in each state), and a
// breaker that is garbage collected drops out of the output.
func WithRegisterer(reg prometheus.Registerer) Option {
	return func(c *config) { c.reg = reg }
}

// WithClock sets the time source; tests pass a [clock.Fake] and move it.
func WithClock(clk clock.Clock) Option {
	return func(c *config) { c.clock = clk }
}

// Outcome is how a finished call counts.
type Outcome uint8

// Outcomes.
const (
	// Success counts toward closing and dilutes the failure rate.
	Success Outcome = iota
	// Failure counts toward opening.
	Failure
	// Ignored is not counted at all: the call says nothing about the
	// dependency's health (the caller gave up, say).
	Ignored
)

// DefaultClassifier counts a nil error as [Success], context.Canceled (the
// caller gave up, which says nothing about the dependency) as [Ignored], and
// every other error, context.DeadlineExceeded included, as [Failure].
func DefaultClassifier(err error) Outcome {
	switch {
	case err == nil:
		return Success
	case errors.Is(err, context.Canceled):
		return Ignored
	}
	return Failure
}
