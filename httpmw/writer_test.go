package httpmw

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/idempotency"
)

// srvAllMiddleware returns each server middleware alone and all of them
// chained, for tests that must hold through every one.
func srvAllMiddleware(t *testing.T) map[string]func(http.Handler) http.Handler {
	t.Helper()
	l, _ := srvTestLimiter(t)
	g := idempotency.New("httpmw-writer", nil)
	return map[string]func(http.Handler) http.Handler{
		"breaker":     Breaker(srvTestBreaker(t)),
		"bulkhead":    Bulkhead(bulkhead.New("httpmw-writer")),
		"ratelimit":   RateLimit(l),
		"idempotency": Idempotency(g, WithoutScope()),
		"chain": Chain(RateLimit(l), Bulkhead(bulkhead.New("httpmw-writer")), Breaker(srvTestBreaker(t)),
			Idempotency(g, WithoutScope())),
	}
}

func TestFlushThroughEveryMiddleware(t *testing.T) {
	for name, mw := range srvAllMiddleware(t) {
		t.Run(name, func(t *testing.T) {
			clientGotFirst := make(chan struct{})
			flushErr := make(chan error, 1)
			h := mw(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				_, _ = io.WriteString(w, "first\n")
				flushErr <- http.NewResponseController(w).Flush()
				select {
				case <-clientGotFirst:
				case <-time.After(10 * time.Second):
				}
				_, _ = io.WriteString(w, "second\n")
			}))
			url, c := srvTestServer(t, h)
			req, err := http.NewRequest(http.MethodPost, url, strings.NewReader("body"))
			require.NoError(t, err)
			req.Header.Set("Idempotency-Key", "flush-"+name)
			resp, err := c.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			require.NoError(t, <-flushErr)
			br := bufio.NewReader(resp.Body)
			line, err := br.ReadString('\n')
			require.NoError(t, err)
			require.Equal(t, "first\n", line, "the flushed part arrives before the handler returns")
			close(clientGotFirst)
			rest, err := io.ReadAll(br)
			require.NoError(t, err)
			require.Equal(t, "second\n", string(rest))
		})
	}
}

func TestResponseControllerThroughEveryMiddleware(t *testing.T) {
	for name, mw := range srvAllMiddleware(t) {
		t.Run(name, func(t *testing.T) {
			errs := make(chan error, 2)
			h := mw(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				rc := http.NewResponseController(w)
				errs <- rc.SetWriteDeadline(time.Now().Add(time.Minute))
				errs <- rc.EnableFullDuplex()
			}))
			url, c := srvTestServer(t, h)
			resp, _ := srvDo(t, c, http.MethodPost, url, "x", http.Header{"Idempotency-Key": {"rc-" + name}})
			require.Equal(t, http.StatusOK, resp.StatusCode)
			require.NoError(t, <-errs)
			require.NoError(t, <-errs)
		})
	}
}

func TestHijackThroughBreaker(t *testing.T) {
	b := srvTestBreaker(t)
	h := Breaker(b)(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 6\r\nConnection: close\r\n\r\nraw500")
		_ = brw.Flush()
	}))
	url, c := srvTestServer(t, h)
	resp, body := srvDo(t, c, http.MethodGet, url, "", nil)
	require.Equal(t, http.StatusInternalServerError, resp.StatusCode)
	require.Equal(t, "raw500", body)
	require.Zero(t, b.Counts().Calls, "a hijacked connection's outcome is unknown: ignored")
}

// srvPlainWriter is a ResponseWriter with no optional interface.
type srvPlainWriter struct {
	h      http.Header
	status int
	body   strings.Builder
}

func (p *srvPlainWriter) Header() http.Header         { return p.h }
func (p *srvPlainWriter) WriteHeader(code int)        { p.status = code }
func (p *srvPlainWriter) Write(b []byte) (int, error) { return p.body.Write(b) }

// srvReaderFromWriter adds io.ReaderFrom.
type srvReaderFromWriter struct {
	srvPlainWriter
	readFrom int
}

