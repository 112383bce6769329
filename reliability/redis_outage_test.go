package reliability

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"

	"github.com/bulwark-go/bulwark/httpmw"
	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/idempotency/redisstore"
	"github.com/bulwark-go/bulwark/internal/testenv"
	"github.com/bulwark-go/bulwark/ratelimit"
	"github.com/bulwark-go/bulwark/ratelimit/redisrate"
)

// Phases of the Redis fault scenarios. The odd ones are the moments the
// fault is installed or removed: requests that overlap them are not judged.
const (
	phaseHealthy  int32 = 0
	phaseFault    int32 = 2
	phaseRestored int32 = 4
)

// redisFault is how Redis goes away: blackholed (a timeout toxic swallows
// every command, connections stay open) or down (the proxy refuses
// connections).
type redisFault struct {
	name        string
	start, stop func(px *faultProxy)
}

func redisFaults() []redisFault {
	return []redisFault{
		{
			name: "blackhole",
			start: func(px *faultProxy) {
				px.AddToxic(toxic{Name: "blackhole", Type: "timeout", Stream: "upstream", Attributes: map[string]any{"timeout": 0}})
			},
			stop: func(px *faultProxy) { px.RemoveToxic("blackhole") },
		},
		{
			name:  "down",
			start: func(px *faultProxy) { px.Disable() },
			stop:  func(px *faultProxy) { px.Enable() },
		},
	}
}

// runPhases runs the load while Redis is healthy, faulty and restored, for
// the given durations, and returns the samples.
func runPhases(t *testing.T, px *faultProxy, fault redisFault, healthy, faulty, restored time.Duration,
	workers int, every time.Duration, fn func(ctx context.Context, worker, seq int) (int, map[string]string, string)) []sample {
	t.Helper()
	ph := &phaser{}
	ctx, cancel := context.WithCancel(bg)
	done := make(chan []sample)
	go func() { done <- runWorkers(ctx, ph, workers, every, fn) }()
	<-time.After(healthy)
	ph.next()
	fault.start(px)
	ph.next()
	<-time.After(faulty)
	ph.next()
	fault.stop(px)
	ph.next()
	<-time.After(restored)
	cancel()
	return <-done
}

