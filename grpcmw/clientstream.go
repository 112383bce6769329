package grpcmw

import (
	"context"
	"io"
	"strconv"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/bulwark-go/bulwark"
	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/retry"
)

// StreamClientInterceptor returns a stream client interceptor with the
// options of [UnaryClientInterceptor], except the idempotency keys
// ([WithIdempotencyKeys], [WithIdempotencyKey]), which apply to unary calls
// only. The bulkhead slot is held for the whole stream; the limiter and the
// breaker are asked for every attempt, and the breaker learns an attempt's
// outcome when the attempt fails or, for the attempt that is kept, when the
// stream ends: RecvMsg returned io.EOF or an error, the one response of a
// call without a response stream arrived, or the caller's context ended (a
// cancellation is not counted, an expired deadline counts as
// DeadlineExceeded).
//
// A SendMsg error other than io.EOF ends the stream, as it does in grpc-go:
// the client itself refused the message (larger than the call's send limit,
// or it could not be marshalled), so the stream is not retried, and the
// breaker does not count it. While a stream may be retried, Context
// returns a context that lasts as long as the stream rather than the current
// attempt's, which ends with the attempt. SendMsg may run beside RecvMsg, as
// in grpc-go, and so may Header.
//
// # When a stream is retried
//
// A stream is retried only while it is uncommitted, and it is committed — for
// good — by the first of:
//
//   - a response message received (RecvMsg returned nil);
//   - the stream ending cleanly (RecvMsg returned io.EOF);
//   - response headers received (Header returned non-nil metadata);
//   - the messages sent so far exceeding the replay buffer
//     ([WithStreamBuffer]; client- and bidi-streaming calls), since they
//     could no longer be replayed;
//   - a failure that is not retried (a non-retryable code, attempts, budget
//     or deadline exhausted).
//
// While uncommitted, the interceptor keeps every message SendMsg was given
// (the message values themselves: grpc-go's contract already forbids changing
// a message after SendMsg). When opening the stream fails, or when RecvMsg
// (or Header) finds it failed before any response message has arrived, with
// a retryable code, it waits as the retry policy says, opens a new stream,
// sends the kept messages again in order (and CloseSend if it had been
// called) and goes on reading from the new stream. A server-streaming call's
// single request is always replayable. The caller never sees a message
// twice, because no message was delivered from an attempt that is given up;
// nor does it lose one it sent.
//
// A SendMsg that finds the attempt's stream already ended by the server
// (io.EOF) is kept and reported as sent, as grpc-go's SendMsg does not promise
// delivery anyway; the status then comes from RecvMsg as usual, after the
// retry if one happens. The retry policy's per-attempt timeout does not apply
// to streams, which may rightly live long.
func StreamClientInterceptor(opts ...Option) grpc.StreamClientInterceptor {
	return newClient(opts).stream
}

func (c *client) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	co := scanCallOptions(opts)
	rs := &retryStream{
		c: c, ctx: ctx, desc: desc, cc: cc, method: method, streamer: streamer, opts: opts,
		attempts: co.attempts,
	}
	rs.decided.L = &rs.mu
	rs.breaker = c.breakerFor(cc, method)
	if c.bulkhead != nil {
		p, err := c.bulkhead.Acquire(ctx)
		if err != nil {
			return nil, local(codes.ResourceExhausted, err)
		}
		rs.slot = p
	}
	if c.retry != nil && co.maxAttempts != 1 {
		c.retry.BeginIn(ctx, &rs.loop, co.maxAttempts)
		rs.retrying = true
	}
	if err := rs.openLoop(nil); err != nil {
		return nil, err
	}
	rs.stopWatch = context.AfterFunc(ctx, rs.abandon)
	return rs, nil
}

