package httpmw

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dunglas/httpsfv"

	"github.com/bulwark-go/bulwark/idempotency"
	"github.com/bulwark-go/bulwark/ratelimit"
)

// refIdempotencyKey is the reference reading of Idempotency-Key header
// lines, from the documentation of Idempotency: one line; the value, with
// surrounding white space removed, is an RFC 8941 sf-string (parsed here by
// httpsfv itself) or, when it does not start with a quote, the key as is;
// the key must then pass idempotency.ValidateKey. ok is false for a request
// that must get 400.
func refIdempotencyKey(lines []string) (key string, present, ok bool) {
	if len(lines) == 0 {
		return "", false, true
	}
	if len(lines) > 1 {
		return "", true, false
	}
	v := strings.TrimSpace(lines[0])
	if strings.HasPrefix(v, `"`) {
		item, err := httpsfv.UnmarshalItem([]string{v})
		if err != nil {
			return "", true, false
		}
		s, isString := item.Value.(string)
		if !isString {
			return "", true, false
		}
		v = s
	}
	return v, true, idempotency.ValidateKey(v) == nil
}

// FuzzIdempotencyKeyHeader sends arbitrary Idempotency-Key header lines
// through the Idempotency middleware on a memory store and checks the answer
// against refIdempotencyKey: a malformed key gets 400 with its problem type,
// runs nothing and stores nothing; a well-formed one runs once, is stored
// once, replays on a repeat, and names the same operation whether it is sent
// as an sf-string or bare.
func FuzzIdempotencyKeyHeader(f *testing.F) {
	for _, seed := range []struct {
		v     string
		lines uint8
	}{
		{`"8e03978e-40d5"`, 1}, {`8e03978e-40d5`, 1}, {`  "abc"  `, 1}, {`"a\"b\\c"`, 1},
		{`""`, 1}, {``, 1}, {`"abc";x=1`, 1}, {`"abc`, 1}, {`abc def`, 1}, {`"ab` + "\x7f" + `"`, 1},
		{`?1`, 1}, {`:aGVsbG8=:`, 1}, {`42`, 1}, {`key`, 2}, {`key`, 0}, {strings.Repeat("k", 255), 1},
		{strings.Repeat("k", 256), 1}, {`"` + strings.Repeat("k", 255) + `"`, 1}, {"\u00e9t\u00e9", 1},
	} {
		f.Add(seed.v, seed.lines)
	}
	f.Fuzz(func(t *testing.T, value string, lines uint8) {
		lines %= 3
		hdr := make([]string, lines)
		for i := range hdr {
			hdr[i] = value
		}
		store := idempotency.NewMemoryStore(idempotency.MemoryConfig{})
		g := idempotency.New("fuzz", store, idempotency.WithRequired(true))
		runs := 0
		h := Idempotency(g, WithoutScope(), WithRoute(func(*http.Request) string { return "/pay" }))(
			http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				runs++
				w.WriteHeader(http.StatusCreated)
				_, _ = io.WriteString(w, "ran")
			}))
		send := func(lines []string) *httptest.ResponseRecorder {
			r := httptest.NewRequest(http.MethodPost, "/pay", strings.NewReader("body"))
			if lines != nil {
				r.Header[IdempotencyKeyHeader] = lines
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			return w
		}

		key, present, ok := refIdempotencyKey(hdr)
		w := send(hdr)
		switch {
		case !present:
			if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), TypeIdempotencyKeyMissing) {
				t.Fatalf("no key: %d %s", w.Code, w.Body)
			}
		case !ok:
			if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), TypeIdempotencyKeyInvalid) {
				t.Fatalf("%q: %d %s, want 400 %s", hdr, w.Code, w.Body, TypeIdempotencyKeyInvalid)
			}
		default:
			if w.Code != http.StatusCreated || w.Body.String() != "ran" {
				t.Fatalf("%q (key %q): %d %s, want 201", hdr, key, w.Code, w.Body)
			}
		}
		if !ok || !present {
			if runs != 0 || store.Len() != 0 {
				t.Fatalf("%q: rejected, yet %d runs and %d records", hdr, runs, store.Len())
			}
			return
		}
		if runs != 1 || store.Len() != 1 {
			t.Fatalf("%q: %d runs, %d records after one request", hdr, runs, store.Len())
		}
		// The same key again, in the other spelling where it has one:
		// the stored response replays and nothing runs.
		again := hdr
		if quoted, err := httpsfv.Marshal(httpsfv.NewItem(key)); err == nil && !strings.HasPrefix(strings.TrimSpace(value), `"`) {
			again = []string{quoted}
		} else if !strings.HasPrefix(key, `"`) && strings.TrimSpace(key) == key {
			again = []string{key}
		}
		w = send(again)
		if w.Code != http.StatusCreated || w.Header().Get("Idempotent-Replayed") != "true" || w.Body.String() != "ran" {
			t.Fatalf("%q then %q: %d %q replayed=%q", hdr, again, w.Code, w.Body, w.Header().Get("Idempotent-Replayed"))
		}
		if runs != 1 || store.Len() != 1 {
			t.Fatalf("%q then %q: %d runs, %d records", hdr, again, runs, store.Len())
		}
	})
}

