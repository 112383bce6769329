package httpmw

import (
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/bulwark-go/bulwark/breaker"
)

// trHostKey identifies an upstream: scheme, host and port, the unit a
// connection pool and a breaker care about.
type trHostKey struct{ scheme, host, port string }

func trHostKeyOf(u *url.URL) trHostKey {
	scheme := strings.ToLower(u.Scheme) // no allocation when already lower case
	port := u.Port()
	if port == "" {
		switch scheme {
		case "https", "wss":
			port = "443"
		case "http", "ws":
			port = "80"
		}
	}
	return trHostKey{scheme: scheme, host: strings.ToLower(u.Hostname()), port: port}
}

// String returns "scheme://host:port", the name given to the breaker.
func (k trHostKey) String() string {
	return k.scheme + "://" + net.JoinHostPort(k.host, k.port)
}

// trBreakers is the bounded set of per-host breakers. Lookups read an
// immutable map through an atomic pointer, without a lock and without
// allocating; a new host copies the map under a mutex (at most limit times).
// Once limit hosts are known, further hosts get no breaker at all.
type trBreakers struct {
	newBreaker func(host string) *breaker.Breaker
	limit      int
	hosts      atomic.Pointer[map[trHostKey]*trHostBreaker]
	full       atomic.Bool
	mu         sync.Mutex // serialises writers of hosts
}

// trHostBreaker is one host's breaker, built once, on first use.
type trHostBreaker struct {
	once sync.Once
	b    *breaker.Breaker
}

func trNewBreakers(newBreaker func(string) *breaker.Breaker, limit int) *trBreakers {
	s := &trBreakers{newBreaker: newBreaker, limit: limit}
	m := map[trHostKey]*trHostBreaker{}
	s.hosts.Store(&m)
	return s
}

// get returns the breaker of u's host, creating it if the set has room, or
// nil when the host has none.
func (s *trBreakers) get(u *url.URL) *breaker.Breaker {
	k := trHostKeyOf(u)
	e, ok := (*s.hosts.Load())[k]
	if !ok {
		if s.full.Load() {
			return nil
		}
		if e = s.add(k); e == nil {
			return nil
		}
	}
	// newBreaker is the caller's code: it runs outside s.mu, exactly once
	// per host, so a breaker is never built and then dropped (which would
	// leave its metrics registered for a breaker nobody uses).
	e.once.Do(func() { e.b = s.newBreaker(k.String()) })
	return e.b
}

// add returns the entry for k, adding it when the set has room.
func (s *trBreakers) add(k trHostKey) *trHostBreaker {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := *s.hosts.Load()
	if old, ok := cur[k]; ok {
		return old
	}
	if len(cur) >= s.limit {
		s.full.Store(true)
		return nil
	}
	next := make(map[trHostKey]*trHostBreaker, len(cur)+1)
	for hk, hb := range cur {
		next[hk] = hb
	}
	e := &trHostBreaker{}
	next[k] = e
	s.hosts.Store(&next)
	if len(next) >= s.limit {
		s.full.Store(true)
	}
	return e
}

// len returns the number of hosts known.
func (s *trBreakers) len() int { return len(*s.hosts.Load()) }
