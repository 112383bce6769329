package idempotency_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark"
	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/idempotency"
)

var bg = context.Background()

func req(key, body string) idempotency.Request {
	var fp idempotency.Fingerprint
	copy(fp[:], body)
	return idempotency.Request{Scope: "tenant", Method: "POST", Route: "/orders", Key: key, Fingerprint: fp}
}

// failingStore fails every operation, like a store that is down.
type failingStore struct{ err error }

func (s failingStore) Claim(context.Context, idempotency.Key, idempotency.Fingerprint, time.Duration) (idempotency.ClaimResult, error) {
	return idempotency.ClaimResult{}, s.err
}
func (s failingStore) Complete(context.Context, idempotency.Key, idempotency.Token, idempotency.Response, time.Duration) error {
	return s.err
}
func (s failingStore) Release(context.Context, idempotency.Key, idempotency.Token) error {
	return s.err
}
func (s failingStore) Extend(context.Context, idempotency.Key, idempotency.Token, time.Duration) error {
	return s.err
}

func TestGuardMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	clk := clock.NewFake(time.Time{})
	g := idempotency.New("orders", nil, idempotency.WithRegisterer(reg), idempotency.WithClock(clk), idempotency.WithRequired(true))
	// A second guard on the same registry shares the collectors.
	down := idempotency.New("down", failingStore{errors.New("connection refused")}, idempotency.WithRegisterer(reg), idempotency.WithClock(clk))

	out, err := g.Begin(bg, req("k", "a"))
	require.NoError(t, err)
	_, err = g.Begin(bg, req("k", "a"))
	require.ErrorIs(t, err, idempotency.ErrInFlight)
	_, err = g.Begin(bg, req("k", "b"))
	require.ErrorIs(t, err, idempotency.ErrMismatch)
	clk.WaitForTimers(1)
	clk.Advance(idempotency.DefaultLease / 3)
	clk.WaitForTimers(1) // renewed once
	require.NoError(t, out.Lease.Finish(bg, idempotency.Response{Status: 200}))
	_, err = g.Begin(bg, req("k", "a"))
	require.NoError(t, err)
	_, err = g.Begin(bg, req("", "a"))
	require.ErrorIs(t, err, idempotency.ErrMissingKey)
	_, err = g.Begin(bg, req("bad key", "a"))
	require.ErrorIs(t, err, idempotency.ErrInvalidKey)
	_, err = down.Begin(bg, req("k", "a"))
	require.ErrorIs(t, err, idempotency.ErrStoreUnavailable)

	want := `
# HELP bulwark_idempotency_requests_total Requests seen by an idempotency guard, by result: new (claimed, handler runs), replayed, in_flight, mismatch, missing_key, invalid_key, store_error.
# TYPE bulwark_idempotency_requests_total counter
bulwark_idempotency_requests_total{name="down",result="in_flight"} 0
bulwark_idempotency_requests_total{name="down",result="invalid_key"} 0
bulwark_idempotency_requests_total{name="down",result="mismatch"} 0
bulwark_idempotency_requests_total{name="down",result="missing_key"} 0
bulwark_idempotency_requests_total{name="down",result="new"} 0
bulwark_idempotency_requests_total{name="down",result="replayed"} 0
bulwark_idempotency_requests_total{name="down",result="store_error"} 1
bulwark_idempotency_requests_total{name="orders",result="in_flight"} 1
bulwark_idempotency_requests_total{name="orders",result="invalid_key"} 1
bulwark_idempotency_requests_total{name="orders",result="mismatch"} 1
bulwark_idempotency_requests_total{name="orders",result="missing_key"} 1
bulwark_idempotency_requests_total{name="orders",result="new"} 1
bulwark_idempotency_requests_total{name="orders",result="replayed"} 1
bulwark_idempotency_requests_total{name="orders",result="store_error"} 0
# HELP bulwark_idempotency_lease_renewals_total Leases extended while a request was still running.
# TYPE bulwark_idempotency_lease_renewals_total counter
bulwark_idempotency_lease_renewals_total{name="down"} 0
bulwark_idempotency_lease_renewals_total{name="orders"} 1
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want),
		"bulwark_idempotency_requests_total", "bulwark_idempotency_lease_renewals_total"))
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
	// Latency children exist for both guards and all four operations.
	require.Equal(t, 2*4, testutil.CollectAndCount(reg, "bulwark_idempotency_store_seconds"))
}

func TestGuardErrorsCarryHints(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	g := idempotency.New("h", nil, idempotency.WithClock(clk), idempotency.WithLease(10*time.Second), idempotency.WithRequired(true))
	out, err := g.Begin(bg, req("k", "a"))
	require.NoError(t, err)
	defer func() { require.NoError(t, out.Lease.Release(bg)) }()
	clk.Advance(time.Second) // the renewal is due at 3.33 s
	_, err = g.Begin(bg, req("k", "a"))
	inflight, ok := errors.AsType[*idempotency.InFlightError](err)
	require.True(t, ok, "%v", err)
	require.Equal(t, 9*time.Second, inflight.RetryAfter, "the time left on the lease")
	require.Contains(t, err.Error(), "9s")
	// The client is told to ask again in a second, not when the lease ends:
	// the holder renews it while it runs.
	h, ok := bulwark.HintOf(err)
	require.True(t, ok)
	require.Equal(t, idempotency.InFlightPoll, h.RetryAfter)
	// A lease that ends sooner than that is waited out.
	h = (&idempotency.InFlightError{RetryAfter: 300 * time.Millisecond}).RetryHint()
	require.Equal(t, 300*time.Millisecond, h.RetryAfter)

	for _, r := range []idempotency.Request{req("k", "b"), req("", "a"), req("\x00", "a")} {
		_, err := g.Begin(bg, r)
		require.True(t, bulwark.IsPermanent(err), "%v", err)
	}
}

func TestGuardFailOpenAndClosed(t *testing.T) {
	down := failingStore{errors.New("dial tcp: connection refused")}
	closed := idempotency.New("c", down)
	out, err := closed.Begin(bg, req("k", "a"))
	var se *idempotency.StoreError
	require.ErrorAs(t, err, &se)
	require.Equal(t, "claim", se.Op)
	require.ErrorContains(t, err, "connection refused")
	require.False(t, out.Run())

	open := idempotency.New("o", down, idempotency.WithFailOpen(true))
	out, err = open.Begin(bg, req("k", "a"))
	require.NoError(t, err)
	require.True(t, out.Run())
	require.Nil(t, out.Lease)
	require.ErrorIs(t, out.Err, idempotency.ErrStoreUnavailable)
}

func TestGuardRemember(t *testing.T) {
	// A gRPC-style rule: remember OK (0) and InvalidArgument (3) only.
	grpcRule := func(code int) bool { return code == 0 || code == 3 }
	g := idempotency.New("grpc", nil, idempotency.WithRemember(grpcRule))
	for _, tc := range []struct {
		status   int
		replayed bool
	}{{0, true}, {3, true}, {14, false}, {200, false}} {
		r := req("k"+strings.Repeat("x", tc.status), "a")
		_, out, err := g.Do(bg, r, func(context.Context) (idempotency.Response, error) {
			return idempotency.Response{Status: tc.status}, nil
		})
		require.NoError(t, err)
		require.Equal(t, idempotency.ResultNew, out.Result)
		_, out, _ = g.Do(bg, r, func(context.Context) (idempotency.Response, error) { return idempotency.Response{}, nil })
		require.Equal(t, tc.replayed, out.Result == idempotency.ResultReplayed, "status %d", tc.status)
	}
	require.True(t, idempotency.RememberHTTP(201))
	require.True(t, idempotency.RememberHTTP(422))
	require.False(t, idempotency.RememberHTTP(500))
	require.False(t, idempotency.RememberHTTP(101))
	for _, later := range []int{408, 425, 429} {
		require.False(t, idempotency.RememberHTTP(later), "%d asks the client to retry; replaying it would refuse the retry", later)
	}
	require.True(t, idempotency.RememberHTTP(409))
}

// TestLeaseRenewalStops: the renewal goroutine ends with the lease, however
// it ends, also when Complete and Release race; goleak checks the rest.
func TestLeaseRenewalStops(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	g := idempotency.New("stop", nil, idempotency.WithClock(clk))
	for i := range 50 {
		out, err := g.Begin(bg, req("k"+strings.Repeat("x", i), "a"))
		require.NoError(t, err)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		wg.Add(2)
		go func() { defer wg.Done(); errs[0] = out.Lease.Complete(bg, idempotency.Response{Status: 200}) }()
		go func() { defer wg.Done(); errs[1] = out.Lease.Release(bg) }()
		wg.Wait()
		require.True(t, (errs[0] == nil) != (errs[1] == nil), "exactly one finishes the lease: %v", errs)
		require.Zero(t, clk.Pending(), "no renewal timer left")
	}
	// Finishing while a renewal is in progress waits for it.
	slow := &blockingStore{Store: idempotency.NewMemoryStore(idempotency.MemoryConfig{Clock: clk}), entered: make(chan struct{}), unblock: make(chan struct{})}
	g = idempotency.New("slow", slow, idempotency.WithClock(clk))
	out, err := g.Begin(bg, req("k", "a"))
	require.NoError(t, err)
	clk.WaitForTimers(1)
	clk.Advance(idempotency.DefaultLease / 3)
	<-slow.entered // the renewal is inside Extend
	done := make(chan error)
	go func() { done <- out.Lease.Complete(bg, idempotency.Response{Status: 200}) }()
	require.NoError(t, <-done, "Complete cancels the renewal's context and waits for it")
	close(slow.unblock)
}

// blockingStore blocks in Extend until its context ends.
type blockingStore struct {
	idempotency.Store
	entered, unblock chan struct{}
}

func (s *blockingStore) Extend(ctx context.Context, _ idempotency.Key, _ idempotency.Token, _ time.Duration) error {
	close(s.entered)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-s.unblock:
		return nil
	}
}

func TestResultAndStatusNames(t *testing.T) {
	require.Equal(t, "store_error", idempotency.ResultStoreError.String())
	require.Equal(t, "unknown", idempotency.Result(99).String())
	require.Equal(t, "in_flight", idempotency.InFlight.String())
	require.Equal(t, "invalid", idempotency.ClaimStatus(0).String())
}

// TestDoStoresResponseWhenCallerContextEnds: fn's effect has happened when it
// returns, so its response is stored even if the caller's context ended
// meanwhile (a deadline that hit at the end, a consumer shutting down);
// otherwise the key would stay locked until the lease lapsed and the retry
// would run fn a second time.
func TestDoStoresResponseWhenCallerContextEnds(t *testing.T) {
	g := idempotency.New("ctx", nil)
	ctx, cancel := context.WithCancel(bg)
	runs := 0
	fn := func(context.Context) (idempotency.Response, error) {
		runs++
		cancel()
		return idempotency.Response{Status: 201, Body: []byte("created")}, nil
	}
	resp, out, err := g.Do(ctx, req("k", "a"), fn)
	require.NoError(t, err)
	require.Equal(t, idempotency.ResultNew, out.Result)
	require.Equal(t, "created", string(resp.Body))

	resp, out, err = g.Do(bg, req("k", "a"), fn)
	require.NoError(t, err)
	require.Equal(t, idempotency.ResultReplayed, out.Result)
	require.Equal(t, "created", string(resp.Body))
	require.Equal(t, 1, runs)
}

// scriptedStore claims every key, then answers Complete and Release with
// the errors it is given.
type scriptedStore struct {
	failingStore
	complete, release error
}

func (s scriptedStore) Claim(context.Context, idempotency.Key, idempotency.Fingerprint, time.Duration) (idempotency.ClaimResult, error) {
	return idempotency.ClaimResult{Status: idempotency.Claimed, Owner: idempotency.NewToken()}, nil
}
func (s scriptedStore) Complete(context.Context, idempotency.Key, idempotency.Token, idempotency.Response, time.Duration) error {
	return s.complete
}
func (s scriptedStore) Release(context.Context, idempotency.Key, idempotency.Token) error {
	return s.release
}

// Failures after the handler ran leave a key locked until its lease ends (a
// store error) or drop the handler's result (a lost lease): both must show
// on a dashboard.
func TestGuardStoreErrorAndLeaseLostMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	clk := clock.NewFake(time.Time{})
	store := scriptedStore{complete: idempotency.ErrLeaseLost, release: errors.New("connection reset")}
	g := idempotency.New("orders", store, idempotency.WithRegisterer(reg), idempotency.WithClock(clk))

	out, err := g.Begin(bg, req("k1", "a"))
	require.NoError(t, err)
	require.ErrorIs(t, out.Lease.Finish(bg, idempotency.Response{Status: 200}), idempotency.ErrLeaseLost)
	out, err = g.Begin(bg, req("k2", "a"))
	require.NoError(t, err)
	require.ErrorIs(t, out.Lease.Release(bg), idempotency.ErrStoreUnavailable)

	want := `
