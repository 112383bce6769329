package idempotency

import (
	"cmp"
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bulwark-go/bulwark/clock"
)

// MemoryConfig configures a MemoryStore. Every zero field means the
// documented default.
type MemoryConfig struct {
	// MaxEntries bounds the number of records (in flight and completed).
	// Default 100,000.
	MaxEntries int
	// MaxBytes bounds the memory the records take, counted as a fixed
	// per-record overhead (EntryOverhead) plus each stored response's
	// encoded length. It bounds the whole store: one record may take all
	// of it. Default 64 MiB.
	MaxBytes int64
	// Clock is the time source for leases and retention. Default: the
	// real clock.
	Clock clock.Clock
}

// EntryOverhead is what a MemoryStore counts for one record, before its
// response: the map slot, the record and its place in the expiry queue.
const EntryOverhead = 256

const maxMemoryShards = 32

// MemoryStore is a Store in process memory: the default for a single
// instance, and the reference the other stores are tested against.
//
// Records live in up to 32 shards (fewer for small bounds) chosen by the
// key's first byte, each a map under its own mutex with a FIFO queue of
// records in order of their last deadline change (claim, complete, extend).
// Expired records are treated as absent at once and removed lazily: every
// claim drops a few expired records from the front of its shard's queue.
//
// MaxEntries is divided evenly among the shards; MaxBytes is one budget for
// the whole store, kept in a shared counter. When a claim finds its shard at
// its share of MaxEntries, or a claim or complete finds the store at
// MaxBytes, it removes expired records and evicts the oldest completed ones
// (their replay is lost, so size the store for the traffic over the
// retention period), in queue order. For an entry it looks in its own shard
// only; for bytes, in its own shard first, then in the others, one at a
// time and never holding two shards' locks. Records in flight are never
// evicted; when only they remain the call fails with ErrStoreFull, which
// the Guard treats like any store failure. So any record up to MaxBytes,
// its EntryOverhead included, can be stored; a larger one fails at once with
// ErrResponseTooLarge, evicting nothing. Stored responses are kept encoded
// (one allocation per Complete) and decoded on replay.
//
// The zero value is not usable; call NewMemoryStore. A MemoryStore is safe
// for concurrent use.
type MemoryStore struct {
	clock  clock.Clock
	mask   int
	shards [maxMemoryShards]memShard
	bytes  byteCount // after the shards, whose padding keeps it off their cache lines
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore(cfg MemoryConfig) *MemoryStore {
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = 100_000
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = 64 << 20
	}
	// Use as many shards as the bounds allow each one a few records: the
	// per-shard entry limits add up to no more than MaxEntries, and a
	// shard's share of MaxBytes holds enough records that making room
	// seldom has to look beyond the shard.
	n := maxMemoryShards
	for n > 1 && (cfg.MaxEntries < 4*n || cfg.MaxBytes < int64(n)*16*EntryOverhead) {
		n /= 2
	}
	s := &MemoryStore{clock: cmp.Or(cfg.Clock, clock.Real()), mask: n - 1, bytes: byteCount{max: cfg.MaxBytes}}
	for i := 0; i < n; i++ {
		s.shards[i] = memShard{
			m:          make(map[Key]memEntry),
			total:      &s.bytes,
			maxEntries: cfg.MaxEntries / n,
		}
	}
	return s
}

type memEntry struct {
	fp        Fingerprint
	owner     Token
	deadline  int64 // unix nanoseconds: lease end, or retention end once completed
	seq       uint64
	completed bool
	resp      []byte // encoded Response, once completed
}

func (e *memEntry) size() int64 { return EntryOverhead + int64(len(e.resp)) }

type queueItem struct {
	key Key
	seq uint64
}

type memShard struct {
	mu         sync.Mutex
	m          map[Key]memEntry
	q          []queueItem // q[head:] is the FIFO
	head       int
	seq        uint64
	total      *byteCount // the store's
	maxEntries int
	_          [64]byte // keep shards on separate cache lines
}

// shard returns the index and the shard of key.
func (s *MemoryStore) shard(k Key) (int, *memShard) {
	i := int(k[0]) & s.mask
	return i, &s.shards[i]
}

// byteCount is the bytes a MemoryStore's records take, plus those reserved
// by calls about to add to a record; it never exceeds max.
type byteCount struct {
	n   atomic.Int64
	max int64
}

// reserve adds n to the count if the sum stays within max, and reports
// whether it did.
func (c *byteCount) reserve(n int64) bool {
	for {
		b := c.n.Load()
		if b+n > c.max {
			return false
		}
		if c.n.CompareAndSwap(b, b+n) {
			return true
		}
	}
}

