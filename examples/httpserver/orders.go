package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// order is one order as the API shows it. Owner, the principal that placed
// it, is not shown.
type order struct {
	ID       string    `json:"id"`
	Item     string    `json:"item"`
	Quantity int       `json:"quantity"`
	Created  time.Time `json:"created"`
	owner    string
}

// orderBook is the business side of the example: an in-memory list of
// orders. Creating an order is the side effect that the Idempotency-Key
// protects; a real service would write to its database here.
type orderBook struct {
	created prometheus.Counter

	mu     sync.Mutex
	next   int
	orders map[string]order
}

func newOrderBook(reg prometheus.Registerer) *orderBook {
	created := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "orders_created_total",
		Help: "Orders the example service created (each is a side effect that must happen once per Idempotency-Key).",
	})
	reg.MustRegister(created)
	return &orderBook{created: created, orders: map[string]order{}}
}

// create handles POST /orders with a body {"item": "...", "quantity": n}
// and answers 201 with the order and its Location.
func (b *orderBook) create(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Item     string `json:"item"`
		Quantity int    `json:"quantity"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil || in.Item == "" || in.Quantity < 1 {
		http.Error(w, `want {"item": "<name>", "quantity": <n ≥ 1>}`, http.StatusBadRequest)
		return
	}
	b.mu.Lock()
	b.next++
	o := order{ID: strconv.Itoa(b.next), Item: in.Item, Quantity: in.Quantity,
		Created: time.Now().UTC().Truncate(time.Millisecond), owner: principalOf(r.Context())}
	b.orders[o.ID] = o
	b.mu.Unlock()
	b.created.Inc()

	w.Header().Set("Location", "/orders/"+o.ID)
	writeJSON(w, http.StatusCreated, o)
}

// get handles GET /orders/{id}: the order, if the caller placed it.
func (b *orderBook) get(w http.ResponseWriter, r *http.Request) {
	b.mu.Lock()
	o, ok := b.orders[r.PathValue("id")]
	b.mu.Unlock()
	if !ok || o.owner != principalOf(r.Context()) {
		http.Error(w, "no such order", http.StatusNotFound)
		return
	}
	writeJSON(w, http.StatusOK, o)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

type principalKey struct{}

// authenticate stands in for a real service's authentication: it takes the
// caller's bearer token and puts an opaque principal id — a digest of the
// token, so the token itself is never kept — in the request's context.
// A real service puts its account or API-key id there instead, from whatever
// authenticates its callers (OAuth, mTLS, sessions).
func authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || token == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="orders"`)
			http.Error(w, "missing bearer token", http.StatusUnauthorized)
			return
		}
		sum := sha256.Sum256([]byte(token))
		ctx := context.WithValue(r.Context(), principalKey{}, hex.EncodeToString(sum[:12]))
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

func principalOf(ctx context.Context) string {
	p, _ := ctx.Value(principalKey{}).(string)
	return p
}

var errNoPrincipal = errors.New("orders: request is not authenticated")

// idempotencyScope is the httpmw.WithScope function: every principal has a
// key space of its own, so a key can never replay another caller's order.
func idempotencyScope(r *http.Request) (string, error) {
	if p := principalOf(r.Context()); p != "" {
		return p, nil
	}
	return "", errNoPrincipal
}