func (p *srvReaderFromWriter) ReadFrom(r io.Reader) (int64, error) {
	p.readFrom++
	return io.Copy(&p.body, r)
}

// srvNoFlushWriter has FlushError, as a wrapper of a writer that cannot
// flush may, and answers http.ErrNotSupported.
type srvNoFlushWriter struct{ srvPlainWriter }

func (*srvNoFlushWriter) FlushError() error { return http.ErrNotSupported }

func TestWriterFlushNotSupportedByAWrapper(t *testing.T) {
	sw := &srvWriter{rw: &srvNoFlushWriter{srvPlainWriter{h: http.Header{}}}}
	require.ErrorIs(t, sw.FlushError(), http.ErrNotSupported)
	require.False(t, sw.flushed, "a flush that could not happen leaves the response storable")
	require.Zero(t, sw.status)
}

func TestWriterWithoutOptionalInterfaces(t *testing.T) {
	pw := &srvPlainWriter{h: http.Header{}}
	sw := &srvWriter{rw: pw}
	require.Same(t, pw, sw.Unwrap())
	require.ErrorIs(t, sw.FlushError(), http.ErrNotSupported)
	sw.Flush()
	require.False(t, sw.flushed, "a flush that could not happen leaves the response storable")
	require.Zero(t, sw.status, "and its header unwritten")
	_, _, err := sw.Hijack()
	require.ErrorIs(t, err, http.ErrNotSupported)
	require.ErrorIs(t, http.NewResponseController(sw).Flush(), http.ErrNotSupported)

	n, err := sw.ReadFrom(strings.NewReader("abc"))
	require.NoError(t, err)
	require.Equal(t, int64(3), n)
	require.Equal(t, "abc", pw.body.String())
	require.Equal(t, http.StatusOK, sw.srvStatus())
}

func TestWriterReadFromDelegates(t *testing.T) {
	rf := &srvReaderFromWriter{srvPlainWriter: srvPlainWriter{h: http.Header{}}}
	sw := &srvWriter{rw: rf}
	sw.WriteHeader(http.StatusAccepted)
	// A reader without WriteTo, so that io.Copy asks the writer's ReadFrom.
	_, err := io.Copy(sw, struct{ io.Reader }{strings.NewReader("payload")})
	require.NoError(t, err)
	require.Equal(t, 1, rf.readFrom)
	require.Equal(t, http.StatusAccepted, sw.srvStatus())
	require.Equal(t, "payload", rf.body.String())

	// Capturing goes through Write, so the body is seen.
	rf2 := &srvReaderFromWriter{srvPlainWriter: srvPlainWriter{h: http.Header{"Content-Type": {"text/plain"}}}}
	sw2 := &srvWriter{rw: rf2, capturing: true, capLimit: 100, capNames: []string{"Content-Type"}}
	_, err = io.Copy(sw2, struct{ io.Reader }{strings.NewReader("payload")})
	require.NoError(t, err)
	require.Zero(t, rf2.readFrom)
	require.Equal(t, "payload", string(sw2.capBody))
	require.Equal(t, []idempotency.Field{{Name: "Content-Type", Value: "text/plain"}}, sw2.capHeader)
}

func TestWriterFlushViaFlusherInChain(t *testing.T) {
	rec := httptest.NewRecorder()
	outer := &srvWriter{rw: &srvWriter{rw: rec}}
	require.NoError(t, http.NewResponseController(outer).Flush())
	require.True(t, rec.Flushed)
	require.True(t, outer.flushed)
}

func TestBreakerWriterIsPooled(t *testing.T) {
	b := breaker.New("pool")
	var seen []*srvWriter
	h := Breaker(b)(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		sw, ok := w.(*srvWriter)
		require.True(t, ok)
		require.Zero(t, sw.status, "a reused wrapper starts clean")
		seen = append(seen, sw)
		w.WriteHeader(http.StatusTeapot)
	}))
	for range 3 {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
	}
	require.Len(t, seen, 3)
}
