package observability

import (
	"context"
	"errors"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/ratelimit"
	"github.com/bulwark-go/bulwark/ratelimit/redisrate"
	"github.com/bulwark-go/bulwark/retry"
	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"
)

// family is one metric family as bulwark's registry exposes it.
type family struct {
	Name, Type, Help string
	Labels           []string            // label names, sorted
	Values           map[string][]string // label name → values seen (sorted), "name" excluded
}

// exposed builds every bulwark primitive on one pedantic registry, uses each
// once so that every series exists, and returns the registry and what it
// exposes, by metric name.
func exposed(t *testing.T) (*prometheus.Registry, map[string]family) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	ctx := context.Background()
	boom := errors.New("boom")

	br := breaker.New("payments", breaker.WithRegisterer(reg), breaker.WithConsecutiveFailures(1),
		breaker.WithSlowCalls(time.Hour, 1))
	p, err := br.Allow()
	require.NoError(t, err)
	p.Done(boom) // opens: a transition
	_, err = br.Allow()
	require.ErrorIs(t, err, breaker.ErrOpen)

	rp := retry.New("payments", retry.WithRegisterer(reg),
		retry.WithBackOff(func() backoff.BackOff { return &backoff.ZeroBackOff{} }))
	n := 0
	require.NoError(t, rp.Do(ctx, func(context.Context) error {
		if n++; n == 1 {
			return boom
		}
		return nil
	}))

	bh := bulkhead.New("checkout", bulkhead.WithRegisterer(reg), bulkhead.WithLimit(1), bulkhead.WithQueue(1))
	bp, err := bh.Acquire(ctx)
	require.NoError(t, err)
	bp.Release()

	local := ratelimit.NewLocal("api", rate.Limit(10), 1, ratelimit.WithRegisterer(reg))
	_, err = local.Allow(ctx, "client", 1)
	require.NoError(t, err)
	// The Redis limiter registers its metrics at construction and does no
	// I/O until a decision: no server is needed to see its series.
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", ContextTimeoutEnabled: true})
	defer rdb.Close()
	shared := redisrate.New("shared-api", rdb, rate.Limit(10), 1, redisrate.WithRegisterer(reg))

	g := idempotency.New("orders", nil, idempotency.WithRegisterer(reg))
	out, err := g.Begin(ctx, idempotency.Request{Method: "POST", Route: "/orders", Key: "k1"})
	require.NoError(t, err)
	require.NoError(t, out.Lease.Finish(ctx, idempotency.Response{Status: 201}))

	mfs, err := reg.Gather()
	require.NoError(t, err)
	// Collectors hold breakers, policies, bulkheads and limiters weakly:
	// each must live until the scrape has read it.
	runtime.KeepAlive(br)
	runtime.KeepAlive(rp)
	runtime.KeepAlive(bh)
	runtime.KeepAlive(local)
	runtime.KeepAlive(shared)
	got := map[string]family{}
	for _, mf := range mfs {
		f := family{Name: mf.GetName(), Type: strings.ToLower(mf.GetType().String()), Help: mf.GetHelp(), Values: map[string][]string{}}
		seen := map[string]map[string]bool{}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if seen[lp.GetName()] == nil {
					seen[lp.GetName()] = map[string]bool{}
					f.Labels = append(f.Labels, lp.GetName())
				}
				if lp.GetName() != "name" && !seen[lp.GetName()][lp.GetValue()] {
					seen[lp.GetName()][lp.GetValue()] = true
					f.Values[lp.GetName()] = append(f.Values[lp.GetName()], lp.GetValue())
				}
			}
		}
		sort.Strings(f.Labels)
		for _, v := range f.Values {
			sort.Strings(v)
		}
		got[f.Name] = f
	}
	return reg, got
}
