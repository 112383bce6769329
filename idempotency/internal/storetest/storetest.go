// Package storetest is the conformance suite every idempotency.Store runs:
// the memory store, redisstore and pgstore call Run with a Backend, so the
// three are held to one contract.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/idempotency"
)

// Backend describes the store under test.
type Backend struct {
	// Open prepares an empty namespace (key prefix, table) for one test and
	// returns a function that makes store instances over it, each reading
	// time from clk. Instances from one Open share their records, like
	// replicas sharing one server; for the memory store it returns the one
	// store every time. Cleanup belongs to t.
	Open func(t *testing.T, clk clock.Clock) func() idempotency.Store
	// Dial, when set, returns a store over a fresh namespace that reaches
	// its server at addr (host:port) instead of Target, for the store-down
	// tests.
	Dial func(t *testing.T, clk clock.Clock, addr string) idempotency.Store
	// Target is the real server's host:port, which Dial's proxy forwards to.
	Target string
}

const (
	lease     = 30 * time.Second
	retention = time.Hour
)

// Run runs the conformance suite as subtests of t.
func Run(t *testing.T, b Backend) {
	tests := []struct {
		name string
		fn   func(*testing.T, Backend)
	}{
		{"ClaimStates", testClaimStates},
		{"ResponseRoundTrip", testResponseRoundTrip},
		{"ConcurrentClaimsRunOnce", testConcurrent},
		{"Replicas", testReplicas},
		{"Mismatch", testMismatch},
		{"Keys", testKeys},
		{"LeaseExpiryFencing", testLeaseExpiry},
		{"ConcurrentTakeover", testConcurrentTakeover},
		{"Extend", testExtend},
		{"RenewalKeepsLongRequestSingle", testRenewal},
		{"ReleaseAndRemember", testRelease},
		{"ScopeIsolation", testScope},
		{"RetentionExpiry", testRetention},
		{"CanceledContext", testCanceled},
		{"StoreDown", testStoreDown},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, b)
		})
	}
}

type env struct {
	clk  *clock.Fake
	open func() idempotency.Store
}

func newEnv(t *testing.T, b Backend) env {
	clk := clock.NewFake(time.Time{})
	return env{clk: clk, open: b.Open(t, clk)}
}

func (e env) guard(s idempotency.Store, opts ...idempotency.Option) *idempotency.Guard {
	base := []idempotency.Option{
		idempotency.WithClock(e.clk),
		idempotency.WithLease(lease),
		idempotency.WithRetention(retention),
		idempotency.WithStoreTimeout(10 * time.Second),
	}
	return idempotency.New("test", s, append(base, opts...)...)
}

var seq atomic.Int64

// key returns a key unique to this process run.
func key(t *testing.T) idempotency.Key {
	return idempotency.DeriveKey(t.Name(), "POST", "/orders", fmt.Sprint(seq.Add(1)))
}

func fp(s string) idempotency.Fingerprint {
	f, _, err := idempotency.ReadFingerprint("POST", "/orders", nil, strings.NewReader(s), 0, nil)
	if err != nil {
		panic(err)
	}
	return f
}

func request(scope, k, body string) idempotency.Request {
	return idempotency.Request{Scope: scope, Method: "POST", Route: "/orders", Key: k, Fingerprint: fp(body)}
}

func response(status int, body string) idempotency.Response {
	return idempotency.Response{
		Status: status,
		Header: []idempotency.Field{{Name: "Content-Type", Value: "application/json"}, {Name: "Location", Value: "/orders/1"}},
		Body:   []byte(body),
	}
}

var bg = context.Background()

func claim(t *testing.T, s idempotency.Store, k idempotency.Key, f idempotency.Fingerprint) idempotency.ClaimResult {
	t.Helper()
	r, err := s.Claim(bg, k, f, lease)
	require.NoError(t, err)
	return r
}