// retryStream is the stream handed to the caller: the current attempt's
// stream plus what is needed to replace it while uncommitted.
type retryStream struct {
	c         *client
	ctx       context.Context
	desc      *grpc.StreamDesc
	cc        *grpc.ClientConn
	method    string
	streamer  grpc.Streamer
	opts      []grpc.CallOption
	breaker   *breaker.Breaker
	attempts  *int
	retrying  bool
	loop      retry.Loop // used under recvMu and retryMu (failed), and by commit once
	stopWatch func() bool

	// retryMu is held while a failed attempt is replaced (RecvMsg, or
	// Header's settle) and while headers commit the stream (Header), so that
	// the two never overlap.
	retryMu sync.Mutex
	// recvMu is held while an attempt is read, by RecvMsg or by Header's
	// settle, so that no two read one grpc-go stream at once.
	recvMu sync.Mutex
	// decided is broadcast, under mu, when cur is replaced or the stream
	// commits: what a Header waits for while another reads the attempt.
	decided sync.Cond

	attempt      atomic.Int32 // the current attempt's number, for ReportAttempts
	attemptsOnce sync.Once

	committed atomic.Bool
	finished  atomic.Bool

	// reportMu makes a report to the breaker whole: one that finds the
	// permit taken waits until the breaker has been told, so that RecvMsg
	// never returns before the context watcher's report lands.
	reportMu sync.Mutex

	// sendMu orders what goes out on an attempt's stream: the caller's
	// SendMsg and CloseSend, and the replay on a new attempt. It is held
	// across network sends, which may wait for flow control; mu never is,
	// and the replay runs on a goroutine of its own, so that RecvMsg is
	// never stuck behind a send.
	sendMu sync.Mutex

	mu         sync.Mutex // guards the fields below
	cur        grpc.ClientStream
	permit     breaker.Permit
	hasPermit  bool
	slot       bulkhead.Permit
	sent       []any
	sentBytes  int
	overflow   bool  // more was sent than the buffer holds: no replay
	refused    error // a message the client refused to send: the stream is over
	closedSend bool
	broken     bool // cur's send side ended; sends are kept for the replay
	// stale: cur is an attempt that failed, not yet replaced by the next
	// one, so an error that ends the stream now is not cur's.
	stale bool
	// The context Context returns while the stream may be retried, and its
	// cancel, called when the stream ends; made on the first call.
	streamCtx    context.Context
	cancelStream context.CancelFunc
}

// openLoop opens attempts until one is open or the policy gives up. last is
// the error of the attempt that failed before, nil for the first.
func (rs *retryStream) openLoop(last error) error {
	for {
		if last != nil {
			if err := rs.again(last, nil); err != nil {
				return err
			}
		}
		err := rs.open()
		if err == nil {
			return nil
		}
		if !rs.retrying || rs.committed.Load() { // committed: a send was refused
			rs.fail(err)
			return err
		}
		last = err
	}
}

// again decides whether to retry after err and waits; it returns nil to go
// on, or the error the caller gets after the stream has been failed.
func (rs *retryStream) again(err error, trailer metadata.MD) error {
	st, _ := status.FromError(err)
	var hint *bulwark.Hint
	if h, ok := serverHint(st, trailer); ok {
		hint = &h
	}
	verdict := rs.c.classify(rs.ctx, rs.ctx, err, hint, false)
	if !rs.loop.Decide(verdict) {
		rs.fail(err)
		return err
	}
	rs.mu.Lock()
	rs.stale = true // a next attempt replaces cur, or the stream ends without one
	rs.mu.Unlock()
	if !rs.loop.Wait() {
		err = status.FromContextError(rs.ctx.Err()).Err()
		rs.fail(err)
		return err
	}
	return nil
}

// open makes one attempt: limiter, breaker, a new stream, and the replay of
// what was sent so far.
func (rs *retryStream) open() error {
	n := 1
	if rs.retrying {
		n = rs.loop.Attempt()
	}
	rs.attempt.Store(int32(n)) // an attempt the limiter or the breaker refuses counts too
	ctx := rs.ctx
	if rs.c.limiter != nil {
		if err := rs.c.throttle(ctx, rs.method); err != nil {
			return err
		}
	}
	var bp breaker.Permit
	if rs.breaker != nil {
		var err error
		if bp, err = rs.breaker.Allow(); err != nil {
			return local(codes.Unavailable, err)
		}
	}
	if n > 1 {
		ctx = metadata.AppendToOutgoingContext(ctx, PreviousAttemptsHeader, strconv.Itoa(n-1))
	}
	// No send may run between the new stream and its replay, and none is
	// wanted on the old one any more: the caller's sends wait for the replay.
	rs.sendMu.Lock()
	if err := rs.refusedErr(); err != nil {
		rs.sendMu.Unlock()
		bp.Report(breaker.Ignored)
		return err
	}
	s, err := rs.streamer(ctx, rs.desc, rs.cc, rs.method, rs.opts...)
	if err != nil {
		rs.sendMu.Unlock()
		bp.Report(rs.c.outcome(rs.ctx, err))
		return err
	}
	rs.mu.Lock()
	rs.cur, rs.permit, rs.hasPermit, rs.broken, rs.stale = s, bp, rs.breaker != nil, false, false
	rs.decided.Broadcast()
	sent, closedSend := rs.sent, rs.closedSend
	rs.mu.Unlock()
	if len(sent) == 0 {
		if closedSend {
			_ = s.CloseSend()
		}
		rs.sendMu.Unlock()
		return nil
	}
	// The replay may wait for flow control until the server reads, and the
	// server may send before it reads: it runs on a goroutine of its own so
	// that RecvMsg goes on reading meanwhile.
	go rs.replay(s, sent, closedSend)
	return nil
}