# HELP bulwark_idempotency_leases_lost_total Completions, releases and renewals refused because the lease had expired or passed to another request (fencing).
# TYPE bulwark_idempotency_leases_lost_total counter
bulwark_idempotency_leases_lost_total{name="orders"} 1
# HELP bulwark_idempotency_store_errors_total Idempotency store operations that failed or timed out, by operation. A failed complete or release after the handler ran leaves the key locked until its lease ends.
# TYPE bulwark_idempotency_store_errors_total counter
bulwark_idempotency_store_errors_total{name="orders",op="claim"} 0
bulwark_idempotency_store_errors_total{name="orders",op="complete"} 0
bulwark_idempotency_store_errors_total{name="orders",op="extend"} 0
bulwark_idempotency_store_errors_total{name="orders",op="release"} 1
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want),
		"bulwark_idempotency_leases_lost_total", "bulwark_idempotency_store_errors_total"))
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
}

// A store call cut short by the caller's own context (a cancelled request, a
// lease renewal stopped by Complete) is not a store error on the dashboard.
func TestGuardCallerCancellationIsNotAStoreError(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	g := idempotency.New("orders", nil, idempotency.WithRegisterer(reg))
	ctx, cancel := context.WithCancel(bg)
	cancel()
	_, err := g.Begin(ctx, req("k1", "a"))
	require.ErrorIs(t, err, context.Canceled)

	requireNoStoreErrors(t, reg, "orders")
}

