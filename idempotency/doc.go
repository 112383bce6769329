// Package idempotency makes retried requests take effect exactly once, in
// the manner of the IETF Idempotency-Key draft and Stripe's idempotent
// requests: the first request with a key runs and its response is stored; a
// repeat gets the stored response; a repeat while the first still runs is
// told to come back later; the same key with a different request is refused.
//
// The package is transport-free. It holds
//
//   - the Store interface (Claim, Complete, Release, Extend; atomic on every
//     backend, fenced by an owner token per claim) and MemoryStore; the
//     redisstore and pgstore packages hold the shared stores;
//   - key handling: ValidateKey, and DeriveKey, which hashes the key with
//     the caller's scope, the method and the route, so that raw keys never
//     reach a store, a metric or a log, and a key can never replay another
//     principal's response;
//   - ReadFingerprint, which hashes the request while reading its body once;
//   - Response and its compact binary encoding;
//   - Guard, the protocol that the HTTP and gRPC adapters share.
//
// # Mapping outcomes to transports
//
// Adapters call Guard.Begin and map its Outcome as follows, so that HTTP and
// gRPC agree:
//
//	Result             error                     HTTP                                gRPC
//	ResultNew          nil                       run the handler, then Lease.Finish  same
//	ResultReplayed     nil                       stored response,                    stored response,
//	                                             plus Idempotent-Replayed: true      plus metadata idempotent-replayed: true
//	  (NotReplayable)  nil                       409 Conflict,                       AlreadyExists,
//	                                             plus Idempotent-Replayed: true      marked with an ErrorInfo
//	ResultInFlight     *InFlightError            409 Conflict + Retry-After,         Aborted + RetryInfo, pushback,
//	                                             marked Idempotent-In-Flight: true   marked with an ErrorInfo
//	ResultMismatch     ErrMismatch               422 Unprocessable Content           FailedPrecondition
//	ResultMissingKey   ErrMissingKey (required)  400 Bad Request                     InvalidArgument
//	                   nil (not required)        run the handler unprotected         same
//	ResultInvalidKey   ErrInvalidKey             400 Bad Request                     InvalidArgument
//	ResultStoreError   *StoreError (fail closed) 503 Service Unavailable             Unavailable
//	                   nil (fail open)           run the handler unprotected         same
//	(ReadFingerprint)  ErrBodyTooLarge           413 Content Too Large               — (the message is in memory)
//
// The in-flight answer asks the client to come back after the error's
// RetryHint, at most InFlightPoll (one second): by then the first request has
// usually finished and the retry gets its stored response. The HTTP transport
// and the gRPC client interceptor of this module retry it by themselves when
// the request carries an idempotency key.
//
// Outcome.Run reports whether to run the handler. When the handler ran with a
// Lease, the adapter calls Lease.Finish with the response (which stores it or
// releases the key according to WithRemember: HTTP 2xx-4xx are remembered by
// default; the gRPC adapter passes its own rule over gRPC codes) and
// Lease.Release when the handler panicked.
//
// # Time
//
// Leases and retention are measured by each store's clock: MemoryStore's
// MemoryConfig.Clock, and the Clock option of redisstore and pgstore, which
// send the client's time with every operation rather than use the server's.
// Replicas sharing a store therefore need clocks in sync to well under a
// lease (NTP gives milliseconds; leases are seconds), and tests can move a
// fake clock to expire leases and records without sleeping.
package idempotency
