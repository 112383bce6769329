package main

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestDemoShortRun runs the whole demo, both runs, on a short schedule and
// checks the claims its table makes.
func TestDemoShortRun(t *testing.T) {
	opts, err := parseFlags([]string{"-duration", "4s", "-rate", "40", "-json"}, &bytes.Buffer{})
	require.NoError(t, err)
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), opts, &out))

	var got []summary
	require.NoError(t, json.Unmarshal(out.Bytes(), &got), out.String())
	require.Len(t, got, 2)
	naive, protected := got[0], got[1]
	require.Equal(t, "net/http", naive.Mode)
	require.Equal(t, "bulwark", protected.Mode)

	t.Logf("net/http: %+v", naive)
	t.Logf("bulwark:  %+v", protected)
	require.Zero(t, protected.DuplicateCharges, "idempotency keys must prevent every duplicate charge")
	require.Positive(t, naive.DuplicateCharges, "the naive client should show the problem the demo is about")
	require.Less(t, protected.OutageCalls, naive.OutageCalls, "breaker and retry budget must reduce load on the failing upstream")
	require.Positive(t, protected.Succeeded)
	require.Equal(t, protected.Requests, protected.Succeeded+protected.Errors)
}

func TestFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-rate", "0"},
		{"-duration", "1s"},
		{"-store", "mongo"},
		{"-nope"},
		{"extra"},
	} {
		var stderr bytes.Buffer
		_, err := parseFlags(args, &stderr)
		require.Error(t, err, "%v", args)
		require.Contains(t, stderr.String(), "usage: demo", "%v", args)
	}
	o, err := parseFlags(nil, &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, 12*time.Second, o.duration)
	require.Equal(t, "memory", o.store)
}

func TestSchedule(t *testing.T) {
	start := time.Unix(0, 0)
	s := newSchedule(start, 20*time.Second)
	require.Equal(t, Healthy, s.at(start))
	require.Equal(t, Outage, s.at(start.Add(5*time.Second)))
	require.Equal(t, Slow, s.at(start.Add(12*time.Second)))
	require.Equal(t, Recovered, s.at(start.Add(15*time.Second)))
	require.Equal(t, Recovered, s.at(start.Add(time.Minute)))
	require.Equal(t, 15*time.Second, s.phaseStart(Recovered))
}
