package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/bulwark-go/bulwark/breaker"
	"github.com/bulwark-go/bulwark/bulkhead"
	"github.com/bulwark-go/bulwark/httpmw"
	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/retry"
	"github.com/prometheus/client_golang/prometheus"
)

// upstreamTimeout is how long checkout waits for one payments call, in both
// runs: the slow phase answers later than this.
const upstreamTimeout = 250 * time.Millisecond

// chargeFunc sends one charge to payments and reports whether it went through.
type chargeFunc func(ctx context.Context, order string) error

// checkout is the service under test: it charges the order and answers 200,
// or 502 when the charge failed.
func checkout(charge chargeFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<16))
		if err != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		order := orderOf(body)
		if order == "" {
			http.Error(w, "no order", http.StatusBadRequest)
			return
		}
		if err := charge(r.Context(), order); err != nil {
			http.Error(w, "payment failed", http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
}

func orderOf(body []byte) string {
	const prefix = `{"order":"`
	if !bytes.HasPrefix(body, []byte(prefix)) {
		return ""
	}
	rest := body[len(prefix):]
	end := bytes.IndexByte(rest, '"')
	if end < 0 {
		return ""
	}
	return string(rest[:end])
}

// postCharge sends one POST /charge through client.
func postCharge(ctx context.Context, client *http.Client, url, order string) error {
	body := fmt.Sprintf(`{"order":%q,"amount":1999}`, order)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/charge", bytes.NewReader([]byte(body)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("payments: %s", resp.Status)
	}
	return nil
}

// naiveCharge is what most services do: up to three tries with a short
// pause, on any error or 5xx, and no idempotency key.
func naiveCharge(client *http.Client, url string, retries *counter) chargeFunc {
	return func(ctx context.Context, order string) error {
		var err error
		for attempt := 1; attempt <= 3; attempt++ {
			if attempt > 1 {
				retries.add()
				select {
				case <-time.After(50 * time.Millisecond):
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			actx, cancel := context.WithTimeout(ctx, upstreamTimeout)
			err = postCharge(actx, client, url, order)
			cancel()
			if err == nil {
				return nil
			}
		}
		return err
	}
}

// protection is everything bulwark adds to the two services in one run.
type protection struct {
	breaker  *breaker.Breaker // checkout's breaker for payments
	inbound  *bulkhead.Bulkhead
	guard    *idempotency.Guard
	retry    *retry.Policy
	registry *prometheus.Registry
}

func newProtection(reg *prometheus.Registry, store idempotency.Store, retries *counter) *protection {
	p := &protection{registry: reg}
	p.breaker = breaker.New("payments",
		breaker.WithCountWindow(20),
		breaker.WithFailureRate(0.5, 10),
		breaker.WithOpenDuration(time.Second),
		breaker.WithHalfOpen(2, 3),
		breaker.WithRegisterer(reg))
	p.retry = retry.New("payments",
		retry.WithMaxAttempts(3),
		retry.WithAttemptTimeout(upstreamTimeout),
		retry.WithOnRetry(func(int, error, time.Duration) { retries.add() }),
		retry.WithRegisterer(reg))
	p.inbound = bulkhead.New("checkout", bulkhead.WithLimit(64), bulkhead.WithQueue(64),
		bulkhead.WithMaxWait(500*time.Millisecond), bulkhead.WithRegisterer(reg))
	p.guard = idempotency.New("payments", store, idempotency.WithRegisterer(reg), idempotency.WithLease(5*time.Second))
	return p
}

// client returns checkout's client for payments: retries with a budget,
// a breaker, and an Idempotency-Key on every POST.
func (p *protection) client() *http.Client {
	return &http.Client{Transport: httpmw.NewTransport(newBaseTransport(),
		httpmw.WithRetry(p.retry),
		httpmw.WithBreakers(func(string) *breaker.Breaker { return p.breaker }, 1),
	)}
}

// checkoutHandler protects checkout itself: a bulkhead, so that a slow
// upstream cannot pile up unbounded work.
func (p *protection) checkoutHandler(charge chargeFunc) http.Handler {
	return httpmw.Bulkhead(p.inbound)(checkout(charge))
}

// paymentsHandler makes charges idempotent by Idempotency-Key. The demo has
// one principal; a real service scopes keys by the authenticated caller.
func (p *protection) paymentsHandler(pay *payments) http.Handler {
	return httpmw.Idempotency(p.guard, httpmw.WithoutScope())(http.HandlerFunc(pay.charge))
}

func newBaseTransport() *http.Transport {
	return &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: 30 * time.Second}
}
