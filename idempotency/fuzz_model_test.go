package idempotency_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/idempotency"
)

// memRecord is what the model knows of one key. The store may forget a
// completed record early (eviction) but never an in-flight one.
type memRecord struct {
	owner     idempotency.Token
	fp        idempotency.Fingerprint
	until     time.Time // lease end while in flight, retention end once completed
	completed bool
	body      []byte
}

// FuzzMemoryStoreBounds runs random claims, completes, releases, extends
// (by current and by stale owners) and clock moves against a small
// MemoryStore and checks after every operation that it holds at most
// MaxEntries records and MaxBytes bytes, and that its answers agree with a
// model of the Store contract: an unexpired lease is never taken over nor
// evicted, only its owner may finish or extend it, a completed response
// replays unchanged until it expires or is evicted, another fingerprint is
// a mismatch, and a complete succeeds exactly when the unexpired leases
// leave room for it in MaxBytes.
func FuzzMemoryStoreBounds(f *testing.F) {
	f.Add(uint8(3), uint16(2000), []byte{0, 1, 1, 1, 0, 1, 0, 2, 1, 2, 4, 20, 0, 1, 0, 3, 1, 3, 0, 4, 2, 4, 3, 2, 4, 8, 0, 2})
	f.Add(uint8(0), uint16(0), []byte{0, 1, 1, 200, 0, 2, 1, 9, 0, 1, 0, 3, 4, 40, 0, 1})
	f.Add(uint8(63), uint16(65535), []byte{0, 1, 3, 1, 4, 9, 3, 1, 4, 9, 1, 1, 4, 30, 0, 1, 5, 1, 4, 5, 0, 17})
	f.Add(uint8(7), uint16(300), []byte{0, 16, 0, 17, 0, 18, 0, 19, 1, 16, 1, 17, 1, 18, 1, 19, 0, 20, 0, 21, 1, 20})
	f.Add(uint8(63), uint16(16128), []byte{0, 1, 19, 73, 0, 2, 19, 74, 0, 1})
	f.Fuzz(func(t *testing.T, entriesB uint8, bytesB uint16, ops []byte) {
		const lease, retention = 1050 * time.Millisecond, 3050 * time.Millisecond
		maxEntries := 1 + int(entriesB%64)
		maxBytes := int64(idempotency.EntryOverhead) + int64(bytesB)%16384
		clk := clock.NewFake(time.Time{})
		s := idempotency.NewMemoryStore(idempotency.MemoryConfig{MaxEntries: maxEntries, MaxBytes: maxBytes, Clock: clk})
		ctx := context.Background()
		model := map[idempotency.Key]*memRecord{}
		var stale []idempotency.Token
		if len(ops) > 600 {
			ops = ops[:600]
		}
		for i := 0; i+1 < len(ops); i += 2 {
			op, arg := ops[i], ops[i+1]
			key := idempotency.DeriveKey("", "POST", "/", string(rune('a'+arg%24)))
			fp := idempotency.Fingerprint{arg / 24 % 2}
			now := clk.Now()
			rec := model[key]
			live := rec != nil && now.Before(rec.until)
			inFlight := live && !rec.completed
			owner := func() idempotency.Token {
				if op/8%2 == 1 && len(stale) > 0 {
					return stale[int(arg)%len(stale)]
				}
				if rec != nil {
					return rec.owner
				}
				return idempotency.Token{}
			}()
			mine := inFlight && owner == rec.owner
			switch op % 6 {
			case 0:
				res, err := s.Claim(ctx, key, fp, lease)
				switch {
				case inFlight && rec.fp != fp:
					expect(t, i, err == nil && res.Status == idempotency.Mismatch, "mismatch on a lease", res, err)
				case inFlight:
					expect(t, i, err == nil && res.Status == idempotency.InFlight && res.RetryAfter == rec.until.Sub(now),
						"in flight with the lease's time left", res, err)
				case live && rec.fp != fp && !(err == nil && res.Status == idempotency.Claimed):
					expect(t, i, err == nil && res.Status == idempotency.Mismatch || errors.Is(err, idempotency.ErrStoreFull),
						"mismatch on a completed record (unless evicted)", res, err)
				case live && !(err == nil && res.Status == idempotency.Claimed):
					expect(t, i, err == nil && res.Status == idempotency.Completed && bytes.Equal(res.Response.Body, rec.body) ||
						errors.Is(err, idempotency.ErrStoreFull), "the stored response (unless evicted)", res, err)
				default:
					expect(t, i, err == nil && res.Status == idempotency.Claimed || errors.Is(err, idempotency.ErrStoreFull),
						"claimed (absent, expired or evicted)", res, err)
				}
				if err == nil && res.Status == idempotency.Claimed {
					if rec != nil {
						stale = append(stale, rec.owner)
					}
					model[key] = &memRecord{owner: res.Owner, fp: fp, until: now.Add(lease)}
				}
			case 1:
				scale := 4 // bit 4 of op: a body up to 16 KiB, more than a shard's share
				if op/16%2 == 1 {
					scale = 64
				}
				body := bytes.Repeat([]byte{'r'}, int(arg)*scale)
				err := s.Complete(ctx, key, owner, idempotency.Response{Status: 201, Body: body}, retention)
				if !mine {
					expect(t, i, errors.Is(err, idempotency.ErrLeaseLost), "lease lost", nil, err)
					break
				}
				// Everything but the leases can be evicted, in any shard.
				size := int64(idempotency.EntryOverhead + (&idempotency.Response{Status: 201, Body: body}).EncodedLen())
				need := size
				for k, r := range model {
					if k != key && !r.completed && now.Before(r.until) {
						need += idempotency.EntryOverhead
					}
				}
				switch {
				case size > maxBytes:
					expect(t, i, errors.Is(err, idempotency.ErrResponseTooLarge), "too large for an empty store", nil, err)
				case need <= maxBytes:
					expect(t, i, err == nil, "completed (the leases leave room)", nil, err)
				default:
					expect(t, i, errors.Is(err, idempotency.ErrStoreFull), "full (the leases leave no room)", nil, err)
				}
				if err == nil {
					rec.completed, rec.until, rec.body = true, now.Add(retention), body
				}
			case 2:
				err := s.Release(ctx, key, owner)
				if !mine {
					expect(t, i, errors.Is(err, idempotency.ErrLeaseLost), "lease lost", nil, err)
					break
				}
				expect(t, i, err == nil, "released", nil, err)
				delete(model, key)
				stale = append(stale, owner)
			case 3:
				err := s.Extend(ctx, key, owner, lease)
				if !mine {
					expect(t, i, errors.Is(err, idempotency.ErrLeaseLost), "lease lost", nil, err)
					break
				}
				expect(t, i, err == nil, "extended", nil, err)
				rec.until = now.Add(lease)
			default:
				clk.Advance(time.Duration(arg%32) * 100 * time.Millisecond)
			}
			if s.Len() > maxEntries || s.Bytes() > maxBytes {
				t.Fatalf("op %d: %d records, %d bytes; bounds %d, %d", i/2, s.Len(), s.Bytes(), maxEntries, maxBytes)
			}
		}
	})
}

func expect(t *testing.T, i int, ok bool, what string, res any, err error) {
	t.Helper()
	if !ok {
		t.Fatalf("op %d: want %s; got %+v, %v", i/2, what, res, err)
	}
}
