// Package redisstore is an idempotency.Store on Redis, through
// github.com/redis/go-redis/v9, for replicas that must agree on which
// request runs.
//
// # Records
//
// Each key is one Redis hash named prefix + hex(idempotency.Key) (the raw
// client key never reaches Redis) with the fields
//
//	d  deadline, Unix milliseconds: the lease end while in flight, the
//	   retention end once completed
//	f  the request fingerprint (32 bytes)
//	o  the owner token (16 bytes), while in flight
//	r  the response in idempotency.Response's binary encoding, once completed
//
// and a native TTL (PEXPIRE) equal to the lease or the retention, so Redis
// drops abandoned and expired records by itself.
//
// # Operations
//
// Claim, Complete, Release and Extend are each one Lua script, run with
// EVALSHA (one round trip; the first call after the server lost its script
// cache costs one more, for the EVAL that reloads it). Complete, Release and
// Extend act only when the record still carries the caller's owner token and
// its deadline has not passed: that is the fencing that keeps a stale owner
// from overwriting its successor. Each script touches one key, so the store
// works on Redis Cluster too.
//
// # Time
//
// Deadlines are compared with the time of the Store's clock (WithClock),
// sent with every call, not with the server's; see the idempotency package
// documentation. The native TTL, set from the same durations, only garbage-
// collects.
//
// # Timeouts
//
// The idempotency.Guard bounds every operation with a context deadline.
// go-redis applies context deadlines to network reads and writes only when
// the client's Options.ContextTimeoutEnabled is true; set it, or a hung
// server holds a request for the client's ReadTimeout instead.
package redisstore