// fixedLimiter answers every request with one Decision.
type fixedLimiter struct{ d ratelimit.Decision }

func (l fixedLimiter) Allow(context.Context, string, int) (ratelimit.Decision, error) {
	return l.d, nil
}

// sfInteger is the largest integer an RFC 8941 structured field can carry.
const sfInteger = 999_999_999_999_999

// FuzzRateLimitFields formats arbitrary decisions through the RateLimit
// middleware and parses the RateLimit and RateLimit-Policy fields back with
// httpsfv: each is a one-member list whose item is the policy name (with
// bytes an sf-string cannot hold replaced by '?') and whose parameters are
// the quota, the window, the units left and the reset, in whole seconds
// rounded up, never negative. Quotas beyond the sf-integer range (above
// 10^15 units) are out of scope.
func FuzzRateLimitFields(f *testing.F) {
	f.Add("default", int64(100), int64(60*time.Second), int64(42), int64(17*time.Second), true)
	f.Add("per-ip", int64(1), int64(1), int64(0), int64(0), false)
	f.Add(`we"ird\`, int64(0), int64(0), int64(-5), int64(-time.Second), false)
	f.Add("\x00\xff\u00e9", int64(sfInteger), int64(1<<63-1), int64(sfInteger), int64(1<<63-1), true)
	f.Add("", int64(-1), int64(-1), int64(7), int64(1500*time.Millisecond), false)
	f.Fuzz(func(t *testing.T, policy string, limit, window, remaining, reset int64, allowed bool) {
		if limit > sfInteger || remaining > sfInteger {
			return // beyond the sf-integer range
		}
		if int64(int(limit)) != limit || int64(int(remaining)) != remaining {
			return // beyond int on a 32-bit platform: no Decision can hold it
		}
		d := ratelimit.Decision{Allowed: allowed, Policy: policy, Limit: int(limit), Window: time.Duration(window),
			Remaining: int(remaining), Reset: time.Duration(reset)}
		if !allowed {
			d.RetryAfter = time.Second
		}
		h := RateLimit(fixedLimiter{d}, WithKey(func(*http.Request) (string, error) { return "k", nil }))(
			http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))

		var name []byte
		for i := 0; i < len(policy); i++ {
			if c := policy[i]; c < 0x20 || c > 0x7e {
				name = append(name, '?')
			} else {
				name = append(name, c)
			}
		}
		ceil := func(d time.Duration, minimum int64) int64 {
			s := int64(d / time.Second)
			if d%time.Second > 0 {
				s++
			}
			return max(s, minimum)
		}
		parse := func(field string) httpsfv.Item {
			t.Helper()
			vals := w.Header().Values(field)
			list, err := httpsfv.UnmarshalList(vals)
			if err != nil || len(list) != 1 {
				t.Fatalf("%s: %q does not parse as a one-member list: %v", field, vals, err)
			}
			item, isItem := list[0].(httpsfv.Item)
			if !isItem || item.Value != string(name) {
				t.Fatalf("%s: %q: item %#v, want the string %q", field, vals, list[0], name)
			}
			return item
		}
		param := func(item httpsfv.Item, field, p string, want int64, present bool) {
			t.Helper()
			v, ok := item.Params.Get(p)
			if ok != present || (present && v != want) {
				t.Fatalf("%s: %s=%v (present %v), want %d (present %v)", field, p, v, ok, want, present)
			}
		}
		pol := parse("RateLimit-Policy")
		param(pol, "RateLimit-Policy", "q", max(limit, 0), true)
		param(pol, "RateLimit-Policy", "w", ceil(time.Duration(window), 1), window > 0)
		rl := parse("RateLimit")
		param(rl, "RateLimit", "r", max(remaining, 0), true)
		param(rl, "RateLimit", "t", ceil(time.Duration(reset), 0), true)
		if want := http.StatusOK; allowed && w.Code != want || !allowed && w.Code != http.StatusTooManyRequests {
			t.Fatalf("allowed=%v: status %d", allowed, w.Code)
		}
	})
}