func testClaimStates(t *testing.T, b Backend) {
	e := newEnv(t, b)
	s := e.open()
	k, a, other := key(t), fp("a"), fp("b")

	r := claim(t, s, k, a)
	require.Equal(t, idempotency.Claimed, r.Status)
	require.NotEqual(t, idempotency.Token{}, r.Owner)
	owner := r.Owner

	e.clk.Advance(1500 * time.Millisecond)
	r = claim(t, s, k, a)
	require.Equal(t, idempotency.InFlight, r.Status)
	require.Equal(t, lease-1500*time.Millisecond, r.RetryAfter)
	require.Equal(t, idempotency.Mismatch, claim(t, s, k, other).Status)

	want := response(201, `{"id":1}`)
	require.NoError(t, s.Complete(bg, k, owner, want, retention))
	r = claim(t, s, k, a)
	require.Equal(t, idempotency.Completed, r.Status)
	require.Equal(t, want, r.Response)
	require.Equal(t, idempotency.Mismatch, claim(t, s, k, other).Status)

	// A completed record has no owner any more.
	require.ErrorIs(t, s.Complete(bg, k, owner, want, retention), idempotency.ErrLeaseLost)
	require.ErrorIs(t, s.Release(bg, k, owner), idempotency.ErrLeaseLost)
	require.ErrorIs(t, s.Extend(bg, k, owner, lease), idempotency.ErrLeaseLost)
	// Operations on a key nobody claimed.
	unknown := key(t)
	require.ErrorIs(t, s.Complete(bg, unknown, owner, want, retention), idempotency.ErrLeaseLost)
	require.ErrorIs(t, s.Release(bg, unknown, owner), idempotency.ErrLeaseLost)
	require.ErrorIs(t, s.Extend(bg, unknown, owner, lease), idempotency.ErrLeaseLost)
}

func testResponseRoundTrip(t *testing.T, b Backend) {
	e := newEnv(t, b)
	s := e.open()
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<14) // 256 KiB
	for i, want := range []idempotency.Response{
		{Status: 204},
		{Status: 0, Body: []byte{0, 1, 2, 0xff}},
		{Status: 409, Header: []idempotency.Field{{Name: "A", Value: ""}, {Name: "a", Value: "x\x00y"}, {Name: "A", Value: "2"}}},
		{Status: 200, Header: []idempotency.Field{{Name: "Content-Type", Value: "application/octet-stream"}}, Body: big},
	} {
		k, f := key(t), fp(fmt.Sprint(i))
		r := claim(t, s, k, f)
		require.Equal(t, idempotency.Claimed, r.Status)
		require.NoError(t, s.Complete(bg, k, r.Owner, want, retention))
		got := claim(t, s, k, f)
		require.Equal(t, idempotency.Completed, got.Status)
		require.Equal(t, want, got.Response, "response %d", i)
	}
}

// testConcurrent: 100 concurrent requests with one key, spread over two
// store instances and two guards; the function runs once.
func testConcurrent(t *testing.T, b Backend) {
	e := newEnv(t, b)
	guards := []*idempotency.Guard{e.guard(e.open()), e.guard(e.open())}
	const n = 100
	var (
		runs    atomic.Int32
		results [n]idempotency.Result
		errs    [n]error
		wg      sync.WaitGroup
		others  sync.WaitGroup
	)
	release := make(chan struct{})
	others.Add(n - 1)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, out, err := guards[i%2].Do(bg, request("s", "k-100", "body"), func(context.Context) (idempotency.Response, error) {
				runs.Add(1)
				<-release // hold the lease until every other request has had its answer
				return response(201, "created"), nil
			})
			results[i], errs[i] = out.Result, err
			if out.Result != idempotency.ResultNew {
				others.Done()
			}
		}()
	}
	done := make(chan struct{})
	go func() { others.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("requests did not finish")
	}
	close(release)
	wg.Wait()
	require.EqualValues(t, 1, runs.Load())
	count := map[idempotency.Result]int{}
	for i, r := range results {
		count[r]++
		switch r {
		case idempotency.ResultNew:
			require.NoError(t, errs[i])
		case idempotency.ResultInFlight:
			require.ErrorIs(t, errs[i], idempotency.ErrInFlight)
		default:
			t.Fatalf("request %d: result %v, err %v", i, r, errs[i])
		}
	}
	require.Equal(t, 1, count[idempotency.ResultNew])
	require.Equal(t, n-1, count[idempotency.ResultInFlight])

	// Afterwards every replica replays.
	for _, g := range guards {
		resp, out, err := g.Do(bg, request("s", "k-100", "body"), func(context.Context) (idempotency.Response, error) {
			t.Error("ran again")
			return idempotency.Response{}, nil
		})
		require.NoError(t, err)
		require.Equal(t, idempotency.ResultReplayed, out.Result)
		require.Equal(t, response(201, "created"), resp)
	}
}