// requireNoStoreErrors checks that the Guard name has counted no store error
// of any operation.
func requireNoStoreErrors(t *testing.T, reg prometheus.Gatherer, name string) {
	t.Helper()
	want := strings.ReplaceAll(`
# HELP bulwark_idempotency_store_errors_total Idempotency store operations that failed or timed out, by operation. A failed complete or release after the handler ran leaves the key locked until its lease ends.
# TYPE bulwark_idempotency_store_errors_total counter
bulwark_idempotency_store_errors_total{name="NAME",op="claim"} 0
bulwark_idempotency_store_errors_total{name="NAME",op="complete"} 0
bulwark_idempotency_store_errors_total{name="NAME",op="extend"} 0
bulwark_idempotency_store_errors_total{name="NAME",op="release"} 0
`, "NAME", name)
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want), "bulwark_idempotency_store_errors_total"))
}

// TestGuardStoresLargeResponse: a response larger than a MemoryStore
// shard's share of MaxBytes is stored and replayed, rather than failing to
// store, leaving the key in flight for the lease and then running again.
func TestGuardStoresLargeResponse(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	g := idempotency.New("big", idempotency.NewMemoryStore(idempotency.MemoryConfig{MaxBytes: 4 << 20, Clock: clk}), idempotency.WithClock(clk))
	runs := 0
	fn := func(context.Context) (idempotency.Response, error) {
		runs++
		return idempotency.Response{Status: 200, Body: make([]byte, 200<<10)}, nil
	}
	_, out, err := g.Do(bg, req("k", "a"), fn)
	require.NoError(t, err)
	require.Equal(t, idempotency.ResultNew, out.Result)
	resp, out, err := g.Do(bg, req("k", "a"), fn)
	require.NoError(t, err)
	require.Equal(t, idempotency.ResultReplayed, out.Result)
	require.Len(t, resp.Body, 200<<10)
	require.Equal(t, 1, runs)
}

