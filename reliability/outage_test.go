package reliability

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/httpmw"
	"github.com/bulwark-go/bulwark/retry"
)

// upstream is an HTTP server that counts the requests it serves; delay, when
// set, is how long each request takes.
type upstream struct {
	srv  *httptest.Server
	hits atomic.Int64
}

func newUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(u.srv.Close)
	return u
}

// stateAtCall is a base RoundTripper that counts the calls that leave the
// client (the "upstream calls") and the breaker state each was made in.
type stateAtCall struct {
	next http.RoundTripper
	br   *breaker.Breaker

	mu      sync.Mutex
	calls   int
	byState map[breaker.State]int
}

func (s *stateAtCall) RoundTrip(r *http.Request) (*http.Response, error) {
	st := s.br.State()
	s.mu.Lock()
	s.calls++
	s.byState[st]++
	s.mu.Unlock()
	return s.next.RoundTrip(r)
}

func (s *stateAtCall) snapshot() (int, map[breaker.State]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[breaker.State]int, len(s.byState))
	for k, v := range s.byState {
		m[k] = v
	}
	return s.calls, m
}

// transitions records a breaker's state changes with the number of upstream
// calls made when each happened.
type transitions struct {
	mu      sync.Mutex
	list    []string
	callsAt []int
	calls   func() int
}

func (tr *transitions) hook(_ string, from, to breaker.State) {
	n := tr.calls()
	tr.mu.Lock()
	tr.list = append(tr.list, from.String()+"->"+to.String())
	tr.callsAt = append(tr.callsAt, n)
	tr.mu.Unlock()
}

func (tr *transitions) get() ([]string, []int) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]string(nil), tr.list...), append([]int(nil), tr.callsAt...)
}

// TestUpstreamOutageAndRecovery: scenario 1. A client Transport with a retry
// budget and a per-host breaker talks to an upstream through a proxy; the
// proxy goes down for a second and comes back.
func TestUpstreamOutageAndRecovery(t *testing.T) {
	const (
		window, minCalls = 20, 10
		failureRate      = 0.5
		openFor          = 150 * time.Millisecond
		maxTokens, ratio = 10, 0.1
		outage           = time.Second
	)
	up := newUpstream(t)
	px := newFaultProxy(t, up.srv.Listener.Addr().String())

	inner := &http.Transport{MaxIdleConnsPerHost: 4}
	t.Cleanup(inner.CloseIdleConnections)
	tr := &transitions{}
	br := breaker.New("upstream",
		breaker.WithCountWindow(window), breaker.WithFailureRate(failureRate, minCalls),
		breaker.WithOpenDuration(openFor), breaker.WithJitter(0), breaker.WithHalfOpen(1, 2),
		breaker.OnStateChange(tr.hook))
	base := &stateAtCall{next: inner, br: br, byState: map[breaker.State]int{}}
	tr.calls = func() int { n, _ := base.snapshot(); return n }

	budget := retry.NewBudget(maxTokens, ratio)
	var retries atomic.Int64
	policy := retry.New("outage", retry.WithBudget(budget), retry.WithMaxAttempts(4),
		retry.WithBackOff(func() backoff.BackOff { return backoff.NewConstantBackOff(2 * time.Millisecond) }),
		retry.WithOnRetry(func(int, error, time.Duration) { retries.Add(1) }))
	client := &http.Client{Transport: httpmw.NewTransport(base,
		httpmw.WithRetry(policy),
		httpmw.WithBreakers(func(string) *breaker.Breaker { return br }, 1))}
	url := "http://" + px.Addr() + "/"

	get := func() error {
		ctx, cancel := context.WithTimeout(bg, 2*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		return nil
	}

	// Healthy: the window fills with successes and the budget stays full.
	for range 30 {
		require.NoError(t, get())
	}
	require.Equal(t, breaker.Closed, br.State())
	require.InDelta(t, maxTokens, budget.Tokens(), 1e-9)

	// Outage: the proxy refuses every connection for a second. Requests keep
	// coming, one every 2ms, serially.
	px.Disable()
	callsBefore, _ := base.snapshot()
	retriesBefore := retries.Load()
	var n, rejected int
	tick := time.NewTicker(2 * time.Millisecond)
	end := time.Now().Add(outage)
	for time.Now().Before(end) {
		<-tick.C
		err := get()
		require.Error(t, err)
		if errors.Is(err, breaker.ErrOpen) || errors.Is(err, breaker.ErrHalfOpenFull) {
			rejected++
		}
		n++
	}
	tick.Stop()
	callsAfter, byState := base.snapshot()
	outageCalls := callsAfter - callsBefore
	outageRetries := retries.Load() - retriesBefore
	bound := (1+ratio)*float64(n) + maxTokens/2
	t.Logf("outage: %d requests, %d upstream calls (bound (1+%.1f)×%d+%d/2 = %.1f), %d retries, %d rejected by the breaker",
		n, outageCalls, ratio, n, maxTokens, bound, outageRetries, rejected)

	list, at := tr.get()
	require.NotEmpty(t, list)
	require.Equal(t, "closed->open", list[0], "the first change is the trip")
	failedBeforeOpen := at[0] - callsBefore
	t.Logf("breaker opened after %d failed upstream calls (window %d, rate %.1f, min %d)", failedBeforeOpen, window, failureRate, minCalls)
	// Serially, the window held 20 successes: the 10th failure makes the
	// rate 10/20 = 0.5.
	require.Equal(t, int(failureRate*window), failedBeforeOpen, "opens exactly when the window's failure rate reaches the threshold")

	// The documented bound, and the tighter one for a total outage: no
	// successes, so at most maxTokens/2 retries.
	require.LessOrEqual(t, float64(outageCalls), bound)
	require.LessOrEqual(t, outageRetries, int64(maxTokens/2))
	// While open the breaker stops traffic: only half-open probes leave.
	require.Zero(t, byState[breaker.Open], "no upstream call while the breaker is open")
	probes := 0
	for _, s := range list {
		if s == "open->half_open" {
			probes++
		}
	}
	require.GreaterOrEqual(t, probes, 2, "the breaker probed during the outage")
	require.LessOrEqual(t, byState[breaker.HalfOpen], probes, "one probe per half-open period")
	require.Contains(t, list, "half_open->open", "a failed probe reopens")
	require.Less(t, outageCalls, n/5, "the breaker keeps most requests off the dead upstream")

	// Recovery: the proxy comes back; the next probes succeed and close it.
	px.Enable()
	hitsBefore := up.hits.Load()
	recovered := time.Now()
	deadline := recovered.Add(5 * openFor)
	tick = time.NewTicker(2 * time.Millisecond)
	for br.State() != breaker.Closed {
		require.True(t, time.Now().Before(deadline), "breaker did not close within 5 open durations of recovery")
		<-tick.C
		_ = get()
	}
	tick.Stop()
	closedAfter := time.Since(recovered)
	require.NoError(t, get())
	list, _ = tr.get()
	require.Equal(t, "half_open->closed", list[len(list)-1])
	require.GreaterOrEqual(t, up.hits.Load()-hitsBefore, int64(2), "two successful probes closed it")
	t.Logf("recovered: closed %v after the proxy came back; transitions %v", closedAfter.Round(time.Millisecond), list)
}
