package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestBuiltInUpstream runs the program as `go run ./examples/httpclient`
// does, on a faster schedule, and checks what it claims: lost responses are
// retried and replayed, the breaker opens during the outage, and no charge
// is ever made twice.
func TestBuiltInUpstream(t *testing.T) {
	cfg, err := parseFlags([]string{"-interval=10ms", "-open=150ms"}, io.Discard)
	require.NoError(t, err)
	var out bytes.Buffer
	s, err := run(context.Background(), cfg, &out)
	require.NoError(t, err)
	t.Log("\n" + out.String())

	require.Equal(t, 30, s.Requests)
	require.Zero(t, s.Duplicates, "a retried POST must not charge twice")
	require.Equal(t, 3, s.Replayed, "requests 7-9 lose their first response and are replayed")
	require.GreaterOrEqual(t, s.Charges, 9, "requests 1-9 are charged")
	require.GreaterOrEqual(t, s.Opened, 1, "the outage opens the breaker")
	require.Less(t, s.Attempts, int64(3*s.Requests), "the breaker and the budget keep attempts down")
	require.Contains(t, out.String(), "closed → open")
}

// TestTargetURL points the program at an upstream that is always down:
// each request costs at most a few attempts, and -header is sent.
func TestTargetURL(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.Header.Get("Authorization") != "Bearer alice" || r.Header.Get("Idempotency-Key") == "" {
			http.Error(w, "want a bearer token and an idempotency key", http.StatusBadRequest)
			return
		}
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	defer srv.Close()

	cfg, err := parseFlags([]string{"-url=" + srv.URL, "-n=10", "-interval=0", "-open=1m",
		"-header=Authorization: Bearer alice"}, io.Discard)
	require.NoError(t, err)
	var out bytes.Buffer
	s, err := run(context.Background(), cfg, &out)
	require.NoError(t, err)
	t.Log("\n" + out.String())

	require.Equal(t, 10, s.Requests)
	require.Equal(t, 10, s.Failed)
	require.Equal(t, -1, s.Charges)
	require.Equal(t, hits.Load(), s.Attempts)
	require.LessOrEqual(t, s.Attempts, int64(5), "the breaker opens after 4 failures; the open breaker sends nothing")
	require.Equal(t, 1, s.Opened)
}

func TestFlags(t *testing.T) {
	for _, args := range [][]string{{"-n=0"}, {"-open=0s"}, {"-header=nocolon"}, {"-nope"}, {"extra"}} {
		var stderr bytes.Buffer
		_, err := parseFlags(args, &stderr)
		require.Error(t, err, "%v", args)
		require.Contains(t, stderr.String(), "-url", "%v: usage is printed", args)
	}
	c, err := parseFlags(nil, io.Discard)
	require.NoError(t, err)
	require.Empty(t, c.url)
	require.Equal(t, 300*time.Millisecond, c.open)
}
