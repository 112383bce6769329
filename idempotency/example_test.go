package idempotency_test

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/bulwark-go/bulwark/idempotency"
)

// An adapter's view of the protocol: validate, fingerprint, Begin, then map
// the outcome (here to HTTP status codes).
func ExampleGuard_Begin() {
	g := idempotency.New("payments", nil, idempotency.WithRequired(true))
	ctx := context.Background()

	serve := func(principal, key, body string) {
		fp, bodyBytes, err := idempotency.ReadFingerprint("POST", "/payments", nil, strings.NewReader(body), 0, nil)
		if err != nil {
			fmt.Println(413)
			return
		}
		out, err := g.Begin(ctx, idempotency.Request{Scope: principal, Method: "POST", Route: "/payments", Key: key, Fingerprint: fp})
		var inflight *idempotency.InFlightError
		switch {
		case errors.Is(err, idempotency.ErrMissingKey), errors.Is(err, idempotency.ErrInvalidKey):
			fmt.Println(400)
		case errors.As(err, &inflight):
			fmt.Println(409, "Retry-After", inflight.RetryHint().RetryAfter.Seconds())
		case errors.Is(err, idempotency.ErrMismatch):
			fmt.Println(422)
		case errors.Is(err, idempotency.ErrStoreUnavailable):
			fmt.Println(503)
		case out.Result == idempotency.ResultReplayed:
			fmt.Println(out.Response.Status, string(out.Response.Body), "Idempotent-Replayed: true")
		case out.Run():
			resp := idempotency.Response{Status: 201, Body: append([]byte("paid "), bodyBytes...)}
			if out.Lease != nil {
				_ = out.Lease.Finish(ctx, resp)
			}
			fmt.Println(resp.Status, string(resp.Body))
		}
	}

	serve("alice", "k-1", "10 EUR")
	serve("alice", "k-1", "10 EUR") // a retry: replayed
	serve("alice", "k-1", "99 EUR") // same key, other request
	serve("bob", "k-1", "10 EUR")   // same key, other principal: runs
	serve("alice", "", "10 EUR")
	serve("alice", "key with spaces", "10 EUR")
	// Output:
	// 201 paid 10 EUR
	// 201 paid 10 EUR Idempotent-Replayed: true
	// 422
	// 201 paid 10 EUR
	// 400
	// 400
}

// Do runs a function once per key, for callers that are not HTTP or gRPC
// handlers, such as a message consumer that may see a message twice.
func ExampleGuard_Do() {
	g := idempotency.New("consumer", nil)
	ctx := context.Background()
	for range 3 {
		resp, out, err := g.Do(ctx, idempotency.Request{Scope: "queue", Method: "charge", Key: "msg-42"},
			func(context.Context) (idempotency.Response, error) {
				fmt.Println("charging")
				return idempotency.Response{Status: 200, Body: []byte("charged")}, nil
			})
		fmt.Println(out.Result, string(resp.Body), err)
	}
	// Output:
	// charging
	// new charged <nil>
	// replayed charged <nil>
	// replayed charged <nil>
}
