package reliability

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/httpmw"
	"github.com/bulwark-go/bulwark/retry"
)

// TestSlowUpstream: scenario 2. A latency toxic slows every response of the
// upstream.
func TestSlowUpstream(t *testing.T) {
	t.Run("slow-call rate opens the breaker", func(t *testing.T) {
		const latency, threshold = 120 * time.Millisecond, 60 * time.Millisecond
		up := newUpstream(t)
		px := newFaultProxy(t, up.srv.Listener.Addr().String())
		inner := &http.Transport{MaxIdleConnsPerHost: 16}
		t.Cleanup(inner.CloseIdleConnections)
		br := breaker.New("slow", breaker.WithCountWindow(10), breaker.WithFailureRate(0.5, 5),
			breaker.WithSlowCalls(threshold, 0.5), breaker.WithOpenDuration(time.Minute), breaker.WithJitter(0))
		client := &http.Client{Transport: httpmw.NewTransport(inner,
			httpmw.WithBreakers(func(string) *breaker.Breaker { return br }, 1))}
		url := "http://" + px.Addr() + "/"

		px.AddToxic(toxic{Name: "slow", Type: "latency", Stream: "downstream", Attributes: map[string]any{"latency": latency.Milliseconds()}})
		// Eight concurrent calls: every one answers 200, slowly.
		var wg sync.WaitGroup
		statuses := make([]int, 8)
		for i := range statuses {
			wg.Go(func() {
				resp, err := client.Get(url)
				if err != nil {
					return
				}
				statuses[i] = resp.StatusCode
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
			})
		}
		wg.Wait()
		for _, s := range statuses {
			require.Equal(t, http.StatusOK, s, "no call failed: only their duration counts")
		}
		require.Equal(t, breaker.Open, br.State(), "the slow-call rate opened the breaker")

		// Open: the next call is refused at once, without reaching the upstream.
		hits := up.hits.Load()
		start := time.Now()
		_, err := client.Get(url)
		took := time.Since(start)
		require.ErrorIs(t, err, breaker.ErrOpen)
		require.Less(t, took, threshold, "an open breaker answers without waiting for the slow upstream")
		require.Equal(t, hits, up.hits.Load())
		t.Logf("8 calls of %v (threshold %v): breaker open; next call refused in %v", latency, threshold, took.Round(time.Microsecond))
	})

	t.Run("per-attempt timeouts fire", func(t *testing.T) {
		const latency, perAttempt, attempts = 2 * time.Second, 80 * time.Millisecond, 3
		up := newUpstream(t)
		px := newFaultProxy(t, up.srv.Listener.Addr().String())
		inner := &http.Transport{}
		t.Cleanup(inner.CloseIdleConnections)
		br := breaker.New("timeouts", breaker.WithConsecutiveFailures(attempts), breaker.WithOpenDuration(time.Minute))
		var attemptErrs []error
		policy := retry.New("timeouts", retry.WithMaxAttempts(attempts), retry.WithBudget(nil),
			retry.WithAttemptTimeout(perAttempt),
			retry.WithBackOff(func() backoff.BackOff { return backoff.NewConstantBackOff(time.Millisecond) }),
			retry.WithOnRetry(func(_ int, err error, _ time.Duration) { attemptErrs = append(attemptErrs, err) }))
		client := &http.Client{Transport: httpmw.NewTransport(inner, httpmw.WithRetry(policy),
			httpmw.WithBreakers(func(string) *breaker.Breaker { return br }, 1))}
		url := "http://" + px.Addr() + "/"

		px.AddToxic(toxic{Name: "slow", Type: "latency", Stream: "downstream", Attributes: map[string]any{"latency": latency.Milliseconds()}})
		ctx, cancel := context.WithTimeout(bg, 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		start := time.Now()
		_, err := client.Do(req)
		took := time.Since(start)

		require.Error(t, err)
		var rerr *retry.Error
		require.ErrorAs(t, err, &rerr)
		require.Equal(t, attempts, rerr.Attempts)
		require.Equal(t, retry.Exhausted, rerr.Reason)
		require.ErrorIs(t, err, context.DeadlineExceeded, "the last attempt ended on its own timeout")
		require.NoError(t, ctx.Err(), "the caller's deadline was never reached")
		for _, e := range attemptErrs {
			require.True(t, errors.Is(e, context.DeadlineExceeded), "attempt error %v", e)
		}
		require.GreaterOrEqual(t, took, attempts*perAttempt)
		require.Less(t, took, latency/2, "the attempts did not wait for the slow response")
		require.Equal(t, int64(attempts), up.hits.Load(), "each attempt reached the upstream")
		require.Equal(t, breaker.Open, br.State(), "timed-out attempts count as failures")
		t.Logf("%d attempts with a %v timeout against a %v upstream: gave up after %v", attempts, perAttempt, latency, took.Round(time.Millisecond))
	})
}
