// Package bulwark is the shared core of the bulwark resilience toolkit.
//
// The primitives live in their own packages — [github.com/bulwark-go/bulwark/breaker],
// retry, bulkhead, ratelimit and idempotency — and adapters for net/http and
// gRPC live in httpmw and grpcmw. This package holds what they share:
//
//   - [Policy], anything that runs a function under a resilience rule, and
//     [Chain] and [Get] to compose policies and to call functions that return
//     a value;
//   - [Hint] and [HintOf], the vocabulary rejection errors use to say when, or
//     whether, a failed call may be retried, so that an adapter can set
//     Retry-After or gRPC pushback for any primitive without knowing which one
//     refused the call;
//   - [Permanent], the conventional way to say "do not retry this".
package bulwark