// release takes n back off the count.
func (c *byteCount) release(n int64) { c.n.Add(-n) }

// Len returns the number of records held, including expired ones not yet
// removed.
func (s *MemoryStore) Len() int {
	n := 0
	for i := 0; i <= s.mask; i++ {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}

// Bytes returns the memory the records take, as counted against MaxBytes,
// including expired records not yet removed. It never exceeds MaxBytes. It
// is exact when no call is in progress; while calls run, it also counts the
// bytes they have reserved for the records they are about to add or
// complete.
func (s *MemoryStore) Bytes() int64 { return s.bytes.n.Load() }

// Claim implements Store.
func (s *MemoryStore) Claim(ctx context.Context, key Key, fp Fingerprint, lease time.Duration) (ClaimResult, error) {
	if err := ctx.Err(); err != nil {
		return ClaimResult{}, err
	}
	tok := NewToken()
	now := s.clock.Now().UnixNano()
	i, sh := s.shard(key)
	reserved := false // the new record's bytes, reserved while sh was unlocked
	for {
		sh.mu.Lock()
		if e, ok := sh.m[key]; ok {
			if e.deadline > now {
				sh.mu.Unlock()
				if reserved {
					s.bytes.release(EntryOverhead)
				}
				switch {
				case e.fp != fp:
					return ClaimResult{Status: Mismatch}, nil
				case e.completed:
					resp, err := DecodeResponse(e.resp)
					if err != nil {
						return ClaimResult{}, err
					}
					return ClaimResult{Status: Completed, Response: resp}, nil
				default:
					return ClaimResult{Status: InFlight, RetryAfter: time.Duration(e.deadline - now)}, nil
				}
			}
			sh.remove(key, &e)
		}
		sh.sweep(now, 4)
		if !sh.makeRoom(now, true, 0) {
			sh.mu.Unlock()
			if reserved {
				s.bytes.release(EntryOverhead)
			}
			return ClaimResult{}, ErrStoreFull
		}
		if reserved || sh.makeRoom(now, false, EntryOverhead) {
			break
		}
		// Make room in the other shards with sh unlocked, then look at
		// the key again: another claim may have taken it meanwhile.
		sh.mu.Unlock()
		if !s.makeRoomElsewhere(i, now, EntryOverhead) {
			return ClaimResult{}, ErrStoreFull
		}
		reserved = true
	}
	sh.seq++
	sh.m[key] = memEntry{fp: fp, owner: tok, deadline: deadline(now, lease), seq: sh.seq}
	sh.push(queueItem{key: key, seq: sh.seq})
	sh.mu.Unlock()
	return ClaimResult{Status: Claimed, Owner: tok}, nil
}

// Complete implements Store. It returns ErrResponseTooLarge when
// EntryOverhead plus resp's encoded length exceed MaxBytes, and ErrStoreFull
// when records in flight leave no room for resp.
func (s *MemoryStore) Complete(ctx context.Context, key Key, owner Token, resp Response, retention time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	enc, _ := resp.AppendBinary(make([]byte, 0, resp.EncodedLen()))
	size := int64(len(enc))
	now := s.clock.Now().UnixNano()
	i, sh := s.shard(key)
	var e memEntry
	reserved := false // size, reserved while sh was unlocked
	for {
		sh.mu.Lock()
		var ok bool
		if e, ok = sh.owned(key, owner, now); !ok {
			sh.mu.Unlock()
			if reserved {
				s.bytes.release(size)
			}
			return ErrLeaseLost
		}
		if EntryOverhead+size > s.bytes.max {
			sh.mu.Unlock()
			return ErrResponseTooLarge // evicting everything would not make room
		}
		if reserved || sh.makeRoom(now, false, size) {
			break
		}
		// Make room in the other shards with sh unlocked, then check the
		// lease again: it may have lapsed and passed to another owner.
		sh.mu.Unlock()
		if !s.makeRoomElsewhere(i, now, size) {
			return ErrStoreFull
		}
		reserved = true
	}
	sh.seq++
	e.completed = true
	e.resp = enc
	e.deadline = deadline(now, retention)
	e.seq = sh.seq
	sh.m[key] = e
	sh.push(queueItem{key: key, seq: sh.seq})
	sh.mu.Unlock()
	return nil
}

// Release implements Store.
func (s *MemoryStore) Release(ctx context.Context, key Key, owner Token) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := s.clock.Now().UnixNano()
	_, sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e, ok := sh.owned(key, owner, now)
	if !ok {
		return ErrLeaseLost
	}
	sh.remove(key, &e)
	return nil
}