// TestGuardTooLargeResponseIsNotRunAgain: a response the store can never
// hold is reported, and its key completed with a NotReplayable record, so
// that a retry is told at once that the request was processed: it is neither
// run a second time nor told for the whole lease that it is in flight.
func TestGuardTooLargeResponseIsNotRunAgain(t *testing.T) {
	clk := clock.NewFake(time.Time{})
	reg := prometheus.NewPedanticRegistry()
	g := idempotency.New("big", idempotency.NewMemoryStore(idempotency.MemoryConfig{MaxBytes: 64 << 10, Clock: clk}),
		idempotency.WithClock(clk), idempotency.WithRegisterer(reg))
	runs := 0
	fn := func(context.Context) (idempotency.Response, error) {
		runs++
		return idempotency.Response{Status: 200, Body: make([]byte, 100<<10)}, nil
	}
	resp, out, err := g.Do(bg, req("k", "a"), fn)
	require.Equal(t, idempotency.ResultNew, out.Result)
	require.Len(t, resp.Body, 100<<10, "the caller still gets the response")
	require.ErrorIs(t, err, idempotency.ErrResponseTooLarge)
	var se *idempotency.StoreError
	require.ErrorAs(t, err, &se)
	require.Equal(t, "complete", se.Op)

	resp, out, err = g.Do(bg, req("k", "a"), fn)
	require.NoError(t, err)
	require.Equal(t, idempotency.ResultReplayed, out.Result, "the retry is not run again")
	require.False(t, resp.Replayable())
	require.Equal(t, 200, resp.Status)
	require.Equal(t, 1, runs)
	requireNoStoreErrors(t, reg, "big") // the store did not fail

	// When the store cannot hold even the record, the key is released; when
	// the release fails too, both errors are reported.
	store := scriptedStore{complete: idempotency.ErrResponseTooLarge, release: errors.New("connection reset")}
	g = idempotency.New("big", store, idempotency.WithClock(clk))
	out, err = g.Begin(bg, req("k", "a"))
	require.NoError(t, err)
	err = out.Lease.Complete(bg, idempotency.Response{Status: 200})
	require.ErrorIs(t, err, idempotency.ErrResponseTooLarge)
	require.ErrorContains(t, err, "connection reset")
}
