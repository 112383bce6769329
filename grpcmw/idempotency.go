package grpcmw

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/bulwark-go/bulwark/idempotency"
)

// idempotent runs one unary call under the Guard and reports whether the
// handler ran. The stored result is the
// status code and, for OK, the response message in its protobuf encoding or,
// for any other code, the google.rpc.Status (code, message, details) in its
// protobuf encoding. Response header metadata set by the handler is not
// stored; a replay carries only idempotent-replayed: true.
func (s *server) idempotent(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, ran bool, err error) {
	r := idempotency.Request{Method: info.FullMethod}
	if v := metadata.ValueFromIncomingContext(ctx, IdempotencyKeyHeader); len(v) > 0 {
		r.Key = v[0]
	}
	if r.Key != "" {
		fp, err := fingerprint(info.FullMethod, req)
		if err != nil {
			return nil, false, status.Error(codes.InvalidArgument, "grpcmw: cannot fingerprint the request: "+err.Error())
		}
		r.Fingerprint = fp
		if s.scope != nil {
			r.Scope = s.scope(ctx)
		}
	}
	out, err := s.guard.Begin(ctx, r)
	if err != nil {
		return nil, false, s.guardError(ctx, err)
	}
	if out.Result == idempotency.ResultReplayed {
		resp, err = s.replay(ctx, info.FullMethod, out.Response)
		return resp, false, err
	}
	if out.Lease == nil { // no key (not required) or a store failure tolerated
		resp, err = handler(ctx, req)
		return resp, true, err
	}
	lease := out.Lease
	bg := context.WithoutCancel(ctx)
	finished := false
	defer func() {
		if !finished { // the handler panicked: let a retry run it again
			_ = lease.Release(bg)
		}
	}()
	resp, herr := handler(ctx, req)
	finished = true
	code := codeOf(herr)
	if !s.remember(code) {
		_ = lease.Release(bg)
		return resp, true, herr
	}
	stored, merr := s.encode(info.FullMethod, code, resp, herr)
	if merr != nil || len(stored.Body) > s.maxStored {
		// The result cannot be replayed, but the handler ran: a repeat is
		// told so rather than running it again.
		stored = idempotency.NotReplayable(int(code))
	}
	// A failure to store is not the caller's concern: the handler's effect
	// happened and its result is returned. The key stays claimed until its
	// lease lapses, so a retry in that time gets Aborted, not a second run; a
	// result the store can never hold is recorded as not replayable by the
	// Guard (idempotency.ErrResponseTooLarge).
	_ = lease.Complete(bg, stored)
	return resp, true, herr
}

func fingerprint(method string, req any) (idempotency.Fingerprint, error) {
	m, ok := req.(proto.Message)
	if !ok {
		return idempotency.Fingerprint{}, nil
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return idempotency.Fingerprint{}, err
	}
	fp, _, err := idempotency.ReadFingerprint(method, "", nil, bytes.NewReader(b), int64(len(b))+1, nil)
	return fp, err
}

func (s *server) encode(method string, code codes.Code, resp any, herr error) (idempotency.Response, error) {
	r := idempotency.Response{Status: int(code)}
	var err error
	if code == codes.OK {
		m, ok := resp.(proto.Message)
		if !ok {
			return r, errors.New("grpcmw: response is not a protobuf message")
		}
		s.types.learn(method, m)
		r.Body, err = proto.Marshal(m)
	} else {
		r.Body, err = proto.Marshal(status.Convert(herr).Proto())
	}
	return r, err
}

func (s *server) replay(ctx context.Context, method string, r idempotency.Response) (any, error) {
	_ = grpc.SetHeader(ctx, metadata.Pairs(ReplayedHeader, "true"))
	if !r.Replayable() {
		st := status.New(codes.AlreadyExists, "grpcmw: a call with this idempotency key was already processed; its result was not stored and cannot be replayed")
		if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: NotReplayableReason, Domain: ErrorDomain}); err == nil {
			st = d
		}
		return nil, st.Err()
	}
	if codes.Code(r.Status) != codes.OK {
		var sp spb.Status
		if err := proto.Unmarshal(r.Body, &sp); err != nil {
			return nil, status.Error(codes.Internal, "grpcmw: stored idempotent result is corrupt")
		}
		return nil, status.ErrorProto(&sp)
	}
	mt := s.types.lookup(method)
	if mt == nil {
		return nil, status.Error(codes.Internal, "grpcmw: unknown response type of "+method+"; cannot replay")
	}
	m := mt.New().Interface()
	if err := proto.Unmarshal(r.Body, m); err != nil {
		return nil, status.Error(codes.Internal, "grpcmw: stored idempotent result is corrupt")
	}
	return m, nil
}

func (s *server) guardError(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, idempotency.ErrMissingKey), errors.Is(err, idempotency.ErrInvalidKey):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, idempotency.ErrMismatch):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, idempotency.ErrInFlight):
		return s.reject(ctx, nil, codes.Aborted, err, nil)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		if ctx.Err() != nil {
			return status.FromContextError(ctx.Err()).Err()
		}
	}
	// The cause stays on the server: it may name the store's hosts.
	return status.Error(codes.Unavailable, "grpcmw: idempotency store unavailable")
}

// typeCache maps full method names to their response message types, for
// replays: from the global protobuf registry, where generated code registers
// every service, or else from a response the handler returned earlier.
type typeCache struct{ m sync.Map }

func (c *typeCache) learn(method string, m proto.Message) {
	if _, ok := c.m.Load(method); !ok {
		c.m.Store(method, m.ProtoReflect().Type())
	}
}

func (c *typeCache) lookup(method string) protoreflect.MessageType {
	if mt, ok := c.m.Load(method); ok {
		return mt.(protoreflect.MessageType)
	}
	svc, name, ok := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	if !ok {
		return nil
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
	if err != nil {
		return nil
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil
	}
	md := sd.Methods().ByName(protoreflect.Name(name))
	if md == nil {
		return nil
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
	if err != nil {
		return nil
	}
	c.m.Store(method, mt)
	return mt
}
