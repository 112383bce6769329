package httpmw

import (
	"errors"
	"net/http"
	"net/netip"
	"strings"
)

// KeyFunc extracts the rate-limit key from a request: a client address, an
// API key, a tenant. An error means the request cannot be keyed; [RateLimit]
// then answers 400 with [TypeBadRequest] (the error text is not sent).
type KeyFunc func(r *http.Request) (string, error)

// ErrNoKey is returned by the key functions of this package when the request
// lacks what the key is made from.
var ErrNoKey = errors.New("httpmw: request has no rate-limit key")

// IPOption configures [KeyByIP].
type IPOption func(*srvIPConfig)

type srvIPConfig struct {
	trusted   []netip.Prefix
	forwarded bool
}

// WithTrustedProxies makes [KeyByIP] believe the client address that proxies
// in the given ranges report, in X-Forwarded-For (or Forwarded, with
// [WithForwardedHeader]). Without it, which is the default, forwarding
// headers are ignored: any client can write them.
func WithTrustedProxies(prefixes ...netip.Prefix) IPOption {
	return func(c *srvIPConfig) {
		for _, p := range prefixes {
			if p.IsValid() {
				c.trusted = append(c.trusted, p.Masked())
			}
		}
	}
}

// WithForwardedHeader makes [KeyByIP] read the RFC 7239 Forwarded header
// instead of X-Forwarded-For. Only one of the two is ever read: a proxy that
// maintains one passes the other through from the client untouched, so
// reading both would let a client choose its own key.
func WithForwardedHeader() IPOption {
	return func(c *srvIPConfig) { c.forwarded = true }
}

// KeyByIP returns a KeyFunc that keys a request by its client's IP address.
//
// By default the address is the request's RemoteAddr without its port (IPv4
// or IPv6; the key is then a substring of RemoteAddr and costs no
// allocation). With [WithTrustedProxies], when the immediate peer is in a
// trusted range, the function walks the X-Forwarded-For list (or the for=
// parameters of Forwarded) from right to left, skipping addresses in trusted
// ranges, and keys the request by the first address that is not trusted: the
// client as the outermost trusted proxy saw it. An entry that is not an IP
// address ("unknown", an obfuscated identifier, garbage) ends the walk and
// the request is keyed by the last trusted hop, which is the nearest address
// known to be real. When every entry is trusted, the leftmost is the key.
// IPv4-mapped IPv6 addresses are keyed as IPv4.
//
// The function fails with [ErrNoKey] when RemoteAddr is not an IP address
// (a Unix socket, say); use another KeyFunc there.
func KeyByIP(opts ...IPOption) KeyFunc {
	var c srvIPConfig
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	if len(c.trusted) == 0 {
		return srvKeyByRemoteAddr
	}
	return c.srvKey
}

// srvKeyByRemoteAddr is KeyByIP without trusted proxies.
func srvKeyByRemoteAddr(r *http.Request) (string, error) {
	host := srvHost(r.RemoteAddr)
	if !srvLooksLikeIP(host) {
		return "", ErrNoKey
	}
	return host, nil
}

// srvLooksLikeIP reports whether s is made of the characters of an IPv4 or
// IPv6 address (with an optional zone) and has a dot or a colon. It is a cheap
// stand-in for netip.ParseAddr on the hot path: net/http's RemoteAddr is
// either an address that net formatted or, for a Unix socket, something
// without those characters ("@", "").
func srvLooksLikeIP(s string) bool {
	sep := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '%' && i > 0:
			return sep
		case c == '.' || c == ':':
			sep = true
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f', 'A' <= c && c <= 'F':
		default:
			return false
		}
	}
	return sep
}

// srvHost strips the port from a host:port address, IPv6 aware: "[::1]:80"
// gives "::1", "192.0.2.1:80" gives "192.0.2.1", and an address without a
// port is returned as is.
func srvHost(addr string) string {
	if strings.HasPrefix(addr, "[") {
		if i := strings.IndexByte(addr, ']'); i > 0 {
			return addr[1:i]
		}
		return addr
	}
	if i := strings.LastIndexByte(addr, ':'); i >= 0 && strings.IndexByte(addr[:i], ':') < 0 {
		return addr[:i]
	}
	return addr
}

// srvParseHop parses one forwarded address: a bare IP, an IP with a port,
// or a bracketed IPv6 with or without a port.
func srvParseHop(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(srvHost(strings.TrimSpace(s)))
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

func (c *srvIPConfig) srvTrusted(a netip.Addr) bool {
	for _, p := range c.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func (c *srvIPConfig) srvKey(r *http.Request) (string, error) {
	peer, ok := srvParseHop(r.RemoteAddr)
	if !ok {
		return "", ErrNoKey
	}
	if !c.srvTrusted(peer) {
		return peer.String(), nil
	}
	var hops []string
	if c.forwarded {
		hops = srvForwardedFor(r.Header.Values("Forwarded"))
	} else {
		for _, v := range r.Header.Values("X-Forwarded-For") {
			hops = append(hops, strings.Split(v, ",")...)
		}
	}
	last := peer
	for i := len(hops) - 1; i >= 0; i-- {
		a, ok := srvParseHop(hops[i])
		if !ok {
			break
		}
		if !c.srvTrusted(a) {
			return a.String(), nil
		}
		last = a
	}
	return last.String(), nil
}

// srvForwardedFor returns the for= values of RFC 7239 Forwarded field
// values, in order, unquoted. An element without for= yields "" (which is not
// an address, so it ends the walk).
func srvForwardedFor(values []string) []string {
	var out []string
	for _, v := range values {
		for _, elem := range srvSplitQuoted(v, ',') {
			if strings.TrimSpace(elem) == "" {
				continue
			}
			found := ""
			for _, pair := range srvSplitQuoted(elem, ';') {
				name, val, ok := strings.Cut(strings.TrimSpace(pair), "=")
				if !ok || !strings.EqualFold(strings.TrimSpace(name), "for") {
					continue
				}
				val = strings.TrimSpace(val)
				if len(val) >= 2 && val[0] == '"' && val[len(val)-1] == '"' {
					val = strings.ReplaceAll(val[1:len(val)-1], `\`, "")
				}
				found = val
				break
			}
			out = append(out, found)
		}
	}
	return out
}

// srvSplitQuoted splits s at sep outside quoted strings.
func srvSplitQuoted(s string, sep byte) []string {
	var out []string
	start, quoted := 0, false
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			if quoted {
				i++
			}
		case '"':
			quoted = !quoted
		case sep:
			if !quoted {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	return append(out, s[start:])
}

// KeyByHeader returns a KeyFunc that keys a request by the value of the named
// header (an API key, a tenant id). A request without the header fails with
// [ErrNoKey]. The header's value is the key as is: when it is a secret, the
// limiter sees it, but bulwark's limiters never export keys in metrics.
func KeyByHeader(name string) KeyFunc {
	name = http.CanonicalHeaderKey(name)
	return func(r *http.Request) (string, error) {
		if v := r.Header[name]; len(v) > 0 && v[0] != "" {
			return v[0], nil
		}
		return "", ErrNoKey
	}
}