func testReplicas(t *testing.T, b Backend) {
	e := newEnv(t, b)
	a, c := e.guard(e.open()), e.guard(e.open())
	req := request("s", "replica-key", "body")
	out, err := a.Begin(bg, req)
	require.NoError(t, err)
	require.Equal(t, idempotency.ResultNew, out.Result)

	_, err = c.Begin(bg, req)
	var inflight *idempotency.InFlightError
	require.ErrorAs(t, err, &inflight)
	require.Equal(t, lease, inflight.RetryAfter)

	require.NoError(t, out.Lease.Finish(bg, response(200, "ok")))
	out2, err := c.Begin(bg, req)
	require.NoError(t, err)
	require.Equal(t, idempotency.ResultReplayed, out2.Result)
	require.Equal(t, response(200, "ok"), out2.Response)
}

func testMismatch(t *testing.T, b Backend) {
	e := newEnv(t, b)
	g := e.guard(e.open())
	out, err := g.Begin(bg, request("s", "mm", "one"))
	require.NoError(t, err)
	_, err = g.Begin(bg, request("s", "mm", "two"))
	require.ErrorIs(t, err, idempotency.ErrMismatch)
	require.NoError(t, out.Lease.Complete(bg, response(200, "one")))
	out, err = g.Begin(bg, request("s", "mm", "two"))
	require.ErrorIs(t, err, idempotency.ErrMismatch)
	require.Equal(t, idempotency.ResultMismatch, out.Result)
	require.False(t, out.Run())
}

func testKeys(t *testing.T, b Backend) {
	e := newEnv(t, b)
	s := e.open()
	required := e.guard(s, idempotency.WithRequired(true))
	optional := e.guard(s)

	out, err := required.Begin(bg, request("s", "", "x"))
	require.ErrorIs(t, err, idempotency.ErrMissingKey)
	require.Equal(t, idempotency.ResultMissingKey, out.Result)
	require.False(t, out.Run())

	out, err = optional.Begin(bg, request("s", "", "x"))
	require.NoError(t, err)
	require.True(t, out.Run())
	require.Nil(t, out.Lease)

	for _, bad := range []string{
		strings.Repeat("k", 256), "with space", "tab\tkey", "nl\n", "del\x7f", "nul\x00", "caf\u00e9", "\u4f60\u597d",
	} {
		for _, g := range []*idempotency.Guard{required, optional} {
			out, err := g.Begin(bg, request("s", bad, "x"))
			require.ErrorIs(t, err, idempotency.ErrInvalidKey, "%q", bad)
			require.Equal(t, idempotency.ResultInvalidKey, out.Result)
			require.False(t, out.Run())
		}
	}
	out, err = required.Begin(bg, request("s", strings.Repeat("k", 255), "x"))
	require.NoError(t, err)
	require.NoError(t, out.Lease.Release(bg))
}