// TestRedisFaultRateLimiter: scenario 3, the rate limiter. Under a steady
// load through httpmw.RateLimit, Redis is blackholed (or down) for half a
// second, then restored. Each failure mode must answer exactly as configured
// and no request may wait much past the limiter's timeout.
func TestRedisFaultRateLimiter(t *testing.T) {
	addr := testenv.RedisAddr(t)
	const (
		timeout       = 50 * time.Millisecond
		slack         = 250 * time.Millisecond // scheduling under -race on two shared cores
		workers       = 4
		every         = 2 * time.Millisecond
		faulty        = 500 * time.Millisecond
		fallbackRate  = 2 // per second per key
		fallbackBurst = 3
	)
	modes := []struct {
		name string
		mode func() redisrate.FailureMode
		// check judges one request made while Redis was away.
		check func(t *testing.T, s sample)
	}{
		{"fail open", redisrate.FailOpen, func(t *testing.T, s sample) {
			require.Equal(t, http.StatusOK, s.status, "fail open lets the request through")
			require.Equal(t, `"default";r=0;t=0`, s.header["RateLimit"], "state unknown: remaining and reset zero")
		}},
		{"fail closed", redisrate.FailClosed, func(t *testing.T, s sample) {
			require.Equal(t, http.StatusServiceUnavailable, s.status, "fail closed refuses with 503, not 429")
			require.Contains(t, s.header["Content-Type"], "application/problem+json")
			require.Contains(t, s.errText, httpmw.TypeRateLimitUnavailable)
		}},
		{"fallback local", nil, func(t *testing.T, s sample) {
			require.Contains(t, []int{http.StatusOK, http.StatusTooManyRequests}, s.status, "the local limiter decides")
		}},
	}
	for _, fault := range redisFaults() {
		for _, mc := range modes {
			t.Run(fault.name+"/"+mc.name, func(t *testing.T) {
				direct := redisClient(t, addr)
				prefix := redisPrefix(t, direct)
				px := newFaultProxy(t, addr)
				rdb := redisClient(t, px.Addr())
				var mode redisrate.FailureMode
				var local *ratelimit.Local
				if mc.mode != nil {
					mode = mc.mode()
				} else {
					local = ratelimit.NewLocal("fallback", fallbackRate, fallbackBurst)
					mode = redisrate.FallbackLocal(local)
				}
				lim := redisrate.New("rl", rdb, rate.Limit(100_000), 100_000,
					redisrate.WithTimeout(timeout), redisrate.WithFailureMode(mode), redisrate.WithKeyPrefix(prefix))
				srv := httptest.NewServer(httpmw.RateLimit(lim, httpmw.WithKey(httpmw.KeyByHeader("X-Client")))(
					http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })))
				t.Cleanup(srv.Close)
				httpc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
				t.Cleanup(httpc.CloseIdleConnections)

				get := func(ctx context.Context, client string) (int, map[string]string, string) {
					req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
					req.Header.Set("X-Client", client)
					resp, err := httpc.Do(req)
					if err != nil {
						return 0, nil, err.Error()
					}
					body, _ := io.ReadAll(resp.Body)
					_ = resp.Body.Close()
					return resp.StatusCode, map[string]string{
						"RateLimit":    resp.Header.Get("RateLimit"),
						"Content-Type": resp.Header.Get("Content-Type"),
					}, string(body)
				}
				all := runPhases(t, px, fault, 250*time.Millisecond, faulty, 200*time.Millisecond, workers, every,
					func(ctx context.Context, w, _ int) (int, map[string]string, string) {
						return get(ctx, "c"+strconv.Itoa(w))
					})
				phases := byPhase(all)
				require.NotEmpty(t, phases[phaseHealthy])
				require.NotEmpty(t, phases[phaseFault])

				for _, s := range phases[phaseHealthy] {
					require.Equal(t, http.StatusOK, s.status)
					require.NotEqual(t, `"default";r=0;t=0`, s.header["RateLimit"], "Redis decides while healthy")
				}
				allowed := map[int]int{}
				for _, s := range phases[phaseFault] {
					mc.check(t, s)
					if s.status == http.StatusOK {
						allowed[s.worker]++
					}
				}
				if local != nil {
					// Per key, the local limiter allows its burst plus what
					// refills over the fault (and the straddling requests).
					bound := fallbackBurst + int(fallbackRate*faulty.Seconds()) + 1
					for w, n := range allowed {
						require.LessOrEqual(t, n, bound, "worker %d", w)
					}
					require.Contains(t, statusMix(phases[phaseFault]), http.StatusTooManyRequests)
				}
				worst := maxTook(phases[phaseFault])
				require.Less(t, worst, timeout+slack, "no decision hangs past the limiter's timeout")

				// Restored: Redis decides again, once go-redis has redialled
				// (after many failed dials its pool probes once a second).
				byRedis := func() bool {
					status, hdr, _ := get(bg, "probe")
					return status == http.StatusOK && strings.Contains(hdr["RateLimit"], ";r=99")
				}
				took := recovery(t, 2500*time.Millisecond, byRedis)
				for range 20 {
					require.True(t, byRedis(), "Redis decides every request once recovered")
				}
				t.Logf("%s, %s: healthy %v; fault %v (slowest %v, timeout %v); restored %v; Redis deciding again %v after the fault ended",
					fault.name, mc.name, statusMix(phases[phaseHealthy]), statusMix(phases[phaseFault]),
					worst.Round(time.Millisecond), timeout, statusMix(phases[phaseRestored]), took.Round(time.Millisecond))

				// And directly: the decision while Redis is away is exactly
				// the configured one.
				fault.start(px)
				d, err := lim.Allow(bg, "direct", 1)
				fault.stop(px)
				switch {
				case mc.name == "fail open":
					require.NoError(t, err)
					require.True(t, d.Allowed)
					require.Zero(t, d.Remaining)
					require.Zero(t, d.Reset)
				case mc.name == "fail closed":
					require.ErrorIs(t, err, redisrate.ErrUnavailable)
					require.False(t, d.Allowed)
					require.Equal(t, 100_000, d.Limit, "the policy is still described")
				default:
					require.NoError(t, err)
					require.True(t, d.Allowed)
					require.Equal(t, fallbackBurst-1, d.Remaining, "the fallback's own bucket for a new key")
				}
			})
		}
	}
}

// recordedRun is a handler that counts its runs per idempotency key.
type recordedRun struct {
	mu   sync.Mutex
	runs map[string]int
}

func (h *recordedRun) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := strings.Trim(r.Header.Get("Idempotency-Key"), `"`)
	h.mu.Lock()
	h.runs[key]++
	h.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusCreated)
	_, _ = io.WriteString(w, key)
}

func (h *recordedRun) count(key string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.runs[key]
}

