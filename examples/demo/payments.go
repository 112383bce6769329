package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"time"
)

// Phase is one stretch of the fault schedule.
type Phase int

// The schedule: healthy, then an outage, then slow, then recovered.
const (
	Healthy Phase = iota
	Outage
	Slow
	Recovered
	numPhases
)

var phaseNames = [numPhases]string{"healthy", "outage", "slow", "recovered"}

func (p Phase) String() string { return phaseNames[p] }

// schedule maps the time since the run started to a phase. Shares are the
// fractions of the run each phase takes.
type schedule struct {
	start time.Time
	ends  [numPhases]time.Duration
}

func newSchedule(start time.Time, total time.Duration) *schedule {
	shares := [numPhases]float64{0.25, 0.35, 0.15, 0.25}
	s := &schedule{start: start}
	var acc float64
	for p, share := range shares {
		acc += share
		s.ends[p] = time.Duration(acc * float64(total))
	}
	return s
}

func (s *schedule) at(t time.Time) Phase {
	d := t.Sub(s.start)
	for p := Healthy; p < numPhases; p++ {
		if d < s.ends[p] {
			return p
		}
	}
	return Recovered
}

// phaseStart returns when phase p starts, relative to the run's start.
func (s *schedule) phaseStart(p Phase) time.Duration {
	if p == Healthy {
		return 0
	}
	return s.ends[p-1]
}

// payments is the upstream: a ledger of charges behind a fault injector.
type payments struct {
	sched     *schedule
	slowDelay time.Duration

	mu      sync.Mutex
	charges map[string]int // order id -> times charged

	calls [numPhases]atomic.Int64 // requests that reached payments, by phase
	seq   atomic.Int64
}

func newPayments(sched *schedule, slowDelay time.Duration) *payments {
	return &payments{sched: sched, slowDelay: slowDelay, charges: map[string]int{}}
}

type chargeRequest struct {
	Order  string `json:"order"`
	Amount int    `json:"amount"`
}

// charge is the business handler: it records the charge in the ledger. It
// knows nothing of retries or idempotency.
func (p *payments) charge(w http.ResponseWriter, r *http.Request) {
	var req chargeRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil || req.Order == "" {
		http.Error(w, "bad charge request", http.StatusBadRequest)
		return
	}
	p.mu.Lock()
	p.charges[req.Order]++
	n := len(p.charges)
	p.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"charge":"ch_%d","order":%q}`, n, req.Order)
}

// faults wraps the business handler (and whatever protects it) with the
// schedule's faults:
//   - outage: four requests in five get 503 without being charged; the fifth
//     is charged and then its response is lost (the connection drops);
//   - slow: the charge is made, then the response takes slowDelay;
//   - healthy and recovered: no faults.
func (p *payments) faults(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		phase := p.sched.at(time.Now())
		p.calls[phase].Add(1)
		switch phase {
		case Outage:
			if p.seq.Add(1)%5 != 0 {
				w.Header().Set("Retry-After", "1")
				http.Error(w, "payments unavailable", http.StatusServiceUnavailable)
				return
			}
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			dropConnection(w)
		case Slow:
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			select {
			case <-time.After(p.slowDelay):
			case <-r.Context().Done():
				return
			}
			copyResponse(w, rec)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

func dropConnection(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler) // closes the stream without a response
	}
	if tcp, ok := conn.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0) // a reset, as when a process or a proxy dies
	}
	_ = conn.Close()
}

func copyResponse(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

// ledger summarises the charges: how many orders were charged and how many
// charges were duplicates of an earlier one.
func (p *payments) ledger() (orders, duplicates int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, n := range p.charges {
		orders++
		duplicates += n - 1
	}
	return orders, duplicates
}