// testLeaseExpiry: the owner stops renewing (it crashed); after the lease
// the key is claimable, and the stale owner can no longer complete, release
// or extend it.
func testLeaseExpiry(t *testing.T, b Backend) {
	e := newEnv(t, b)
	s1, s2 := e.open(), e.open()
	k, f := key(t), fp("x")
	stale := claim(t, s1, k, f)
	require.Equal(t, idempotency.Claimed, stale.Status)

	e.clk.Advance(lease - time.Millisecond)
	require.Equal(t, idempotency.InFlight, claim(t, s2, k, f).Status)
	e.clk.Advance(time.Millisecond)

	// Lapsed but not yet taken over: the owner has lost it all the same.
	require.ErrorIs(t, s1.Extend(bg, k, stale.Owner, lease), idempotency.ErrLeaseLost)

	fresh := claim(t, s2, k, f)
	require.Equal(t, idempotency.Claimed, fresh.Status)
	require.NotEqual(t, stale.Owner, fresh.Owner)

	require.ErrorIs(t, s1.Complete(bg, k, stale.Owner, response(200, "stale"), retention), idempotency.ErrLeaseLost)
	require.ErrorIs(t, s1.Release(bg, k, stale.Owner), idempotency.ErrLeaseLost)
	require.ErrorIs(t, s1.Extend(bg, k, stale.Owner, lease), idempotency.ErrLeaseLost)
	require.Equal(t, idempotency.InFlight, claim(t, s1, k, f).Status)

	require.NoError(t, s2.Complete(bg, k, fresh.Owner, response(200, "fresh"), retention))
	r := claim(t, s1, k, f)
	require.Equal(t, idempotency.Completed, r.Status)
	require.Equal(t, "fresh", string(r.Response.Body))

	// Through a Guard whose process stalled past its lease (a long GC
	// pause, a frozen VM): its renewal fires too late, another replica takes
	// the key over, and the stalled owner's result is rejected.
	g := e.guard(s1)
	req := request("s", "stall", "x")
	out, err := g.Begin(bg, req)
	require.NoError(t, err)
	e.clk.WaitForTimers(1)             // the renewal waits for its tick
	e.clk.Advance(lease + time.Second) // which comes after the lease lapsed
	out2, err := e.guard(s2).Begin(bg, req)
	require.NoError(t, err)
	require.Equal(t, idempotency.ResultNew, out2.Result)
	require.ErrorIs(t, out.Lease.Complete(bg, response(200, "stale")), idempotency.ErrLeaseLost)
	require.NoError(t, out2.Lease.Complete(bg, response(200, "fresh")))
	out3, err := g.Begin(bg, req)
	require.NoError(t, err)
	require.Equal(t, idempotency.ResultReplayed, out3.Result)
	require.Equal(t, "fresh", string(out3.Response.Body))
}

// testConcurrentTakeover: many replicas race to take over a lapsed lease and
// a record whose retention ended; exactly one of them gets each key, and the
// stale owner is fenced out whatever the interleaving.
func testConcurrentTakeover(t *testing.T, b Backend) {
	e := newEnv(t, b)
	stores := []idempotency.Store{e.open(), e.open(), e.open(), e.open()}
	lapsed, expired, f := key(t), key(t), fp("x")
	stale := claim(t, stores[0], lapsed, f)
	require.Equal(t, idempotency.Claimed, stale.Status)
	r := claim(t, stores[0], expired, f)
	require.NoError(t, stores[0].Complete(bg, expired, r.Owner, response(200, "old"), lease))
	e.clk.Advance(lease)

	const n = 64
	for _, k := range []idempotency.Key{lapsed, expired} {
		var (
			wg      sync.WaitGroup
			results [n]idempotency.ClaimResult
			errs    [n]error
			start   = make(chan struct{})
		)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				results[i], errs[i] = stores[i%len(stores)].Claim(bg, k, f, lease)
			}()
		}
		close(start)
		wg.Wait()
		claimed := 0
		for i := range n {
			require.NoError(t, errs[i])
			switch results[i].Status {
			case idempotency.Claimed:
				claimed++
			case idempotency.InFlight:
			default:
				t.Fatalf("claim %d: %v", i, results[i].Status)
			}
		}
		require.Equal(t, 1, claimed, "exactly one replica takes the key over")
	}
	require.ErrorIs(t, stores[1].Complete(bg, lapsed, stale.Owner, response(200, "stale"), retention), idempotency.ErrLeaseLost)
	require.ErrorIs(t, stores[2].Release(bg, lapsed, stale.Owner), idempotency.ErrLeaseLost)
}

func testExtend(t *testing.T, b Backend) {
	e := newEnv(t, b)
	s := e.open()
	k, f := key(t), fp("x")
	r := claim(t, s, k, f)
	e.clk.Advance(20 * time.Second)
	require.NoError(t, s.Extend(bg, k, r.Owner, lease))
	e.clk.Advance(20 * time.Second)
	got := claim(t, s, k, f)
	require.Equal(t, idempotency.InFlight, got.Status)
	require.Equal(t, 10*time.Second, got.RetryAfter)
	require.NoError(t, s.Complete(bg, k, r.Owner, response(200, "x"), retention))
}