// TestRedisFaultIdempotency: scenario 3, the idempotency store. Under a
// steady load of new keys, the redisstore is blackholed (or down) and
// restored. The guard fails closed: no handler runs without a claim in Redis,
// no request waits much past the store timeout, and the service recovers.
func TestRedisFaultIdempotency(t *testing.T) {
	addr := testenv.RedisAddr(t)
	const (
		storeTimeout = 100 * time.Millisecond
		slack        = 300 * time.Millisecond
		workers      = 4
		every        = 2 * time.Millisecond
	)
	for _, fault := range redisFaults() {
		t.Run(fault.name, func(t *testing.T) {
			direct := redisClient(t, addr)
			prefix := redisPrefix(t, direct)
			px := newFaultProxy(t, addr)
			rdb := redisClient(t, px.Addr())
			guard := idempotency.New("pay", redisstore.New(rdb, redisstore.WithPrefix(prefix)),
				idempotency.WithStoreTimeout(storeTimeout))
			h := &recordedRun{runs: map[string]int{}}
			srv := httptest.NewServer(httpmw.Idempotency(guard, httpmw.WithoutScope(),
				httpmw.WithRoute(func(*http.Request) string { return "/pay" }))(h))
			t.Cleanup(srv.Close)
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
			t.Cleanup(client.CloseIdleConnections)
			run := fmt.Sprintf("%d", time.Now().UnixNano())
			keyOf := func(w, seq int) string { return fmt.Sprintf("k-%s-%d-%d", run, w, seq) }
			send := func(ctx context.Context, key string) (int, map[string]string, string) {
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/pay", strings.NewReader("pay 1"))
				req.Header.Set("Idempotency-Key", key)
				resp, err := client.Do(req)
				if err != nil {
					return 0, nil, err.Error()
				}
				body, _ := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				return resp.StatusCode, map[string]string{"Replayed": resp.Header.Get("Idempotent-Replayed")}, string(body)
			}

			all := runPhases(t, px, fault, 250*time.Millisecond, 500*time.Millisecond, 400*time.Millisecond, workers, every,
				func(ctx context.Context, w, seq int) (int, map[string]string, string) {
					return send(ctx, keyOf(w, seq))
				})
			phases := byPhase(all)
			require.NotEmpty(t, phases[phaseFault])

			inRedis := func(key string) bool {
				k := idempotency.DeriveKey("", http.MethodPost, "/pay", key)
				n, err := direct.Exists(bg, prefix+k.String()).Result()
				require.NoError(t, err)
				return n == 1
			}
			// Fails closed: only 201 (ran, with a claim) or 503 (did not run).
			var ok, refused int
			for _, s := range all {
				key := keyOf(s.worker, s.seq)
				switch s.status {
				case http.StatusCreated:
					ok++
					require.Equal(t, key, s.errText, "each client gets its own response")
					require.Equal(t, 1, h.count(key))
				case http.StatusServiceUnavailable:
					refused++
					require.Contains(t, s.errText, httpmw.TypeIdempotencyUnavailable)
					require.Zero(t, h.count(key), "a refused request did not run")
				default:
					t.Fatalf("status %d (%s) for %s", s.status, s.errText, key)
				}
				require.Less(t, s.took, 2*storeTimeout+slack, "claim and complete each give up after the store timeout")
			}
			for _, s := range phases[phaseFault] {
				require.Equal(t, http.StatusServiceUnavailable, s.status, "nothing runs while the store is away")
			}
			// Every handler run holds a record in Redis: no request ran
			// unprotected.
			h.mu.Lock()
			ran := make([]string, 0, len(h.runs))
			for k, n := range h.runs {
				require.Equal(t, 1, n)
				ran = append(ran, k)
			}
			h.mu.Unlock()
			for _, k := range ran {
				require.True(t, inRedis(k), "key %s ran without a record in Redis", k)
			}
			// Recovered: new keys run again once go-redis has redialled.
			probes := 0
			took := recovery(t, 2500*time.Millisecond, func() bool {
				probes++
				status, _, _ := send(bg, fmt.Sprintf("probe-%s-%d", run, probes))
				return status == http.StatusCreated
			})
			for i := range 20 {
				status, _, body := send(bg, fmt.Sprintf("after-%s-%d", run, i))
				require.Equal(t, http.StatusCreated, status, body)
			}

			// Every key sent again: a completed one replays, one whose
			// complete was lost in the fault is in flight until its lease
			// ends, a refused one runs now; none runs twice.
			mix := map[string]int{}
			for _, s := range all {
				key := keyOf(s.worker, s.seq)
				before := h.count(key)
				status, hdr, body := send(bg, key)
				switch {
				case status == http.StatusCreated && hdr["Replayed"] == "true":
					mix["replayed"]++
					require.Equal(t, 1, before)
					require.Equal(t, key, body)
				case status == http.StatusCreated:
					mix["ran now"]++
					require.Zero(t, before, "a key runs once")
				case status == http.StatusConflict && before == 1:
					mix["in flight (complete lost)"]++
				case status == http.StatusConflict:
					// The claim reached Redis, its answer did not: the key
					// is locked until its lease ends, and has never run.
					mix["in flight (claim answer lost)"]++
				default:
					t.Fatalf("resend of %s: %d %s", key, status, body)
				}
				require.LessOrEqual(t, h.count(key), 1, "no key runs twice")
			}
			t.Logf("%s: %d requests, %d ran (201), %d refused (503); fault phase %v; slowest %v (store timeout %v); recovered %v after the fault; resent: %v",
				fault.name, len(all), ok, refused, statusMix(phases[phaseFault]), maxTook(all).Round(time.Millisecond), storeTimeout, took.Round(time.Millisecond), mix)
		})
	}
}

// recovery calls probe on a 10ms ticker, as a client retrying would, until it
// reports true, and returns how long that took; it fails the test after
// within.
func recovery(t *testing.T, within time.Duration, probe func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !probe() {
		require.Less(t, time.Since(start), within, "not recovered")
		<-tick.C
	}
	return time.Since(start)
}
