package grpcmw

import (
	"context"
	"errors"
	"math"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bulwark-go/bulwark"
	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/ratelimit"
)

// PushbackKey is the trailer in which a server asks the client to wait before
// retrying, in milliseconds (gRFC A6). grpc-go's built-in retry reads it from
// trailers-only responses; this package's client reads it from any trailer.
const PushbackKey = "grpc-retry-pushback-ms"

// IdempotencyKeyHeader is the metadata field that carries a call's
// idempotency key.
const IdempotencyKeyHeader = "idempotency-key"

// The google.rpc.ErrorInfo that marks the in-flight answer of
// [WithIdempotency] (Aborted: the first call with this key still runs), so
// that a client can tell it from an Aborted of the handler's own. The
// client interceptor retries a call with an idempotency key only on this
// mark, never on the code alone.
const (
	ErrorDomain    = "bulwark-go.github.io"
	InFlightReason = "IDEMPOTENCY_IN_FLIGHT"
)

// NotReplayableReason is the google.rpc.ErrorInfo reason, in [ErrorDomain],
// of the answer to a repeat of a call whose result was not stored (larger
// than [WithMaxStoredResponse] or than the store holds): AlreadyExists, the
// call was processed and does not run again, but its result cannot be sent.
const NotReplayableReason = "IDEMPOTENCY_NOT_REPLAYABLE"

// ReplayedHeader is the response header metadata field, set to "true", that
// marks a result replayed from the idempotency store.
const ReplayedHeader = "idempotent-replayed"

// PreviousAttemptsHeader is the metadata field a retried attempt carries: the
// number of attempts before it (gRFC A6).
const PreviousAttemptsHeader = "grpc-previous-rpc-attempts"

// rejection builds the status of a call a primitive refused: code, the
// primitive's message, a RetryInfo detail when the error carries a retry-after
// hint and, for a rate limit, a QuotaFailure detail.
func rejection(code codes.Code, err error, quota *ratelimit.Decision) (*status.Status, time.Duration) {
	st := status.New(code, err.Error())
	h, _ := bulwark.HintOf(err)
	var details []protoadapt.MessageV1
	if h.RetryAfter > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(h.RetryAfter)})
	}
	if errors.Is(err, idempotency.ErrInFlight) {
		details = append(details, &errdetails.ErrorInfo{Reason: InFlightReason, Domain: ErrorDomain})
	}
	if quota != nil {
		details = append(details, &errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{
			Subject: "policy:" + quota.Policy,
			Description: strconv.Itoa(quota.Limit) + " requests per " + quota.Window.String() +
				" exceeded; retry after " + quota.RetryAfter.String(),
		}}})
	}
	if len(details) > 0 {
		if d, derr := st.WithDetails(details...); derr == nil {
			st = d
		}
	}
	return st, h.RetryAfter
}

// pushbackMD returns the trailer that carries d as pushback, rounded up to
// whole milliseconds so that a client that obeys it never comes back early.
func pushbackMD(d time.Duration) metadata.MD {
	ms := (d + time.Millisecond - 1) / time.Millisecond
	return metadata.Pairs(PushbackKey, strconv.FormatInt(int64(ms), 10))
}

const maxPushbackMillis = math.MaxInt64 / int64(time.Millisecond)

// serverHint reads what a failed attempt's status and trailer say about
// retrying: the pushback trailer first (gRFC A6: a negative or malformed value
// means do not retry), then a RetryInfo detail.
func serverHint(st *status.Status, trailer metadata.MD) (bulwark.Hint, bool) {
	if v := trailer.Get(PushbackKey); len(v) > 0 {
		ms, err := strconv.ParseInt(v[0], 10, 64)
		if err != nil || ms < 0 {
			return bulwark.Hint{NoRetry: true}, true
		}
		if ms > maxPushbackMillis { // beyond time.Duration: as long as it can say
			return bulwark.Hint{RetryAfter: math.MaxInt64}, true
		}
		return bulwark.Hint{RetryAfter: time.Duration(ms) * time.Millisecond}, true
	}
	if st == nil || len(st.Proto().GetDetails()) == 0 {
		return bulwark.Hint{}, false
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			if delay := ri.GetRetryDelay().AsDuration(); delay > 0 {
				return bulwark.Hint{RetryAfter: delay}, true
			}
		}
	}
	return bulwark.Hint{}, false
}

// localError is a client-side rejection (breaker open, bulkhead full, limiter)
// as the gRPC status error a caller expects, that still matches the
// primitive's sentinel with errors.Is and carries its hint.
type localError struct {
	code codes.Code
	err  error
}

func (e *localError) Error() string {
	return "rpc error: code = " + e.code.String() + " desc = " + e.err.Error()
}
func (e *localError) Unwrap() error { return e.err }

// GRPCStatus makes status.FromError and status.Code see the rejection's code.
func (e *localError) GRPCStatus() *status.Status {
	st, _ := rejection(e.code, e.err, nil)
	return st
}

// codeOf returns the status code of err without allocating for status errors.
func codeOf(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	type grpcStatus interface{ GRPCStatus() *status.Status }
	if gs, ok := err.(grpcStatus); ok {
		if st := gs.GRPCStatus(); st != nil {
			return st.Code()
		}
		return codes.Unknown // as status.Code says
	}
	if errors.Is(err, context.Canceled) {
		return codes.Canceled
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return codes.DeadlineExceeded
	}
	return status.Code(err)
}