// testRenewal: a request running for three leases, renewed by the Guard,
// is never run twice.
func testRenewal(t *testing.T, b Backend) {
	e := newEnv(t, b)
	g, other := e.guard(e.open()), e.guard(e.open())
	req := request("s", "long", "x")
	out, err := g.Begin(bg, req)
	require.NoError(t, err)
	require.Equal(t, idempotency.ResultNew, out.Result)
	for range 9 { // 9 × lease/3 = 3 leases
		e.clk.WaitForTimers(1) // the renewal goroutine waits for its next tick
		e.clk.Advance(lease / 3)
		e.clk.WaitForTimers(1) // it extended the lease and waits again
		_, err := other.Begin(bg, req)
		require.ErrorIs(t, err, idempotency.ErrInFlight)
	}
	require.NoError(t, out.Lease.Finish(bg, response(200, "done")))
	require.Equal(t, 0, e.clk.Pending(), "renewal stopped")
	out, err = other.Begin(bg, req)
	require.NoError(t, err)
	require.Equal(t, idempotency.ResultReplayed, out.Result)
}

func testRelease(t *testing.T, b Backend) {
	e := newEnv(t, b)
	s := e.open()
	g := e.guard(s)
	req := request("s", "rel", "x")
	var runs int
	run := func(status int) idempotency.Outcome {
		_, out, err := g.Do(bg, req, func(context.Context) (idempotency.Response, error) {
			runs++
			return response(status, "r"), nil
		})
		require.NoError(t, err)
		return out
	}
	require.Equal(t, idempotency.ResultNew, run(503).Result) // 5xx: released
	require.Equal(t, idempotency.ResultNew, run(500).Result)
	_, out, err := g.Do(bg, req, func(context.Context) (idempotency.Response, error) {
		runs++
		return idempotency.Response{}, errors.New("handler failed")
	})
	require.EqualError(t, err, "handler failed")
	require.Equal(t, idempotency.ResultNew, out.Result)
	require.Panics(t, func() {
		_, _, _ = g.Do(bg, req, func(context.Context) (idempotency.Response, error) {
			runs++
			panic("boom")
		})
	})
	require.Equal(t, idempotency.ResultNew, run(404).Result) // 4xx: remembered
	require.Equal(t, idempotency.ResultReplayed, run(200).Result)
	require.Equal(t, 5, runs)

	// Store level: release frees the key at once.
	k, f := key(t), fp("x")
	r := claim(t, s, k, f)
	require.NoError(t, s.Release(bg, k, r.Owner))
	require.ErrorIs(t, s.Release(bg, k, r.Owner), idempotency.ErrLeaseLost)
	require.Equal(t, idempotency.Claimed, claim(t, s, k, fp("other")).Status)
}

func testScope(t *testing.T, b Backend) {
	e := newEnv(t, b)
	g := e.guard(e.open())
	var runs atomic.Int32
	do := func(scope string) idempotency.Response {
		resp, _, err := g.Do(bg, request(scope, "same-key", "body"), func(context.Context) (idempotency.Response, error) {
			runs.Add(1)
			return response(201, "for "+scope), nil
		})
		require.NoError(t, err)
		return resp
	}
	require.Equal(t, "for alice", string(do("alice").Body))
	require.Equal(t, "for bob", string(do("bob").Body))
	require.Equal(t, "for alice", string(do("alice").Body))
	require.Equal(t, "for bob", string(do("bob").Body))
	require.EqualValues(t, 2, runs.Load())
}

func testRetention(t *testing.T, b Backend) {
	e := newEnv(t, b)
	s := e.open()
	k, f := key(t), fp("x")
	r := claim(t, s, k, f)
	require.NoError(t, s.Complete(bg, k, r.Owner, response(200, "x"), retention))
	e.clk.Advance(retention - time.Millisecond)
	require.Equal(t, idempotency.Completed, claim(t, s, k, f).Status)
	e.clk.Advance(time.Millisecond)
	// Expired: gone, whatever the fingerprint.
	r = claim(t, s, k, fp("y"))
	require.Equal(t, idempotency.Claimed, r.Status)
	require.NoError(t, s.Complete(bg, k, r.Owner, response(200, "y"), retention))
	got := claim(t, s, k, fp("y"))
	require.Equal(t, "y", string(got.Response.Body))
}