// replay sends the kept messages on s, a new attempt's stream, and CloseSend
// if it had been called, then lets the caller's sends go on: open locked
// sendMu, and replay unlocks it.
func (rs *retryStream) replay(s grpc.ClientStream, sent []any, closedSend bool) {
	defer rs.sendMu.Unlock()
	for _, m := range sent {
		if err := s.SendMsg(m); err != nil {
			rs.mu.Lock()
			rs.broken = true // the status comes from RecvMsg
			rs.mu.Unlock()
			return
		}
	}
	if closedSend {
		_ = s.CloseSend()
	}
}

func (rs *retryStream) current() grpc.ClientStream {
	if rs.committed.Load() {
		return rs.cur
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.cur
}

// Context returns the stream's context. A stream that may be retried does not
// return an attempt's context, which ends when the attempt fails, but one
// made from the caller's context that ends when the stream does.
func (rs *retryStream) Context() context.Context {
	if !rs.retrying {
		return rs.current().Context()
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.streamCtx == nil {
		rs.streamCtx, rs.cancelStream = context.WithCancel(rs.ctx)
		if rs.finished.Load() {
			rs.cancelStream()
		}
	}
	return rs.streamCtx
}

// Trailer returns the trailer of the current attempt's stream.
func (rs *retryStream) Trailer() metadata.MD { return rs.current().Trailer() }

// Header waits for the current attempt's response headers; headers received
// commit the stream to the attempt they came from, unless RecvMsg has
// replaced that attempt since. When the attempt ended without headers
// (trailers-only) and the stream may still be retried, Header does what
// RecvMsg would: it retries the stream, waiting as the policy says, and
// returns the headers of the attempt that follows, or nil, nil when the
// stream is not retried, as grpc-go's Header does for a stream that ended;
// RecvMsg then returns its status. When RecvMsg is the one retrying, Header
// waits for it to replace the attempt, then for the new attempt's headers.
// An error ends a stream that will not be retried, as grpc-go's does.
func (rs *retryStream) Header() (metadata.MD, error) {
	for {
		s := rs.current()
		md, err := s.Header()
		switch {
		case md != nil && !rs.committed.Load():
			rs.retryMu.Lock()
			if rs.current() == s {
				rs.commit()
			}
			rs.retryMu.Unlock()
		case err != nil && (!rs.retrying || rs.committed.Load()):
			rs.end(err)
		case md == nil && err == nil && rs.retrying && !rs.committed.Load():
			if rs.settle(s) {
				continue // a new attempt replaced s
			}
		}
		return md, err
	}
}

// settle learns the status of attempt s, which ended without headers, and
// retries or ends the stream as RecvMsg would; it reports whether a new
// attempt replaced s. It reads s under recvMu, as RecvMsg reads, so that the
// two never read one grpc-go stream at once.
// When recvMu is held, a RecvMsg (or another Header) is reading s or the
// attempt after it and will decide: settle waits for that decision instead
// of for recvMu, which a RecvMsg holds while it waits for a message.
func (rs *retryStream) settle(s grpc.ClientStream) bool {
	// recvMu is tried under mu, so that a holder that lets go of it without
	// deciding (it panicked) and then broadcasts cannot be missed.
	rs.mu.Lock()
	for !rs.recvMu.TryLock() {
		if rs.cur != s || rs.committed.Load() {
			replaced := rs.cur != s
			rs.mu.Unlock()
			return replaced
		}
		rs.decided.Wait()
	}
	rs.mu.Unlock()
	returned := false // still false when the read panicked
	defer func() { rs.unlockRecv(!returned) }()
	replaced := rs.current() != s // RecvMsg replaced it meanwhile
	if !replaced && !rs.committed.Load() {
		// A stream that ended without headers has no message to decode
		// (gRPC sends headers first), so RecvMsg returns its status at once
		// and the target is never written.
		var none struct{}
		done, err := rs.recvAttempt(s, &none)
		replaced = !done && err == nil
	}
	returned = true
	return replaced
}

// unlockRecv releases recvMu. After a read that panicked, and so did not
// decide on the attempt, it also wakes the Headers waiting for that
// decision, so that they try recvMu again.
func (rs *retryStream) unlockRecv(panicked bool) {
	rs.recvMu.Unlock()
	if panicked {
		rs.mu.Lock()
		rs.decided.Broadcast()
		rs.mu.Unlock()
	}
}

// SendMsg sends m on the current attempt and keeps it for a replay while the
// stream is uncommitted.
func (rs *retryStream) SendMsg(m any) error {
	if !rs.retrying {
		err := rs.current().SendMsg(m)
		if err != nil && err != io.EOF {
			rs.refuse(err)
		}
		return err
	}
	// Committed or not: a replay may still be sending on this attempt.
	rs.sendMu.Lock()
	defer rs.sendMu.Unlock()
	rs.mu.Lock()
	kept := !rs.overflow && !rs.committed.Load() // for a replay
	if kept {
		size := 0
		if pm, ok := m.(proto.Message); ok {
			size = proto.Size(pm)
		}
		// A server-streaming call's one request is kept whatever its size:
		// the caller holds it anyway, and it is all a replay needs.
		if rs.desc.ClientStreams && (len(rs.sent) >= rs.c.streamMsgs || rs.sentBytes+size > rs.c.streamBytes) {
			rs.overflow, rs.sent, rs.sentBytes, kept = true, nil, 0, false
		} else {
			rs.sent = append(rs.sent, m)
			rs.sentBytes += size
		}
	}
	cur, broken := rs.cur, rs.broken
	rs.mu.Unlock()
	if broken {
		if !kept {
			return io.EOF
		}
		return nil
	}
	err := cur.SendMsg(m) // without mu: it may wait for flow control
	switch {
	case err == io.EOF && kept:
		rs.mu.Lock()
		rs.broken = true
		rs.mu.Unlock()
		return nil
	case err != nil && err != io.EOF:
		rs.refuse(err)
	}
	return err
}

// CloseSend closes the send direction of the current attempt, and of any
// attempt that replaces it.
func (rs *retryStream) CloseSend() error {
	if !rs.retrying {
		return rs.current().CloseSend()
	}
	rs.sendMu.Lock() // after a replay still sending, committed or not
	defer rs.sendMu.Unlock()
	rs.mu.Lock()
	rs.closedSend = true
	cur, broken := rs.cur, rs.broken
	rs.mu.Unlock()
	if broken {
		return nil
	}
	return cur.CloseSend()
}

// RecvMsg receives the next response message, retrying the stream when it
// fails before the first one. It holds recvMu throughout, so that Header's
// settle never reads an attempt beside it, even one a refused SendMsg
// committed meanwhile.
func (rs *retryStream) RecvMsg(m any) error {
	rs.recvMu.Lock()
	returned := false // still false when the read panicked
	defer func() { rs.unlockRecv(!returned) }()
	for {
		if rs.committed.Load() {
			err := rs.current().RecvMsg(m)
			rs.received(err)
			returned = true
			return err
		}
		if done, err := rs.recvAttempt(rs.current(), m); done {
			returned = true
			return err
		}
	}
}

// recvAttempt receives into m from attempt s of a stream that was
// uncommitted, with recvMu held. It reports whether RecvMsg is done, with
// its result, or a new attempt replaced s.
func (rs *retryStream) recvAttempt(s grpc.ClientStream, m any) (bool, error) {
	err := s.RecvMsg(m)
	if rs.committed.Load() {
		rs.received(err)
		return true, err
	}
	if err == nil {
		rs.commit()
		rs.received(nil)
		return true, nil
	}
	if err == io.EOF {
		rs.commit()
		rs.end(nil)
		return true, err
	}
	if err := rs.failed(s, err); err != nil {
		return true, err
	}
	return false, nil
}

// failed handles err, the failure of attempt s before any response message:
// it ends the stream and returns err, or opens the next attempt and returns
// nil. It holds retryMu, so that Header does not commit the stream while an
// attempt is being replaced.
func (rs *retryStream) failed(s grpc.ClientStream, err error) error {
	rs.retryMu.Lock()
	defer rs.retryMu.Unlock()
	if rs.committed.Load() { // by Header, since s.RecvMsg returned
		rs.received(err)
		return err
	}
	rs.report(err)
	if !rs.retrying || !rs.replayable() {
		if rs.retrying {
			rs.loop.Decide(bulwark.Permanent(err))
		}
		rs.fail(err)
		return err
	}
	if err := rs.again(err, s.Trailer()); err != nil {
		return err
	}
	return rs.openLoop(nil)
}

// received ends a committed stream after RecvMsg returned err: at an error
// or io.EOF, and at the response of a call that has only one, after which
// grpc-go has finished the stream without an io.EOF.
func (rs *retryStream) received(err error) {
	switch {
	case err == io.EOF:
		rs.end(nil)
	case err != nil || !rs.desc.ServerStreams:
		rs.end(err)
	}
}

// replayable reports whether a new attempt could be given everything sent
// so far.
func (rs *retryStream) replayable() bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return !rs.overflow && rs.refused == nil
}

func (rs *retryStream) refusedErr() error {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.refused
}

// refuse ends the stream after SendMsg failed with err, an error other than
// io.EOF: the client itself refused the message (too large, or it could not
// be marshalled) and grpc-go has finished the stream. Nothing is retried,
// and the breaker does not count an attempt the server had no part in.
func (rs *retryStream) refuse(err error) {
	rs.mu.Lock()
	rs.refused = err
	rs.committed.Store(true)
	rs.decided.Broadcast()
	rs.sent = nil
	bp, ok := rs.permit, rs.hasPermit
	rs.permit, rs.hasPermit = breaker.Permit{}, false
	rs.mu.Unlock()
	if ok {
		bp.Report(breaker.Ignored)
	}
	rs.setAttempts()
	rs.end(err)
}

// commit keeps the current attempt for good: no more retries, no more
// buffering.
func (rs *retryStream) commit() {
	if rs.committed.Load() {
		return
	}
	rs.mu.Lock()
	if rs.committed.Load() { // Header and RecvMsg both got here: one commits
		rs.mu.Unlock()
		return
	}
	rs.sent, rs.sentBytes = nil, 0
	rs.committed.Store(true)
	rs.decided.Broadcast()
	rs.mu.Unlock()
	if rs.retrying {
		rs.loop.Decide(nil)
	}
	rs.setAttempts()
}

// setAttempts reports the number of attempts, once.
func (rs *retryStream) setAttempts() {
	if rs.attempts != nil {
		rs.attemptsOnce.Do(func() { *rs.attempts = int(rs.attempt.Load()) })
	}
}

// report tells the breaker how the current attempt ended, unless another
// report did; it returns once the breaker has been told.
func (rs *retryStream) report(err error) {
	rs.reportMu.Lock()
	defer rs.reportMu.Unlock()
	rs.mu.Lock()
	bp, ok := rs.permit, rs.hasPermit
	rs.permit, rs.hasPermit = breaker.Permit{}, false
	rs.mu.Unlock()
	if ok {
		bp.Report(rs.c.outcome(rs.ctx, err))
	}
}

// fail ends an uncommitted stream that will not be retried. When err is
// not the current attempt's (the next attempt was refused, or the wait for
// it ended), the stream answers from then on as one that ended with err:
// RecvMsg returns err again, and Trailer has nothing.
func (rs *retryStream) fail(err error) {
	rs.mu.Lock()
	if rs.stale && !rs.committed.Load() {
		// Not yet committed: nobody reads cur without mu.
		rs.cur = &endedStream{ClientStream: rs.cur, err: err}
	}
	rs.committed.Store(true)
	rs.decided.Broadcast()
	rs.sent = nil
	rs.mu.Unlock()
	rs.setAttempts()
	rs.end(err)
}

// end reports the stream's outcome and frees its bulkhead slot, once.
func (rs *retryStream) end(err error) {
	if !rs.finished.CompareAndSwap(false, true) {
		// abandon ended it: wait for its report, so that the caller who
		// sees err can also see the breaker's count of it.
		rs.report(err)
		return
	}
	if rs.stopWatch != nil {
		rs.stopWatch()
	}
	rs.report(err)
	rs.release()
}

// abandon runs when the caller's context ends before the stream does: it
// gives the bulkhead slot back, and the breaker counts the attempt as the
// unary client would count a call ended so (a cancellation is not counted,
// an expired deadline is DeadlineExceeded).
func (rs *retryStream) abandon() {
	if !rs.finished.CompareAndSwap(false, true) {
		return
	}
	rs.report(status.FromContextError(rs.ctx.Err()).Err())
	rs.release()
}

// release frees the bulkhead slot and ends the context Context returned.
func (rs *retryStream) release() {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.slot.Release()
	if rs.cancelStream != nil {
		rs.cancelStream()
	}
}

// endedStream stands for a retried stream that ended with err before a new
// attempt opened: it answers as a stream that ended with err, with the
// context of the attempt before. It is used by pointer, which Header compares
// with the current stream whatever err's type.
type endedStream struct {
	grpc.ClientStream
	err error
}

func (e *endedStream) Header() (metadata.MD, error) { return nil, nil } // as grpc-go's: RecvMsg tells
func (e *endedStream) Trailer() metadata.MD         { return nil }
func (e *endedStream) CloseSend() error             { return nil }
func (e *endedStream) SendMsg(any) error            { return io.EOF }
func (e *endedStream) RecvMsg(any) error            { return e.err }
