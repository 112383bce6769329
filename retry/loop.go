package retry

import (
	"context"
	"errors"
	"time"
	"unsafe"

	"github.com/cenkalti/backoff/v4"

	"github.com/bulwark-go/bulwark"
)

// Loop drives the attempts of one call under a [Policy], for adapters that
// must run code of their own between attempts — close a response, rewind a
// request body — or that cannot afford a closure per call. [Policy.Do] is
// built on it:
//
//	l := p.Begin(ctx)
//	for {
//		actx, cancel := l.Context()
//		err := call(actx)
//		cancel()
//		if !l.Next(err) {
//			return l.Err()
//		}
//	}
//
// Next is Decide followed by Wait. Call them separately to act on the decision
// before waiting, e.g. to keep the last response when no retry follows and to
// drain it when one does:
//
//	if !l.Decide(err) {
//		return resp, l.Err() // the call is over
//	}
//	drain(resp) // a retry follows: free the connection before waiting
//	if !l.Wait() {
//		return nil, l.Err() // the context ended during the wait
//	}
//	rewind(req)
//
// A Loop is a small value meant to live in a local variable of one goroutine;
// it does not allocate until an attempt fails (and, under
// [WithAttemptTimeout], for each attempt context). Do not copy a Loop once it
// is in use.
type Loop struct {
	p       *Policy
	ctx     context.Context
	bo      backoff.BackOff
	last    error // the last attempt's error
	err     error // the call's result, set when the loop is done
	start   time.Time
	delay   time.Duration
	attempt int
	max     int // attempts allowed to this call
	state   uint8
}

const (
	stateAttempt uint8 = iota // an attempt runs; Decide is next
	stateWait                 // Decide chose a retry; Wait is next
	stateDone
)

// Begin starts a call under the policy; its first attempt may run at once.
// The returned Loop belongs to this call only.
func (p *Policy) Begin(ctx context.Context) Loop {
	var l Loop
	p.BeginIn(ctx, &l, 0)
	return l
}

// BeginIn starts a call in *l, overwriting it, allowed at most maxAttempts
// attempts in total, the first included — fewer than the policy's own limit,
// which it cannot raise: adapters use it for per-call overrides. A call that
// uses them up ends as Exhausted, like one that uses up the policy's.
// maxAttempts < 1 means the policy's limit.
//
// It is Begin for adapters on a hot path: a Loop returned by value is built
// and then copied into the caller's variable, which costs a call that
// succeeds at once about as much as the rest of its loop.
func (p *Policy) BeginIn(ctx context.Context, l *Loop, maxAttempts int) {
	*l = Loop{}
	l.p, l.ctx, l.attempt, l.max = p, ctx, 1, p.maxAttempts
	if maxAttempts >= 1 && maxAttempts < l.max {
		l.max = maxAttempts
	}
}

// FirstTrySucceeded records a call whose first attempt succeeded, as a Loop
// begun and then decided with a nil error would. It is for adapters on a hot
// path that begin their Loop only once the first attempt has failed
// ([Policy.BeginIn], then [Loop.Decide] with that attempt's error), so that
// a call that succeeds at once pays for neither:
//
//	actx, cancel := p.AttemptContext(ctx)
//	err := call(actx)
//	cancel()
//	if err == nil {
//		p.FirstTrySucceeded()
//		return nil
//	}
//	var l retry.Loop
//	p.BeginIn(ctx, &l, 0)
//	for l.Next(err) {
//		actx, cancel := l.Context()
//		err = call(actx)
//		cancel()
//	}
//	return l.Err()
func (p *Policy) FirstTrySucceeded() {
	p.budget.success()
	var here byte // on the caller's stack, which picks the stripe
	if t := p.tallyAt(unsafe.Pointer(&here)); t != nil {
		t.results[resFirstTry].Add(1)
	}
}

// AttemptContext returns the context for one attempt of a call under ctx
// and the function that releases it, to be called once the attempt's result
// has been consumed (for HTTP, after the response body is closed). Without
// [WithAttemptTimeout] it is ctx and a no-op.
func (p *Policy) AttemptContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if p.attemptTimeout <= 0 {
		return ctx, noCancel
	}
	return context.WithTimeout(ctx, p.attemptTimeout)
}

func noCancel() {}

// AttemptTimeout returns the per-attempt timeout of [WithAttemptTimeout], 0
// for none.
func (p *Policy) AttemptTimeout() time.Duration { return p.attemptTimeout }

// Context returns the context for the current attempt and the function that
// releases it: [Policy.AttemptContext] of the call's context.
func (l *Loop) Context() (context.Context, context.CancelFunc) {
	return l.p.AttemptContext(l.ctx)
}

// Attempt returns the number of the current attempt, 1 for the first call.
func (l *Loop) Attempt() int { return l.attempt }

// Delay returns the wait chosen by the last Decide that returned true.
func (l *Loop) Delay() time.Duration { return l.delay }

// Err returns the call's result once the loop is over: nil when an attempt
// succeeded, an [*Error] otherwise. Before that it returns nil.
func (l *Loop) Err() error { return l.err }

