package httpmw

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/clock"
)

func srvFullBulkhead(t *testing.T) *bulkhead.Bulkhead {
	t.Helper()
	return bulkhead.New("httpmw-full", bulkhead.WithLimit(0))
}

func TestBulkheadFull(t *testing.T) {
	bh := bulkhead.New("httpmw-test", bulkhead.WithLimit(1), bulkhead.WithRegisterer(prometheus.NewPedanticRegistry()))
	entered, release := make(chan struct{}), make(chan struct{})
	h := Bulkhead(bh)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(entered)
			<-release
		}
		srvOK(w, r)
	}))
	url, c := srvTestServer(t, h)

	slow := make(chan int)
	go func() {
		resp, err := c.Get(url + "/slow")
		if err == nil {
			resp.Body.Close()
			slow <- resp.StatusCode
			return
		}
		slow <- 0
	}()
	<-entered
	resp, body := srvDo(t, c, http.MethodGet, url+"/fast", "", nil)
	srvRequireProblem(t, resp, body, http.StatusServiceUnavailable, TypeConcurrencyLimit, "bulkhead:", "httpmw-test")
	require.Equal(t, "1", resp.Header.Get("Retry-After"), "100ms rounded up")
	close(release)
	require.Equal(t, http.StatusOK, <-slow)
	require.Zero(t, bh.InFlight())

	resp, body = srvDo(t, c, http.MethodGet, url+"/fast", "", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "ok", body)
}

func TestBulkheadTimeoutRetryAfter(t *testing.T) {
	clk := clock.NewFake(time.Unix(0, 0))
	bh := bulkhead.New("httpmw-q", bulkhead.WithLimit(0), bulkhead.WithQueue(1),
		bulkhead.WithMaxWait(2500*time.Millisecond), bulkhead.WithClock(clk))
	done := make(chan *httptest.ResponseRecorder)
	go func() {
		rec := httptest.NewRecorder()
		Bulkhead(bh)(http.HandlerFunc(srvOK)).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
		done <- rec
	}()
	clk.WaitForTimers(1)
	clk.Advance(2500 * time.Millisecond)
	rec := <-done
	require.Equal(t, http.StatusServiceUnavailable, rec.Code)
	require.Equal(t, "3", rec.Header().Get("Retry-After"))
}

func TestBulkheadCanceledWhileQueuedLeaksNoSlot(t *testing.T) {
	clk := clock.NewFake(time.Unix(0, 0))
	bh := bulkhead.New("httpmw-q", bulkhead.WithLimit(1), bulkhead.WithQueue(4),
		bulkhead.WithMaxWait(time.Hour), bulkhead.WithClock(clk))
	holder, err := bh.Acquire(context.Background())
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.Background())
	ran := false
	done := make(chan *httptest.ResponseRecorder)
	go func() {
		rec := httptest.NewRecorder()
		Bulkhead(bh)(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { ran = true })).
			ServeHTTP(rec, httptest.NewRequestWithContext(ctx, http.MethodGet, "/", nil))
		done <- rec
	}()
	clk.WaitForTimers(1)
	require.Equal(t, 1, bh.Queued())
	cancel()
	rec := <-done
	require.False(t, ran)
	require.Equal(t, http.StatusServiceUnavailable, rec.Code)
	require.Empty(t, rec.Header().Get("Retry-After"))
	require.Zero(t, bh.Queued())
	holder.Release()
	require.Zero(t, bh.InFlight(), "no slot leaked")
}

func TestBulkheadReleasesOnPanic(t *testing.T) {
	bh := bulkhead.New("httpmw-p", bulkhead.WithLimit(1))
	h := Bulkhead(bh)(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("x") }))
	require.PanicsWithValue(t, "x", func() {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
	})
	require.Zero(t, bh.InFlight())
}
