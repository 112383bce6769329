package reliability

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/clock"
	"github.com/bulwark-go/bulwark/httpmw"
	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/idempotency/pgstore"
	"github.com/bulwark-go/bulwark/idempotency/redisstore"
	"github.com/bulwark-go/bulwark/internal/testenv"
)

// completions is an idempotency.Store that passes every call to the real
// store and reports the result of each Complete on a channel: the way the
// test sees what a server's late write got, since the middleware does not
// tell the (long gone) client.
type completions struct {
	idempotency.Store
	results chan error
}

func (c *completions) Complete(ctx context.Context, key idempotency.Key, owner idempotency.Token, resp idempotency.Response, retention time.Duration) error {
	err := c.Store.Complete(ctx, key, owner, resp, retention)
	c.results <- err
	return err
}

// TestServerKilledBeforeStoring: scenario 5. Replica A runs the handler and,
// before it stores the response, freezes with its store connection cut (a
// process stopped by the kernel, a long GC pause, a partition). Its client
// gives up. After the lease a retry to replica B runs and stores B's
// response. When A comes back and writes its response, fencing rejects it
// with ErrLeaseLost, and B's response is the one that replays.
func TestServerKilledBeforeStoring(t *testing.T) {
	backends := []struct {
		name string
		open func(t *testing.T, clk clock.Clock) (direct, viaProxy func() idempotency.Store, px *faultProxy, reconnect func())
	}{
		{"redis", func(t *testing.T, clk clock.Clock) (func() idempotency.Store, func() idempotency.Store, *faultProxy, func()) {
			addr := testenv.RedisAddr(t)
			direct := redisClient(t, addr)
			prefix := redisPrefix(t, direct)
			px := newFaultProxy(t, addr)
			proxied := redisClient(t, px.Addr())
			return func() idempotency.Store {
					return redisstore.New(direct, redisstore.WithPrefix(prefix), redisstore.WithClock(clk))
				}, func() idempotency.Store {
					return redisstore.New(proxied, redisstore.WithPrefix(prefix), redisstore.WithClock(clk))
				}, px, func() {} // go-redis checks a pooled connection before using it
		}},
		{"postgres", func(t *testing.T, clk clock.Clock) (func() idempotency.Store, func() idempotency.Store, *faultProxy, func()) {
			dsn := testenv.PostgresURL(t)
			direct := pgPool(t, dsn, 4)
			table := pgTable(t, direct)
			px := newFaultProxy(t, pgHostPort(t, dsn))
			proxied := pgPool(t, pgWithHost(t, dsn, px.Addr()), 2)
			return func() idempotency.Store {
					return pgstore.New(direct, pgstore.WithTable(table), pgstore.WithClock(clk))
				}, func() idempotency.Store {
					return pgstore.New(proxied, pgstore.WithTable(table), pgstore.WithClock(clk))
				}, px, proxied.Reset // the pool's connections died with the proxy: reconnect
		}},
	}
	const lease = 30 * time.Second
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			clk := clock.NewFake(time.Time{})
			direct, viaProxy, pxA, reconnectA := be.open(t, clk)

			var runsA, runsB atomic.Int32
			ranA, resumeA := make(chan struct{}), make(chan struct{})
			storeA := &completions{Store: viaProxy(), results: make(chan error, 1)}
			server := func(g *idempotency.Guard, h http.HandlerFunc) *httptest.Server {
				srv := httptest.NewServer(httpmw.Idempotency(g, httpmw.WithoutScope(),
					httpmw.WithRoute(func(*http.Request) string { return "/pay" }))(h))
				t.Cleanup(srv.Close)
				return srv
			}
			srvA := server(idempotency.New("A", storeA, idempotency.WithLease(lease)),
				func(w http.ResponseWriter, r *http.Request) {
					runsA.Add(1)
					w.WriteHeader(http.StatusCreated)
					_, _ = io.WriteString(w, "A:"+r.Header.Get("Idempotency-Key"))
					close(ranA)
					<-resumeA // frozen between running the handler and storing its response
				})
			srvB := server(idempotency.New("B", direct(), idempotency.WithLease(lease)),
				func(w http.ResponseWriter, r *http.Request) {
					runsB.Add(1)
					w.WriteHeader(http.StatusCreated)
					_, _ = io.WriteString(w, "B:"+r.Header.Get("Idempotency-Key"))
				})
			client := &http.Client{Transport: &http.Transport{}}
			t.Cleanup(client.CloseIdleConnections)
			post := func(ctx context.Context, url string) (*http.Response, string, error) {
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/pay", strings.NewReader("pay 1"))
				req.Header.Set("Idempotency-Key", "order-1")
				resp, err := client.Do(req)
				if err != nil {
					return nil, "", err
				}
				defer resp.Body.Close()
				body, _ := io.ReadAll(resp.Body)
				return resp, string(body), nil
			}

			// A claims the key and runs the handler, then freezes; its
			// store connection is cut and its client gives up.
			ctxA, giveUp := context.WithCancel(bg)
			clientA := make(chan error, 1)
			go func() { _, _, err := post(ctxA, srvA.URL); clientA <- err }()
			<-ranA
			pxA.Disable()
			giveUp()
			require.ErrorIs(t, <-clientA, context.Canceled)

			// Within the lease, B refuses: the key is A's.
			resp, _, err := post(bg, srvB.URL)
			require.NoError(t, err)
			require.Equal(t, http.StatusConflict, resp.StatusCode)
			require.Zero(t, runsB.Load())

			// After the lease, the retry runs on B and its response is stored.
			clk.Advance(lease + time.Second)
			resp, body, err := post(bg, srvB.URL)
			require.NoError(t, err)
			require.Equal(t, http.StatusCreated, resp.StatusCode)
			require.Empty(t, resp.Header.Get("Idempotent-Replayed"))
			require.Equal(t, "B:order-1", body)

			// A comes back and writes its response: fenced.
			pxA.Enable()
			reconnectA()
			close(resumeA)
			lateErr := <-storeA.results
			require.ErrorIs(t, lateErr, idempotency.ErrLeaseLost, "the dead owner's late write is rejected")

			// B's response is the one that replays, from either replica.
			for _, url := range []string{srvB.URL, srvA.URL} {
				resp, body, err = post(bg, url)
				require.NoError(t, err)
				require.Equal(t, http.StatusCreated, resp.StatusCode)
				require.Equal(t, "true", resp.Header.Get("Idempotent-Replayed"))
				require.Equal(t, "B:order-1", body)
			}
			require.Equal(t, int32(1), runsA.Load())
			require.Equal(t, int32(1), runsB.Load())
			t.Logf("%s: A ran and froze; B refused with 409 within the lease, ran after it; A's late Complete: %v; replay from A and B: %q",
				be.name, lateErr, body)
		})
	}
}