// Extend implements Store.
func (s *MemoryStore) Extend(ctx context.Context, key Key, owner Token, lease time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := s.clock.Now().UnixNano()
	_, sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e, ok := sh.owned(key, owner, now)
	if !ok {
		return ErrLeaseLost
	}
	// Re-queue the record, so that the queue stays in order of the last
	// deadline change and a long-running request at its front does not
	// keep sweep from reaching the expired records behind it.
	sh.seq++
	e.deadline = deadline(now, lease)
	e.seq = sh.seq
	sh.m[key] = e
	sh.push(queueItem{key: key, seq: sh.seq})
	return nil
}

// deadline returns now+d in unix nanoseconds, saturated to the int64 range:
// a huge d (say math.MaxInt64) must mean "as long as can be counted", not
// wrap around to a deadline in the past.
func deadline(now int64, d time.Duration) int64 {
	switch {
	case d > 0 && now > math.MaxInt64-int64(d):
		return math.MaxInt64
	case d < 0 && now < math.MinInt64-int64(d):
		return math.MinInt64
	}
	return now + int64(d)
}

// owned returns key's record if owner holds an unexpired lease on it.
func (sh *memShard) owned(key Key, owner Token, now int64) (memEntry, bool) {
	e, ok := sh.m[key]
	if !ok || e.completed || e.owner != owner || e.deadline <= now {
		return memEntry{}, false
	}
	return e, true
}

func (sh *memShard) remove(key Key, e *memEntry) {
	delete(sh.m, key)
	sh.total.release(e.size())
}

func (sh *memShard) push(it queueItem) {
	if len(sh.q) == cap(sh.q) && sh.head > 0 {
		n := copy(sh.q, sh.q[sh.head:])
		clear(sh.q[n:])
		sh.q = sh.q[:n]
		sh.head = 0
	}
	sh.q = append(sh.q, it)
	// Items of removed or re-queued records are dropped lazily; when they
	// outnumber the live ones, drop them all so the queue stays bounded.
	if len(sh.q)-sh.head > 2*sh.maxEntries+16 {
		sh.compact()
	}
}

func (sh *memShard) pop() (queueItem, bool) {
	if sh.head == len(sh.q) {
		return queueItem{}, false
	}
	it := sh.q[sh.head]
	sh.head++
	if sh.head == len(sh.q) {
		sh.q = sh.q[:0]
		sh.head = 0
	}
	return it, true
}

// live returns the record it stands for, if it is not stale.
func (sh *memShard) live(it queueItem) (memEntry, bool) {
	e, ok := sh.m[it.key]
	return e, ok && e.seq == it.seq
}

func (sh *memShard) compact() {
	kept := sh.q[:0]
	for _, it := range sh.q[sh.head:] {
		if _, ok := sh.live(it); ok {
			kept = append(kept, it)
		}
	}
	clear(sh.q[len(kept):])
	sh.q = kept
	sh.head = 0
}

// sweep removes up to n expired or stale items from the queue's front,
// stopping at the first live record.
func (sh *memShard) sweep(now int64, n int) {
	for ; n > 0 && sh.head < len(sh.q); n-- {
		it := sh.q[sh.head]
		if e, ok := sh.live(it); ok {
			if e.deadline > now {
				return
			}
			sh.remove(it.key, &e)
		}
		sh.pop()
	}
}

// makeRoom removes expired records and evicts the oldest completed ones, in
// queue order, until the shard has room for a new record (when entry is set)
// and bytes more bytes (if any) are reserved in the store's count. Records
// in flight are rotated to the back. It reports whether it made room; when
// it did not, it reserved nothing.
func (sh *memShard) makeRoom(now int64, entry bool, bytes int64) bool {
	for budget := len(sh.q) - sh.head; (entry && len(sh.m) >= sh.maxEntries) || (bytes > 0 && !sh.total.reserve(bytes)); budget-- {
		if budget == 0 {
			return false
		}
		it, ok := sh.pop()
		if !ok {
			return false
		}
		e, ok := sh.live(it)
		if !ok {
			continue
		}
		if e.completed || e.deadline <= now {
			sh.remove(it.key, &e)
			continue
		}
		sh.q = append(sh.q, it) // in flight: keep it, look at the next one
	}
	return true
}

// makeRoomElsewhere reserves bytes in the store's count, making room as
// makeRoom does in the shards after the i-th, one at a time, and at last in
// the i-th again. The caller holds no shard's lock. It reports whether it
// reserved the bytes.
func (s *MemoryStore) makeRoomElsewhere(i int, now int64, bytes int64) bool {
	for j := 1; j <= s.mask+1; j++ {
		sh := &s.shards[(i+j)&s.mask]
		sh.mu.Lock()
		ok := sh.makeRoom(now, false, bytes)
		sh.mu.Unlock()
		if ok {
			return true
		}
	}
	return false
}
