package redisstore

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/idempotency"
)

// DefaultPrefix is the key prefix a Store uses unless WithPrefix says
// otherwise.
const DefaultPrefix = "bulwark:idempotency:"

// Option configures a Store.
type Option func(*Store)

// WithPrefix sets the prefix of every Redis key the Store writes (default
// DefaultPrefix). Stores with different prefixes never see each other's
// records.
func WithPrefix(p string) Option { return func(s *Store) { s.prefix = p } }

// WithClock sets the clock that leases and retention are measured by
// (default: the real clock).
func WithClock(c clock.Clock) Option { return func(s *Store) { s.clock = c } }

// Store is an idempotency.Store on Redis (see the package documentation for
// the record layout and scripts). The zero Store is not usable; call New. It
// is safe for concurrent use, and any number of Stores in any number of
// processes may share one server.
type Store struct {
	client redis.Scripter
	prefix string
	clock  clock.Clock
}

var _ idempotency.Store = (*Store)(nil)

// New returns a Store that keeps its records on client: a *redis.Client,
// *redis.ClusterClient, *redis.Ring or anything else that runs scripts.
func New(client redis.Scripter, opts ...Option) *Store {
	s := &Store{client: client, prefix: DefaultPrefix}
	for _, o := range opts {
		o(s)
	}
	s.clock = cmp.Or(s.clock, clock.Real())
	return s
}

// claimScript: KEYS[1] record; ARGV now, fingerprint, owner, deadline, lease
// (ms). Returns {0} claimed, {1, ms left} in flight, {2, response} completed,
// {3} mismatch. A record whose deadline has passed counts as absent.
var claimScript = redis.NewScript(`
local rec = redis.call('HMGET', KEYS[1], 'd', 'f', 'r')
if rec[1] and tonumber(rec[1]) > tonumber(ARGV[1]) then
  if rec[2] ~= ARGV[2] then return {3} end
  if rec[3] then return {2, rec[3]} end
  return {1, tonumber(rec[1]) - tonumber(ARGV[1])}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'd', ARGV[4], 'f', ARGV[2], 'o', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {0}
`)

// ownedCheck is the fencing test the other scripts share: the record is in
// flight, unexpired, and held by ARGV[2] (ARGV[1] is now).
const ownedCheck = `
local rec = redis.call('HMGET', KEYS[1], 'd', 'o')
if not rec[1] or tonumber(rec[1]) <= tonumber(ARGV[1]) or rec[2] ~= ARGV[2] then return 0 end
`

// completeScript: ARGV now, owner, response, deadline, retention (ms).
var completeScript = redis.NewScript(ownedCheck + `
redis.call('HSET', KEYS[1], 'd', ARGV[4], 'r', ARGV[3])
redis.call('HDEL', KEYS[1], 'o')
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
`)

// releaseScript: ARGV now, owner.
var releaseScript = redis.NewScript(ownedCheck + `
redis.call('DEL', KEYS[1])
return 1
`)

// extendScript: ARGV now, owner, deadline, lease (ms).
var extendScript = redis.NewScript(ownedCheck + `
redis.call('HSET', KEYS[1], 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
`)

func (s *Store) redisKey(k idempotency.Key) string {
	b := make([]byte, 0, len(s.prefix)+2*len(k))
	b = append(b, s.prefix...)
	b = hex.AppendEncode(b, k[:])
	return string(b)
}

// millis converts a duration to whole milliseconds, at least 1 (PEXPIRE
// rejects 0).
func millis(d time.Duration) int64 { return max(1, d.Milliseconds()) }

// Claim implements idempotency.Store.
func (s *Store) Claim(ctx context.Context, key idempotency.Key, fp idempotency.Fingerprint, lease time.Duration) (idempotency.ClaimResult, error) {
	owner := idempotency.NewToken()
	now := s.clock.Now().UnixMilli()
	ms := millis(lease)
	v, err := claimScript.Run(ctx, s.client, []string{s.redisKey(key)},
		now, fp[:], owner[:], now+ms, ms).Slice()
	if err != nil {
		return idempotency.ClaimResult{}, fmt.Errorf("redisstore: claim: %w", err)
	}
	status, _ := v[0].(int64)
	switch {
	case status == 0 && len(v) == 1:
		return idempotency.ClaimResult{Status: idempotency.Claimed, Owner: owner}, nil
	case status == 1 && len(v) == 2:
		left, _ := v[1].(int64)
		return idempotency.ClaimResult{Status: idempotency.InFlight, RetryAfter: time.Duration(left) * time.Millisecond}, nil
	case status == 2 && len(v) == 2:
		enc, _ := v[1].(string)
		resp, err := idempotency.DecodeResponse([]byte(enc))
		if err != nil {
			return idempotency.ClaimResult{}, fmt.Errorf("redisstore: claim: %w", err)
		}
		return idempotency.ClaimResult{Status: idempotency.Completed, Response: resp}, nil
	case status == 3 && len(v) == 1:
		return idempotency.ClaimResult{Status: idempotency.Mismatch}, nil
	}
	return idempotency.ClaimResult{}, fmt.Errorf("redisstore: claim: unexpected reply %v", v)
}

// Complete implements idempotency.Store.
func (s *Store) Complete(ctx context.Context, key idempotency.Key, owner idempotency.Token, resp idempotency.Response, retention time.Duration) error {
	enc, _ := resp.AppendBinary(make([]byte, 0, resp.EncodedLen()))
	now := s.clock.Now().UnixMilli()
	ms := millis(retention)
	return s.owned(completeScript.Run(ctx, s.client, []string{s.redisKey(key)},
		now, owner[:], enc, now+ms, ms), "complete")
}

// Release implements idempotency.Store.
func (s *Store) Release(ctx context.Context, key idempotency.Key, owner idempotency.Token) error {
	now := s.clock.Now().UnixMilli()
	return s.owned(releaseScript.Run(ctx, s.client, []string{s.redisKey(key)}, now, owner[:]), "release")
}

// Extend implements idempotency.Store.
func (s *Store) Extend(ctx context.Context, key idempotency.Key, owner idempotency.Token, lease time.Duration) error {
	now := s.clock.Now().UnixMilli()
	ms := millis(lease)
	return s.owned(extendScript.Run(ctx, s.client, []string{s.redisKey(key)}, now, owner[:], now+ms, ms), "extend")
}

// owned turns a fenced script's 1/0 reply into nil/ErrLeaseLost.
func (s *Store) owned(cmd *redis.Cmd, op string) error {
	n, err := cmd.Int64()
	switch {
	case err != nil:
		if errors.Is(err, redis.Nil) {
			err = errors.New("nil reply")
		}
		return fmt.Errorf("redisstore: %s: %w", op, err)
	case n != 1:
		return idempotency.ErrLeaseLost
	}
	return nil
}
