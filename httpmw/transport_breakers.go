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
	hosts      atomic.Pointer[map[trHostKey]*breaker.Breaker]
	full       atomic.Bool
	mu         sync.Mutex // serialises writers of hosts
}

func trNewBreakers(newBreaker func(string) *breaker.Breaker, limit int) *trBreakers {
	s := &trBreakers{newBreaker: newBreaker, limit: limit}
	m := map[trHostKey]*breaker.Breaker{}
	s.hosts.Store(&m)
	return s
}

// get returns the breaker of u's host, creating it if the set has room, or
// nil when the host has none.
func (s *trBreakers) get(u *url.URL) *breaker.Breaker {
	k := trHostKeyOf(u)
	if b, ok := (*s.hosts.Load())[k]; ok {
		return b
	}
	if s.full.Load() {
		return nil
	}
	// newBreaker is the caller's code: call it without holding the lock. Two
	// goroutines meeting a new host at once may both build one; the first
	// stored wins and the other is dropped unused.
	b := s.newBreaker(k.String())
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
	next := make(map[trHostKey]*breaker.Breaker, len(cur)+1)
	for hk, hb := range cur {
		next[hk] = hb
	}
	next[k] = b
	s.hosts.Store(&next)
	if len(next) >= s.limit {
		s.full.Store(true)
	}
	return b
}

// len returns the number of hosts known.
func (s *trBreakers) len() int { return len(*s.hosts.Load()) }
