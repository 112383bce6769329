package reliability

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/httpmw"
	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/retry"
)

// ledger is the servers' record of effects: which replica ran each request.
type ledger struct {
	mu      sync.Mutex
	entries map[string][]string
}

func (l *ledger) add(id, replica string) {
	l.mu.Lock()
	l.entries[id] = append(l.entries[id], replica)
	l.mu.Unlock()
}

// replicas is a base RoundTripper that sends each attempt to the next
// replica in turn, as a client-side load balancer would, and counts the
// attempts and the ones that failed on the wire.
type replicas struct {
	next     http.RoundTripper
	hosts    []string
	turn     atomic.Int64
	attempts atomic.Int64
	wireErrs atomic.Int64
	status   sync.Map // int -> *atomic.Int64
}

func (r *replicas) RoundTrip(req *http.Request) (*http.Response, error) {
	r.attempts.Add(1)
	out := req.Clone(req.Context())
	out.URL.Host = r.hosts[int(r.turn.Add(1))%len(r.hosts)]
	out.Host = ""
	resp, err := r.next.RoundTrip(out)
	if err != nil {
		r.wireErrs.Add(1)
		return nil, err
	}
	c, _ := r.status.LoadOrStore(resp.StatusCode, new(atomic.Int64))
	c.(*atomic.Int64).Add(1)
	return resp, nil
}

func (r *replicas) statuses() map[int]int64 {
	m := map[int]int64{}
	r.status.Range(func(k, v any) bool { m[k.(int)] = v.(*atomic.Int64).Load(); return true })
	return m
}

// TestExactlyOnceLedger: scenario 6. Eight clients each make 25 logical
// requests with retries (httpmw.Transport, an Idempotency-Key per logical
// request) to two replicas, alternating per attempt, through proxies that
// reset or cut a fraction of connections in both directions. The replicas
// share one store: Redis, then PostgreSQL.
func TestExactlyOnceLedger(t *testing.T) {
	const clients, perClient = 8, 25
	for _, st := range sharedStores() {
		t.Run(st.name, func(t *testing.T) {
			newStore := st.open(t)
			led := &ledger{entries: map[string][]string{}}
			var hosts []string
			for _, name := range []string{"A", "B"} {
				guard := idempotency.New("ledger-"+name, newStore(), idempotency.WithLease(3*time.Second))
				mw := httpmw.Idempotency(guard, httpmw.WithScope(func(r *http.Request) (string, error) {
					return r.Header.Get("X-Client"), nil
				}))
				mux := http.NewServeMux()
				mux.Handle("POST /transfer", mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					body, _ := io.ReadAll(r.Body)
					id := string(body)
					led.add(id, name)
					w.Header().Set("Content-Type", "text/plain")
					w.WriteHeader(http.StatusCreated)
					_, _ = io.WriteString(w, id+" by "+name)
				})))
				srv := httptest.NewServer(mux)
				t.Cleanup(srv.Close)
				px := newFaultProxy(t, srv.Listener.Addr().String())
				// A tenth of connections are reset before the request
				// reaches the server, a tenth after it ran (the response
				// is lost), a twentieth are cut after 64 bytes of the
				// response (mid-header).
				px.AddToxic(toxic{Name: "reset-up", Type: "reset_peer", Stream: "upstream", Toxicity: 0.1, Attributes: map[string]any{"timeout": 0}})
				px.AddToxic(toxic{Name: "reset-down", Type: "reset_peer", Stream: "downstream", Toxicity: 0.1, Attributes: map[string]any{"timeout": 0}})
				px.AddToxic(toxic{Name: "cut-down", Type: "limit_data", Stream: "downstream", Toxicity: 0.05, Attributes: map[string]any{"bytes": 64}})
				hosts = append(hosts, px.Addr())
			}

			inner := &http.Transport{DisableKeepAlives: true} // every attempt is a new connection: a fresh draw of faults
			t.Cleanup(inner.CloseIdleConnections)
			base := &replicas{next: inner, hosts: hosts}
			policy := retry.New("ledger", retry.WithMaxAttempts(10), retry.WithBudget(nil),
				retry.WithBackOff(func() backoff.BackOff { return backoff.NewConstantBackOff(5 * time.Millisecond) }))
			// The transport's defaults retry 429, 502-504 and the in-flight 409.
			client := &http.Client{Transport: httpmw.NewTransport(base, httpmw.WithRetry(policy))}
			run := fmt.Sprintf("%d", time.Now().UnixNano())

			type result struct {
				id, body string
				replayed bool
				rounds   int
			}
			results := make([][]result, clients)
			var wg sync.WaitGroup
			start := time.Now()
			for c := range clients {
				wg.Go(func() {
					for m := range perClient {
						id := fmt.Sprintf("c%d-r%02d-%s", c, m, run)
						res := result{id: id}
						// A call the transport gave up on is sent again
						// with the same key, as an application would.
						for res.rounds = 1; res.rounds <= 5; res.rounds++ {
							ctx, cancel := context.WithTimeout(bg, 20*time.Second)
							req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://ledger.test/transfer", strings.NewReader(id))
							req.Header.Set("Idempotency-Key", `"`+id+`"`)
							req.Header.Set("X-Client", fmt.Sprintf("client-%d", c))
							resp, err := client.Do(req)
							if err == nil {
								body, rerr := io.ReadAll(resp.Body)
								_ = resp.Body.Close()
								if rerr == nil && resp.StatusCode == http.StatusCreated {
									res.body, res.replayed = string(body), resp.Header.Get("Idempotent-Replayed") == "true"
									cancel()
									break
								}
							}
							cancel()
						}
						results[c] = append(results[c], res)
					}
				})
			}
			wg.Wait()
			took := time.Since(start)

			// Every client got the result of its own request.
			replays, extraRounds := 0, 0
			for c := range clients {
				require.Len(t, results[c], perClient)
				for _, r := range results[c] {
					require.True(t, strings.HasPrefix(r.body, r.id+" by "), "client %d got %q for %s", c, r.body, r.id)
					if r.replayed {
						replays++
					}
					extraRounds += r.rounds - 1
				}
			}
			// The ledger holds every logical request exactly once.
			led.mu.Lock()
			defer led.mu.Unlock()
			require.Len(t, led.entries, clients*perClient)
			byReplica := map[string]int{}
			for id, ran := range led.entries {
				require.Len(t, ran, 1, "request %s ran on %v", id, ran)
				byReplica[ran[0]]++
			}
			t.Logf("%s: %d logical requests, %d ledger entries (A %d, B %d), %d attempts (%d failed on the wire; statuses %v), %d answered by replay, %d resent by the application, %v",
				st.name, clients*perClient, len(led.entries), byReplica["A"], byReplica["B"], base.attempts.Load(), base.wireErrs.Load(),
				base.statuses(), replays, extraRounds, took.Round(time.Millisecond))
			require.Positive(t, base.wireErrs.Load(), "the proxies did inject faults")
			// And each answer, first-hand or replayed, is the response of
			// the one run the ledger holds.
			for c := range clients {
				for _, r := range results[c] {
					require.Equal(t, r.id+" by "+led.entries[r.id][0], r.body)
				}
			}
		})
	}
}
