package grpcmw

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/peer"
)

// strAddr is a net.Addr of no standard type, as custom transports have.
type strAddr string

func (a strAddr) Network() string { return "custom" }
func (a strAddr) String() string  { return string(a) }

func peerCtx(a net.Addr) context.Context {
	return peer.NewContext(context.Background(), &peer.Peer{Addr: a})
}

// The cached key is KeyFromPeer's, for every kind of address, on a miss and
// on a hit.
func TestPeerKeysMatchKeyFromPeer(t *testing.T) {
	cases := []struct {
		name string
		addr net.Addr
		want string
	}{
		{"ipv4", &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7).To4(), Port: 40000}, "192.0.2.7"},
		{"ipv4 in 16 bytes", &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 40001}, "192.0.2.7"},
		{"ipv6", &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 443}, "2001:db8::1"},
		{"ipv6 loopback", &net.TCPAddr{IP: net.IPv6loopback, Port: 1}, "::1"},
		{"ipv6 with zone", &net.TCPAddr{IP: net.ParseIP("fe80::1"), Port: 1, Zone: "eth0"}, "fe80::1"},
		{"ipv6 embedding ipv4", &net.TCPAddr{IP: net.ParseIP("::102:304"), Port: 1}, "::102:304"},
		{"no ip", &net.TCPAddr{Port: 1}, "<nil>"},
		{"unix", &net.UnixAddr{Name: "/run/app.sock", Net: "unix"}, "/run/app.sock"},
		{"unix abstract", &net.UnixAddr{Name: "@app", Net: "unix"}, "@app"},
		{"bufconn", strAddr("bufconn"), "bufconn"},
		{"custom host:port", strAddr("gateway:9000"), "gateway"},
		{"custom [ipv6]:port", strAddr("[2001:db8::2]:9000"), "2001:db8::2"},
		{"custom no port", strAddr("a:b:c"), "a:b:c"},
	}
	c := newPeerKeys()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := peerCtx(tc.addr)
			require.Equal(t, tc.want, KeyFromPeer(ctx, "/m"))
			require.Equal(t, tc.want, c.key(ctx, "/m"), "miss")
			require.Equal(t, tc.want, c.key(ctx, "/m"), "hit")
		})
	}
	require.Equal(t, "", c.key(context.Background(), "/m"), "no peer")
	require.Equal(t, "", c.key(peer.NewContext(context.Background(), &peer.Peer{}), "/m"), "no address")
	// An IPv4 address and its IPv4-mapped form share an entry and a key.
	v4 := c.key(peerCtx(&net.TCPAddr{IP: net.IPv4(198, 51, 100, 1).To4()}), "/m")
	mapped := c.key(peerCtx(&net.TCPAddr{IP: net.ParseIP("::ffff:198.51.100.1")}), "/m")
	require.Equal(t, "198.51.100.1", v4)
	require.Equal(t, v4, mapped)
	require.Same(t, unsafe.StringData(v4), unsafe.StringData(mapped), "the mapped form is served from the entry of the other")
}

// Connections from one IP on many source ports share one entry: after the
// first, none of them allocates, and only one slot is in use.
func TestPeerKeysOneEntryPerIP(t *testing.T) {
	c := newPeerKeys()
	port := 0
	addrs := make([]context.Context, 1000)
	for i := range addrs {
		addrs[i] = peerCtx(&net.TCPAddr{IP: net.ParseIP("2001:db8::7"), Port: 1024 + i})
	}
	require.Equal(t, "2001:db8::7", c.key(addrs[0], "/m"))
	allocs := testing.AllocsPerRun(len(addrs), func() {
		if c.key(addrs[port%len(addrs)], "/m") != "2001:db8::7" {
			t.Fatal("wrong key")
		}
		port++
	})
	require.Zero(t, allocs)
	require.Equal(t, 1, used(c))
}

// However many addresses a client uses, the cache holds at most
// peerKeySlots entries, and every address still gets its own key.
func TestPeerKeysBounded(t *testing.T) {
	c := newPeerKeys()
	for i := range 20 * peerKeySlots {
		ip := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)})
		ctx := peerCtx(net.TCPAddrFromAddrPort(netip.AddrPortFrom(ip, 443)))
		require.Equal(t, ip.String(), c.key(ctx, "/m"))
	}
	n := used(c)
	require.LessOrEqual(t, n, peerKeySlots)
	require.Greater(t, n, peerKeySlots/2, "addresses should spread over the slots")
}

// Concurrent callers with overlapping addresses always get their own
// address's key (run with -race).
func TestPeerKeysConcurrent(t *testing.T) {
	c := newPeerKeys()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				n := (i*7 + g) % 600 // more addresses than slots: hits, misses and evictions
				ip := net.IPv4(10, 0, byte(n>>8), byte(n))
				want := fmt.Sprintf("10.0.%d.%d", n>>8, n&0xff)
				if got := c.key(peerCtx(&net.TCPAddr{IP: ip, Port: i}), "/m"); got != want {
					t.Errorf("key %q, want %q", got, want)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestIsKeyFromPeer(t *testing.T) {
	require.True(t, isKeyFromPeer(KeyFromPeer))
	require.False(t, isKeyFromPeer(KeyFromMetadata("x")))
	require.False(t, isKeyFromPeer(func(context.Context, string) string { return "" }))
}

func used(c *peerKeys) int {
	n := 0
	for i := range c.slots {
		if c.slots[i].Load() != nil {
			n++
		}
	}
	return n
}

// BenchmarkPeerKeyHit: the key of a TCP peer already in the cache.
func BenchmarkPeerKeyHit(b *testing.B) {
	c := newPeerKeys()
	ctx := peerCtx(&net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 40000})
	if c.key(ctx, "") != "192.0.2.7" {
		b.Fatal("wrong key")
	}
	b.ReportAllocs()
	for b.Loop() {
		c.key(ctx, "")
	}
}