// Next records the outcome of the current attempt, err, and reports whether
// another attempt should run; when it returns true it has already waited the
// delay before it. When it returns false the loop is over and [Loop.Err] holds
// the result. Next is Decide followed, when Decide returns true, by Wait.
func (l *Loop) Next(err error) bool {
	return l.Decide(err) && l.Wait()
}

// Decide records the outcome of the current attempt, err, and reports whether
// another attempt should run, without waiting: when it returns true, call
// [Loop.Wait] before the next attempt. When it returns false the loop is over
// and [Loop.Err] holds the result.
func (l *Loop) Decide(err error) bool {
	switch l.state {
	case stateWait:
		return true
	case stateDone:
		return false
	}
	p := l.p
	if err == nil {
		p.budget.success()
		if t := l.tally(); t != nil {
			if l.attempt == 1 {
				t.results[resFirstTry].Add(1)
			} else {
				t.results[resAfterRetry].Add(1)
				t.otherAttempts.Add(uint64(l.attempt))
			}
		}
		l.state = stateDone
		return false
	}
	l.last = err
	if pe, ok := err.(*backoff.PermanentError); ok {
		l.last = pe.Err // classified below with its marker
	}
	if l.ctx.Err() != nil {
		return l.stop(Canceled)
	}
	if !l.retryable(err) {
		return l.stop(NotRetryable)
	}
	h, _ := bulwark.HintOf(err)
	if p.maxHintWait > 0 && h.RetryAfter > p.maxHintWait {
		// Waiting less than asked would be refused again (an open breaker
		// refuses every call before its probe), and more is more than the
		// caller accepts. Like a NoRetry hint, this ends the call before
		// the budget is asked: no retry follows, so it takes no token.
		return l.stop(NotRetryable)
	}
	allowed := p.budget.failure()
	if l.attempt >= l.max {
		return l.stop(Exhausted)
	}
	if !allowed {
		return l.stop(BudgetExhausted)
	}

	now := p.clock.Now()
	if l.bo == nil {
		l.bo = p.newBackOff()
		l.bo.Reset()
		l.start = now
	}
	delay := l.bo.NextBackOff()
	if delay == backoff.Stop {
		return l.stop(Exhausted)
	}
	if h.RetryAfter > 0 {
		delay = h.RetryAfter
	}
	delay = max(delay, 0)
	end := now.Add(delay)
	if dl, ok := l.ctx.Deadline(); ok && !end.Before(dl) {
		return l.stop(OutOfTime)
	}
	if p.maxElapsed > 0 && end.Sub(l.start) > p.maxElapsed {
		return l.stop(OutOfTime)
	}
	l.delay = delay
	l.state = stateWait
	return true
}

// Wait waits the delay chosen by [Loop.Decide] and reports whether the next
// attempt may run. It returns false, ending the loop with a Canceled
// [*Error], when the context ends first, and false when Decide did not just
// return true.
func (l *Loop) Wait() bool {
	if l.state != stateWait {
		return false
	}
	p := l.p
	if l.ctx.Err() != nil {
		return l.stop(Canceled)
	}
	if p.onRetry != nil {
		p.onRetry(l.attempt, l.last, l.delay)
	}
	p.wait.Observe(l.delay.Seconds())
	if l.delay > 0 {
		t := p.clock.NewTimer(l.delay)
		select {
		case <-t.C():
		case <-l.ctx.Done():
			t.Stop()
			return l.stop(Canceled)
		}
	}
	l.attempt++
	l.state = stateAttempt
	return true
}

// tally returns the stripe of the policy's counters that l counts on, nil
// when the policy has no registerer. The stripe is picked by a hash of l's
// address: Loops live on their callers' stacks or in per-call state, so calls
// on different goroutines mostly count on different cache lines instead of
// all contending for one.
func (l *Loop) tally() *tally { return l.p.tallyAt(unsafe.Pointer(l)) }

// tallyAt returns the stripe picked by a hash of the address at, nil when the
// policy has no registerer.
func (p *Policy) tallyAt(at unsafe.Pointer) *tally {
	t := p.tallies
	if t == nil {
		return nil
	}
	h := uint64(uintptr(at)) * 0x9e3779b97f4a7c15 // Fibonacci hashing
	return &t[h>>(64-tallyBits)]
}

func (l *Loop) retryable(err error) bool {
	if l.p.classify != nil {
		return l.p.classify(err)
	}
	return Retryable(err)
}

// stop ends the loop with a failure and returns false.
func (l *Loop) stop(r Reason) bool {
	e := &Error{Attempts: l.attempt, Reason: r, Err: l.last}
	if r == Canceled {
		e.ctxErr = l.ctx.Err()
		if errors.Is(l.last, e.ctxErr) {
			e.ctxErr = nil
		}
	}
	l.err = e
	if t := l.tally(); t != nil {
		t.results[r.result()].Add(1)
		t.otherAttempts.Add(uint64(l.attempt))
	}
	l.state = stateDone
	return false
}
