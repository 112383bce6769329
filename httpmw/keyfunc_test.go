package httpmw

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestKeyByIP(t *testing.T) {
	trusted := WithTrustedProxies(netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8:1::/48"))
	tests := []struct {
		name   string
		opts   []IPOption
		remote string
		xff    []string
		fwd    []string
		want   string
		err    bool
	}{
		{name: "ipv4", remote: "192.0.2.1:1234", want: "192.0.2.1"},
		{name: "ipv6", remote: "[2001:db8::1]:443", want: "2001:db8::1"},
		{name: "no port", remote: "192.0.2.1", want: "192.0.2.1"},
		{name: "ipv6 no port", remote: "2001:db8::1", want: "2001:db8::1"},
		{name: "not an address", remote: "@", err: true},
		{name: "empty", remote: "", err: true},
		{name: "unix socket name", remote: "/run/app.sock", err: true},
		{name: "ipv6 with zone", remote: "[fe80::1%eth0]:80", want: "fe80::1%eth0"},
		{name: "xff ignored by default", remote: "192.0.2.1:1", xff: []string{"203.0.113.9"}, want: "192.0.2.1"},
		{name: "spoofed xff from untrusted peer", opts: []IPOption{trusted},
			remote: "192.0.2.1:1", xff: []string{"203.0.113.9"}, want: "192.0.2.1"},
		{name: "xff from trusted proxy", opts: []IPOption{trusted},
			remote: "10.1.1.1:1", xff: []string{"203.0.113.9"}, want: "203.0.113.9"},
		{name: "client-written prefix is skipped", opts: []IPOption{trusted},
			remote: "10.1.1.1:1", xff: []string{"1.1.1.1, 203.0.113.9, 10.2.2.2"}, want: "203.0.113.9"},
		{name: "several field lines", opts: []IPOption{trusted},
			remote: "10.1.1.1:1", xff: []string{"1.1.1.1", "203.0.113.9", "10.2.2.2"}, want: "203.0.113.9"},
		{name: "ipv6 hop with port, trusted ipv6 peer", opts: []IPOption{trusted},
			remote: "[2001:db8:1::5]:80", xff: []string{"[2001:db8:9::1]:555"}, want: "2001:db8:9::1"},
		{name: "garbage stops the walk at the last trusted hop", opts: []IPOption{trusted},
			remote: "10.1.1.1:1", xff: []string{"203.0.113.9, unknown, 10.2.2.2"}, want: "10.2.2.2"},
		{name: "all trusted: leftmost", opts: []IPOption{trusted},
			remote: "10.1.1.1:1", xff: []string{"10.3.3.3, 10.2.2.2"}, want: "10.3.3.3"},
		{name: "trusted proxy without header", opts: []IPOption{trusted}, remote: "10.1.1.1:1", want: "10.1.1.1"},
		{name: "ipv4-mapped is ipv4", opts: []IPOption{trusted},
			remote: "[::ffff:10.1.1.1]:1", xff: []string{"::ffff:203.0.113.9"}, want: "203.0.113.9"},
		{name: "forwarded ignored unless chosen", opts: []IPOption{trusted},
			remote: "10.1.1.1:1", fwd: []string{"for=203.0.113.9"}, want: "10.1.1.1"},
		{name: "forwarded", opts: []IPOption{trusted, WithForwardedHeader()},
			remote: "10.1.1.1:1", xff: []string{"198.51.100.1"},
			fwd:  []string{`for=1.1.1.1;proto=http, For="[2001:db8:cafe::17]:4711";by=10.0.0.1, for=10.2.2.2`},
			want: "2001:db8:cafe::17"},
		{name: "forwarded quoted separators", opts: []IPOption{trusted, WithForwardedHeader()},
			remote: "10.1.1.1:1", fwd: []string{`for=203.0.113.7;host="a,b;c", for=10.2.2.2`}, want: "203.0.113.7"},
		{name: "forwarded obfuscated", opts: []IPOption{trusted, WithForwardedHeader()},
			remote: "10.1.1.1:1", fwd: []string{"for=203.0.113.7, for=_hidden, for=10.2.2.2"}, want: "10.2.2.2"},
		{name: "forwarded element without for", opts: []IPOption{trusted, WithForwardedHeader()},
			remote: "10.1.1.1:1", fwd: []string{"for=203.0.113.7, proto=https"}, want: "10.1.1.1"},
		{name: "forwarded from untrusted peer", opts: []IPOption{trusted, WithForwardedHeader()},
			remote: "192.0.2.1:1", fwd: []string{"for=203.0.113.7"}, want: "192.0.2.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.RemoteAddr = tt.remote
			for _, v := range tt.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			for _, v := range tt.fwd {
				r.Header.Add("Forwarded", v)
			}
			got, err := KeyByIP(tt.opts...)(r)
			if tt.err {
				require.ErrorIs(t, err, ErrNoKey)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestKeyByHeader(t *testing.T) {
	f := KeyByHeader("x-api-key")
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	_, err := f(r)
	require.ErrorIs(t, err, ErrNoKey)
	r.Header.Set("X-Api-Key", "k1")
	k, err := f(r)
	require.NoError(t, err)
	require.Equal(t, "k1", k)
}

// TestTrustedProxyOverLoopback sends a spoofed X-Forwarded-For through a real
// connection: from 127.0.0.1, untrusted, it changes nothing; once loopback is
// a trusted proxy, the header names the client.
func TestTrustedProxyOverLoopback(t *testing.T) {
	for _, tt := range []struct {
		name string
		opts []IPOption
		want string
	}{
		{name: "untrusted peer", want: "127.0.0.1"},
		{name: "trusted loopback proxy", opts: []IPOption{WithTrustedProxies(netip.MustParsePrefix("127.0.0.0/8"))}, want: "203.0.113.50"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var keys []string
			key := KeyByIP(tt.opts...)
			recordKey := func(r *http.Request) (string, error) {
				k, err := key(r)
				mu.Lock()
				keys = append(keys, k)
				mu.Unlock()
				return k, err
			}
			l, _ := srvTestLimiter(t)
			url, c := srvTestServer(t, RateLimit(l, WithKey(recordKey))(http.HandlerFunc(srvOK)))
			resp, _ := srvDo(t, c, http.MethodGet, url, "", http.Header{"X-Forwarded-For": {"203.0.113.50"}})
			require.Equal(t, http.StatusOK, resp.StatusCode)
			mu.Lock()
			defer mu.Unlock()
			require.Equal(t, []string{tt.want}, keys)
		})
	}
}
