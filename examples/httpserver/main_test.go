package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/bulwark-go/bulwark/internal/testenv"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestSmoke runs the server as main does, on a free port, once per store,
// and checks what a client sees: an order created once despite a repeated
// POST, the rate limit, and the metrics. Redis and PostgreSQL run when their
// test variables are set (always in CI).
func TestSmoke(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		smoke(t, "-store=memory")
	})
	t.Run("redis", func(t *testing.T) {
		addr := testenv.RedisAddr(t)
		smoke(t, "-store=redis", "-redis-addr="+addr, fmt.Sprintf("-redis-prefix=bulwark:test:httpserver:%d:", time.Now().UnixNano()))
	})
	t.Run("postgres", func(t *testing.T) {
		url := testenv.PostgresURL(t)
		table := fmt.Sprintf("bulwark_test_httpserver_%d", time.Now().UnixNano())
		t.Cleanup(func() {
			pool, err := pgxpool.New(context.Background(), url)
			require.NoError(t, err)
			defer pool.Close()
			_, err = pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+table)
			require.NoError(t, err)
		})
		smoke(t, "-store=postgres", "-postgres-url="+url, "-postgres-table="+table)
	})
}

func smoke(t *testing.T, storeFlags ...string) {
	args := append([]string{"-addr=127.0.0.1:0", "-rate=1", "-burst=6"}, storeFlags...)
	cfg, err := parseFlags(args, io.Discard)
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, cfg, slog.New(slog.NewTextHandler(t.Output(), nil)), func(a string) { addrc <- a })
	}()
	var base string
	select {
	case a := <-addrc:
		base = "http://" + a
	case err := <-done:
		t.Fatalf("server did not start: %v", err)
	}
	tr := &http.Transport{}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	defer func() {
		tr.CloseIdleConnections()
		cancel()
		require.NoError(t, <-done, "graceful shutdown")
	}()

	send := func(method, path, token, key, body string) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, strings.NewReader(body))
		require.NoError(t, err)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		resp, err := client.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp, b
	}

	// Budget of 6 requests per client IP (burst): 1-4 below, then 429.
	// 1. A new order.
	const order = `{"item":"book","quantity":2}`
	first, firstBody := send("POST", "/orders", "alice", `"order-1"`, order)
	require.Equal(t, http.StatusCreated, first.StatusCode, string(firstBody))
	require.Empty(t, first.Header.Get("Idempotent-Replayed"))
	require.NotEmpty(t, first.Header.Get("RateLimit"))
	var created struct{ ID string }
	require.NoError(t, json.Unmarshal(firstBody, &created))

	// 2. The client retries it (a lost response, say): the stored answer.
	again, againBody := send("POST", "/orders", "alice", `"order-1"`, order)
	require.Equal(t, http.StatusCreated, again.StatusCode)
	require.Equal(t, "true", again.Header.Get("Idempotent-Replayed"))
	require.Equal(t, firstBody, againBody, "the replay is byte for byte the first response")
	require.Equal(t, first.Header.Get("Location"), again.Header.Get("Location"))

	// 3. The same key with another body is a mistake: 422, nothing runs.
	reused, _ := send("POST", "/orders", "alice", `"order-1"`, `{"item":"pen","quantity":1}`)
	require.Equal(t, http.StatusUnprocessableEntity, reused.StatusCode)

	// 4. The order exists once, for its owner only.
	got, gotBody := send("GET", "/orders/"+created.ID, "alice", "", "")
	require.Equal(t, http.StatusOK, got.StatusCode)
	require.JSONEq(t, string(firstBody), string(gotBody))

	// Then the per-IP quota runs out: 429 with Retry-After.
	var limited *http.Response
	for range 10 {
		resp, _ := send("GET", "/orders/"+created.ID, "bob", "", "")
		if resp.StatusCode == http.StatusTooManyRequests {
			limited = resp
			break
		}
		require.Equal(t, http.StatusNotFound, resp.StatusCode, "bob cannot see alice's order")
	}
	require.NotNil(t, limited, "the rate limit never answered 429")
	require.NotEmpty(t, limited.Header.Get("Retry-After"))
	require.Equal(t, "application/problem+json", limited.Header.Get("Content-Type"))

	// /metrics is not rate limited and shows all of it.
	mresp, metrics := send("GET", "/metrics", "", "", "")
	require.Equal(t, http.StatusOK, mresp.StatusCode)
	for _, want := range []string{
		`orders_created_total 1`,
		`bulwark_idempotency_requests_total{name="orders",result="new"} 1`,
		`bulwark_idempotency_requests_total{name="orders",result="replayed"} 1`,
		`bulwark_idempotency_requests_total{name="orders",result="mismatch"} 1`,
		`bulwark_ratelimit_decisions_total{decision="denied",name="orders-api"} 1`,
		`bulwark_breaker_state{name="orders-api",state="closed"} 1`,
		`bulwark_bulkhead_limit{name="orders-api"} 64`,
	} {
		require.True(t, bytes.Contains(metrics, []byte(want)), "/metrics lacks %q", want)
	}
}

func TestFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-store=mongo"},
		{"-rate=0"},
		{"-burst=0"},
		{"-nope"},
		{"extra"},
	} {
		var stderr bytes.Buffer
		_, err := parseFlags(args, &stderr)
		require.Error(t, err, "%v", args)
		require.Contains(t, stderr.String(), "-addr", "%v: usage is printed", args)
	}
	c, err := parseFlags(nil, io.Discard)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:8080", c.addr)
	require.Equal(t, "memory", c.store)
}
