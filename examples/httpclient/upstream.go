package main

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bulwark-go/bulwark/httpmw"
	"github.com/bulwark-go/bulwark/idempotency"
)

// upstream is the built-in flaky service. POST /charges makes a charge and
// answers 201; it sits behind bulwark's Idempotency middleware, as a
// payments API would, and behind a fault injector that follows a schedule
// by the number of requests it has received:
//
//	requests 1–6    healthy
//	requests 7–12   odd ones make the charge, then lose the response (502)
//	request 13 on   down (503, no charge) for downFor, then healthy again
//
// A lost response is the case retries alone get wrong: the charge happened,
// the client cannot know it, and a retry without a key charges again.
type upstream struct {
	*httptest.Server
	downFor time.Duration

	hits      atomic.Int64
	downUntil atomic.Int64 // Unix nanoseconds, set by request 13

	mu   sync.Mutex
	keys map[string]int // charges per Idempotency-Key
}

func startUpstream(downFor time.Duration) *upstream {
	u := &upstream{downFor: downFor, keys: map[string]int{}}
	guard := idempotency.New("charges", nil) // a memory store
	// One client principal in this example; a real service scopes keys by
	// its authenticated caller (httpmw.WithScope).
	charges := httpmw.Idempotency(guard, httpmw.WithoutScope())(http.HandlerFunc(u.charge))
	mux := http.NewServeMux()
	mux.Handle("POST /charges", u.faults(charges))
	u.Server = httptest.NewServer(mux)
	return u
}

func (u *upstream) charge(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	u.keys[r.Header.Get("Idempotency-Key")]++
	u.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_, _ = w.Write([]byte(`{"status":"charged"}` + "\n"))
}

func (u *upstream) faults(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := u.hits.Add(1)
		switch {
		case n <= 6:
		case n <= 12:
			if n%2 == 1 {
				next.ServeHTTP(httptest.NewRecorder(), r) // charged, then the answer is lost
				http.Error(w, "bad gateway", http.StatusBadGateway)
				return
			}
		default:
			if n == 13 {
				u.downUntil.Store(time.Now().Add(u.downFor).UnixNano())
			}
			if time.Now().UnixNano() < u.downUntil.Load() {
				http.Error(w, "unavailable", http.StatusServiceUnavailable)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// charges returns the number of charges made and how many of them repeated
// a charge already made for the same key.
func (u *upstream) charges() (total, duplicates int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, n := range u.keys {
		total += n
		duplicates += n - 1
	}
	return total, duplicates
}