func testCanceled(t *testing.T, b Backend) {
	e := newEnv(t, b)
	s := e.open()
	ctx, cancel := context.WithCancel(bg)
	cancel()
	k := key(t)
	_, err := s.Claim(ctx, k, fp("x"), lease)
	require.ErrorIs(t, err, context.Canceled)

	g := e.guard(s, idempotency.WithFailOpen(true))
	out, err := g.Begin(ctx, request("s", "k", "x"))
	require.ErrorIs(t, err, idempotency.ErrStoreUnavailable)
	require.ErrorIs(t, err, context.Canceled)
	require.False(t, out.Run(), "a caller that gave up is not served, even failing open")
}

func testStoreDown(t *testing.T, b Backend) {
	if b.Dial == nil {
		t.Skip("the store has no server")
	}
	const timeout = 500 * time.Millisecond
	const slack = 3 * time.Second // scheduling on a loaded CI machine
	clk := clock.NewFake(time.Time{})
	guard := func(s idempotency.Store, open bool) *idempotency.Guard {
		return idempotency.New("down", s, idempotency.WithClock(clk), idempotency.WithStoreTimeout(timeout), idempotency.WithFailOpen(open))
	}
	within := func(t *testing.T, f func()) {
		t.Helper()
		start := time.Now()
		f()
		require.Less(t, time.Since(start), timeout+slack)
	}

	t.Run("ClosedPort", func(t *testing.T) {
		s := b.Dial(t, clk, ClosedAddr(t))
		within(t, func() {
			out, err := guard(s, false).Begin(bg, request("s", "k", "x"))
			var se *idempotency.StoreError
			require.ErrorAs(t, err, &se)
			require.Equal(t, "claim", se.Op)
			require.ErrorIs(t, err, idempotency.ErrStoreUnavailable)
			require.Equal(t, idempotency.ResultStoreError, out.Result)
			require.False(t, out.Run())
		})
		within(t, func() {
			ran := false
			_, out, err := guard(s, true).Do(bg, request("s", "k", "x"), func(context.Context) (idempotency.Response, error) {
				ran = true
				return response(200, "unprotected"), nil
			})
			require.NoError(t, err)
			require.True(t, ran)
			require.Equal(t, idempotency.ResultStoreError, out.Result)
			require.ErrorIs(t, out.Err, idempotency.ErrStoreUnavailable)
		})
	})

	t.Run("StoppedMidTest", func(t *testing.T) {
		p := NewProxy(t, b.Target)
		s := b.Dial(t, clk, p.Addr())
		g := guard(s, false)
		out, err := g.Begin(bg, request("s", "k", "x"))
		require.NoError(t, err)
		require.Equal(t, idempotency.ResultNew, out.Result)
		p.Close() // the server goes away while the request runs
		within(t, func() {
			err := out.Lease.Complete(bg, response(200, "x"))
			var se *idempotency.StoreError
			require.ErrorAs(t, err, &se)
			require.Equal(t, "complete", se.Op)
		})
		within(t, func() {
			_, err := g.Begin(bg, request("s", "k2", "x"))
			require.ErrorIs(t, err, idempotency.ErrStoreUnavailable)
		})
	})

	t.Run("Hangs", func(t *testing.T) {
		p := NewProxy(t, b.Target)
		s := b.Dial(t, clk, p.Addr())
		g := guard(s, false)
		out, err := g.Begin(bg, request("s", "k", "x"))
		require.NoError(t, err)
		p.Stall()
		within(t, func() {
			err := out.Lease.Release(bg)
			require.ErrorIs(t, err, idempotency.ErrStoreUnavailable)
		})
		within(t, func() {
			_, err := g.Begin(bg, request("s", "k2", "x"))
			require.ErrorIs(t, err, idempotency.ErrStoreUnavailable)
		})
	})
}
