package httpmw

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// srvTestServer serves h on loopback and returns its URL and a client; both
// are closed when the test ends.
func srvTestServer(t *testing.T, h http.Handler) (string, *http.Client) {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	c := s.Client()
	t.Cleanup(c.CloseIdleConnections)
	return s.URL, c
}

// srvDo sends a request and returns the response with its body read.
func srvDo(t *testing.T, c *http.Client, method, url string, body string, header http.Header) (*http.Response, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	require.NoError(t, err)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(b)
}

// srvRequireProblem checks that resp is a problem+json of the given type and
// status and that body holds none of the forbidden strings.
func srvRequireProblem(t *testing.T, resp *http.Response, body string, status int, typ string, forbidden ...string) Problem {
	t.Helper()
	require.Equal(t, status, resp.StatusCode, body)
	require.Equal(t, "application/problem+json", resp.Header.Get("Content-Type"))
	var p Problem
	require.NoError(t, json.Unmarshal([]byte(body), &p))
	require.Equal(t, typ, p.Type)
	require.Equal(t, status, p.Status)
	require.NotEmpty(t, p.Title)
	require.NotEmpty(t, p.Detail)
	for _, f := range forbidden {
		require.NotContains(t, body, f)
	}
	var raw map[string]any
	require.NoError(t, json.Unmarshal([]byte(body), &raw))
	require.ElementsMatch(t, []string{"type", "title", "status", "detail"}, keysOf(raw))
	return p
}

func keysOf(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func srvOK(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }

func TestChainOrder(t *testing.T) {
	var order []string
	mw := func(name string) func(http.Handler) http.Handler {
		return func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				order = append(order, name)
				next.ServeHTTP(w, r)
			})
		}
	}
	h := Chain(mw("a"), nil, mw("b"), mw("c"))(http.HandlerFunc(srvOK))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	require.Equal(t, []string{"a", "b", "c"}, order)
	require.Equal(t, "ok", rec.Body.String())

	rec = httptest.NewRecorder()
	Chain()(http.HandlerFunc(srvOK)).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	require.Equal(t, "ok", rec.Body.String())
}

func TestWithErrorWriter(t *testing.T) {
	type seen struct {
		p   Problem
		hdr string
	}
	var got seen
	ew := func(w http.ResponseWriter, _ *http.Request, p Problem) {
		got = seen{p: p, hdr: w.Header().Get("Retry-After")}
		w.WriteHeader(p.Status)
		_, _ = io.WriteString(w, "custom")
	}
	bh := srvFullBulkhead(t)
	h := Bulkhead(bh, WithErrorWriter(ew))(http.HandlerFunc(srvOK))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	require.Equal(t, http.StatusServiceUnavailable, rec.Code)
	require.Equal(t, "custom", rec.Body.String())
	require.Equal(t, TypeConcurrencyLimit, got.p.Type)
	require.Error(t, got.p.Err, "the custom writer sees the internal error, for logging")
	require.Equal(t, "1", got.hdr, "Retry-After is set before the writer runs")
}

func TestWriteProblem(t *testing.T) {
	rec := httptest.NewRecorder()
	rec.Header().Set("Content-Encoding", "gzip")
	WriteProblem(rec, nil, Problem{Type: TypeRateLimited, Title: "T", Status: 429, Detail: "d <&>", Err: io.ErrUnexpectedEOF})
	resp := rec.Result()
	p := srvRequireProblem(t, resp, rec.Body.String(), 429, TypeRateLimited, io.ErrUnexpectedEOF.Error())
	require.Equal(t, "d <&>", p.Detail)
	require.Equal(t, "no-store", resp.Header.Get("Cache-Control"))
	require.Empty(t, resp.Header.Get("Content-Encoding"))
}
