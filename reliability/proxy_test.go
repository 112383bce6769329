package reliability

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
)

// faultProxy is a toxiproxy proxy run in this process, between the code
// under test and a real server (an httptest server, Redis, PostgreSQL). It
// listens on a port of 127.0.0.1 chosen by the kernel and keeps that port
// across Disable and Enable, so clients reconnect to the same address.
//
// Faults go through it only: the shared Redis and PostgreSQL servers are
// never stopped.
type faultProxy struct {
	t     testing.TB
	proxy *toxiproxy.Proxy
	addr  string
}

var proxySeq atomic.Int64

// newFaultProxy starts a proxy to upstream (host:port) and stops it, closing
// every connection through it, when the test ends.
func newFaultProxy(t testing.TB, upstream string) *faultProxy {
	t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	p := toxiproxy.NewProxy(srv, name+"-"+strconv.FormatInt(proxySeq.Add(1), 10), "127.0.0.1:0", upstream)
	require.NoError(t, p.Start())
	f := &faultProxy{t: t, proxy: p, addr: p.Listen}
	t.Cleanup(func() {
		// Toxics first: a latency toxic would otherwise hold its goroutines
		// for the rest of its delay after the connections close.
		p.Toxics.ResetToxics(context.Background())
		p.Stop()
	})
	return f
}

// Addr is the proxy's listening address.
func (f *faultProxy) Addr() string { return f.addr }

// Disable closes the listener and every connection through the proxy: new
// connections are refused until Enable.
func (f *faultProxy) Disable() { f.proxy.Stop() }

// Enable listens again, on the same address.
func (f *faultProxy) Enable() {
	f.t.Helper()
	f.proxy.Lock()
	f.proxy.Listen = f.addr
	f.proxy.Unlock()
	require.NoError(f.t, f.proxy.Start())
}

// toxic describes one toxiproxy toxic. Stream is "upstream" (client to
// server) or "downstream" (server to client); Toxicity is the fraction of
// connections it applies to (1 when zero).
type toxic struct {
	Name       string         `json:"name"`
	Type       string         `json:"type"`
	Stream     string         `json:"stream"`
	Toxicity   float32        `json:"toxicity"`
	Attributes map[string]any `json:"attributes"`
}

// AddToxic adds a toxic to new and existing connections.
func (f *faultProxy) AddToxic(tx toxic) {
	f.t.Helper()
	if tx.Toxicity == 0 {
		tx.Toxicity = 1
	}
	data, err := json.Marshal(tx)
	require.NoError(f.t, err)
	_, err = f.proxy.Toxics.AddToxicJson(strings.NewReader(string(data)))
	require.NoError(f.t, err)
}

// RemoveToxic removes the named toxic. Removing a timeout toxic closes the
// connections it held.
func (f *faultProxy) RemoveToxic(name string) {
	f.t.Helper()
	require.NoError(f.t, f.proxy.Toxics.RemoveToxic(context.Background(), name))
}
