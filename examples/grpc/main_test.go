package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestInProcess runs server and client as `go run ./examples/grpc` does,
// with a shorter outage, and checks each step's claim.
func TestInProcess(t *testing.T) {
	cfg, err := parseFlags([]string{"-outage=700ms", "-open=500ms"}, io.Discard)
	require.NoError(t, err)
	var out bytes.Buffer
	s, err := run(context.Background(), cfg, &out)
	require.NoError(t, err)
	t.Log("\n" + out.String())

	require.Positive(t, s.PushedBack, "step 1: rate-limited calls are retried after the pushback")
	require.Equal(t, 3, s.Replayed, "step 2: every lost answer is replayed")
	require.Zero(t, s.Duplicates, "no charge is made twice")
	require.Positive(t, s.Opened, "step 3: the outage opens the client's breaker")
	require.Positive(t, s.FailedFast, "step 3: the open breaker fails calls fast")
	require.Greater(t, s.OK, 19, "step 3: calls succeed again after the outage")
	require.Equal(t, s.OK, s.Charges, "each successful call made exactly one charge")
}

// TestTwoProcesses runs the server alone (-serve) and the client alone
// (-target), as two terminals would.
func TestTwoProcesses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())

	scfg, err := parseFlags([]string{"-serve=" + addr}, io.Discard)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	var sout bytes.Buffer
	go func() {
		_, err := run(ctx, scfg, &sout)
		served <- err
	}()

	ccfg, err := parseFlags([]string{"-target=" + addr, "-outage=200ms", "-open=100ms"}, io.Discard)
	require.NoError(t, err)
	var cout bytes.Buffer
	s, err := run(context.Background(), ccfg, &cout)
	require.NoError(t, err)
	cancel()
	require.NoError(t, <-served)
	t.Log("\n" + cout.String())

	require.Equal(t, 3, s.Replayed)
	require.Zero(t, s.Charges, "a client-only run does not see the server's ledger")
	require.True(t, strings.HasPrefix(sout.String(), "server listening on "+addr))
}

func TestFlags(t *testing.T) {
	for _, args := range [][]string{{"-serve=a:1", "-target=b:2"}, {"-outage=0s"}, {"-nope"}, {"extra"}} {
		var stderr bytes.Buffer
		_, err := parseFlags(args, &stderr)
		require.Error(t, err, "%v", args)
		require.Contains(t, stderr.String(), "-target", "%v: usage is printed", args)
	}
	c, err := parseFlags(nil, io.Discard)
	require.NoError(t, err)
	require.Equal(t, time.Second, c.outage)
}
