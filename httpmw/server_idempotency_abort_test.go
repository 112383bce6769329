package httpmw

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestIdempotencyProxyLostResponseIsNotRunAgain: the case NotReplayable was
// made for. Behind httputil.ReverseProxy (which flushes a streamed
// upstream response), a client whose connection breaks mid-response is
// exactly the client that retries; ReverseProxy then aborts the response with
// panic(http.ErrAbortHandler). Idempotency used to release the key as for any
// panic, although the header was flushed and the upstream's effect had
// happened, and the retry ran the upstream a second time.
func TestIdempotencyProxyLostResponseIsNotRunAgain(t *testing.T) {
	var upstreamRuns atomic.Int32
	proceed := make(chan struct{})
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if upstreamRuns.Add(1) > 1 {
			w.WriteHeader(http.StatusCreated)
			_, _ = io.WriteString(w, "second run")
			return
		}
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, "charged;")
		http.NewResponseController(w).Flush()
		<-proceed
		chunk := strings.Repeat("x", 64<<10)
		for range 256 { // 16 MiB: the proxy's writes to the gone client fail
			if _, err := io.WriteString(w, chunk); err != nil {
				return
			}
		}
	}))
	t.Cleanup(upstream.Close)
	u, err := url.Parse(upstream.URL)
	require.NoError(t, err)
	proxy := httputil.NewSingleHostReverseProxy(u)
	proxy.ErrorLog = nil

	handlerDone := make(chan any, 4)
	mw := Idempotency(srvTestGuard(t), WithoutScope())(proxy)
	front := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			p := recover()
			handlerDone <- p
			if p != nil {
				panic(p)
			}
		}()
		mw.ServeHTTP(w, r)
	})
	srvURL, c := srvTestServer(t, front)

	resp := srvStartCharged(t, c, srvURL) // the upstream ran: the client saw the start of its answer
	// The client loses the connection mid-response.
	_ = resp.Body.Close()
	close(proceed)
	p := <-handlerDone
	require.Equal(t, http.ErrAbortHandler, p, "ReverseProxy aborted the response it could not finish")

	resp2, body := srvDo(t, c, http.MethodPost, srvURL, "a", srvKeyHeader("k"))
	<-handlerDone
	require.Equal(t, int32(1), upstreamRuns.Load(),
		"the retry of a flushed response ran the upstream again (got %d %q)", resp2.StatusCode, body)
}

// TestIdempotencyFlushedThenAbortedIsNotRunAgain: the same without a proxy. A
// handler that has flushed its status and part of its body and then aborts
// with http.ErrAbortHandler (the documented way to cut a streamed response
// short) has run; its key used to be released, and the repeat ran it again.
func TestIdempotencyFlushedThenAbortedIsNotRunAgain(t *testing.T) {
	h, runs := srvScripted(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, "part1,")
		_ = http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler)
	}, func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusTeapot) // must never run
	})
	srvURL, c := srvTestServer(t, Idempotency(srvTestGuard(t), WithoutScope())(h))
	req, err := http.NewRequest(http.MethodPost, srvURL, strings.NewReader("a"))
	require.NoError(t, err)
	req.Header.Set("Idempotency-Key", "k")
	resp, err := c.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusCreated, resp.StatusCode, "the status reached the client")
	_, _ = io.ReadAll(resp.Body)
	_ = resp.Body.Close()

	resp, body := srvDo(t, c, http.MethodPost, srvURL, "a", srvKeyHeader("k"))
	require.Equal(t, int32(1), runs.Load(), "the handler ran twice (repeat got %d %q)", resp.StatusCode, body)
}

// TestIdempotencyUnflushedButSentThenAbortedIsNotRunAgain: a handler (or a
// ReverseProxy relaying a Content-Length response, which never flushes)
// writes more than net/http buffers, so its status and the start of its body
// reach the client without any Flush, then aborts with http.ErrAbortHandler.
// The handler ran and the client saw its answer begin; the key used to be
// released because nothing was flushed, and the client's retry ran the
// handler a second time.
func TestIdempotencyUnflushedButSentThenAbortedIsNotRunAgain(t *testing.T) {
	clientRead := make(chan struct{})
	h, runs := srvScripted(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", "1048576")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, "charged;"+strings.Repeat("x", 64<<10)) // past net/http's buffers: sent
		<-clientRead
		panic(http.ErrAbortHandler)
	}, func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusTeapot) // must never run
	})
	mwDone := make(chan struct{}, 2)
	mw := Idempotency(srvTestGuard(t), WithoutScope())(h)
	front := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() { mwDone <- struct{}{} }()
		mw.ServeHTTP(w, r)
	})
	srvURL, c := srvTestServer(t, front)

	resp := srvStartCharged(t, c, srvURL) // with no Flush
	close(clientRead)
	<-mwDone
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()

	resp2, body := srvDo(t, c, http.MethodPost, srvURL, "a", srvKeyHeader("k"))
	<-mwDone
	require.Equal(t, int32(1), runs.Load(),
		"the retry of a response that reached the client ran the handler again (got %d %q)", resp2.StatusCode, body)
}

// srvStartCharged sends a keyed POST to url and reads the start of its 201
// answer, "charged;", leaving the rest of the body unread.
func srvStartCharged(t *testing.T, c *http.Client, url string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader("a"))
	require.NoError(t, err)
	req.Header.Set("Idempotency-Key", "k")
	resp, err := c.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	buf := make([]byte, len("charged;"))
	_, err = io.ReadFull(resp.Body, buf)
	require.NoError(t, err)
	require.Equal(t, "charged;", string(buf), "the client saw the handler's answer begin")
	return resp
}
