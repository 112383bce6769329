package httpmw

import (
	"strconv"
	"time"

	"github.com/bulwark-go/bulwark"
)

// Canonical header names (the form net/http's Header map keys use).
const (
	srvHeaderRateLimit       = "Ratelimit"
	srvHeaderRateLimitPolicy = "Ratelimit-Policy"
	srvHeaderReplayed        = "Idempotent-Replayed"
	srvHeaderInFlight        = "Idempotent-In-Flight"
	srvHeaderIdempotencyKey  = "Idempotency-Key"
)

// FormatRetryAfter formats d as the delay-seconds form of Retry-After:
// whole seconds rounded up, at least 1, so that a client that obeys it never
// comes back too early.
func FormatRetryAfter(d time.Duration) string {
	var buf [20]byte
	return string(strconv.AppendInt(buf[:0], srvCeilSeconds(d, 1), 10))
}

// srvCeilSeconds returns d in whole seconds rounded up, and at least minimum.
func srvCeilSeconds(d time.Duration, minimum int64) int64 {
	s := int64(d / time.Second)
	if d%time.Second > 0 {
		s++
	}
	return max(s, minimum)
}

// srvRetryAfter returns the retry-after hint err carries, and at least one
// second: every rejection that advertises Retry-After says "not before 1s"
// even when the primitive knows no better.
func srvRetryAfter(err error) time.Duration {
	h, _ := bulwark.HintOf(err)
	return max(h.RetryAfter, time.Second)
}

// srvAppendSFString appends s as an RFC 8941 sf-string: quoted, with '"' and
// '\' escaped. Characters outside printable ASCII cannot appear in an
// sf-string and are replaced by '?'.
func srvAppendSFString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20 || c > 0x7e:
			b = append(b, '?')
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// srvAppendPolicy appends a RateLimit-Policy item,
// "<policy>";q=<limit>;w=<window seconds>, per
// draft-ietf-httpapi-ratelimit-headers. w is left out for a window of zero
// (an unlimited policy).
func srvAppendPolicy(b []byte, policy string, limit int, window time.Duration) []byte {
	b = srvAppendSFString(b, policy)
	b = append(b, ";q="...)
	b = strconv.AppendInt(b, srvSFInt(limit), 10)
	if window > 0 {
		b = append(b, ";w="...)
		b = strconv.AppendInt(b, srvCeilSeconds(window, 1), 10)
	}
	return b
}

// srvSFInt clamps n to what an RFC 8941 integer can hold: 0 to 15 digits.
func srvSFInt(n int) int64 {
	const sfMax = 999_999_999_999_999
	return min(max(int64(n), 0), sfMax)
}

// srvAppendRateLimit appends a RateLimit item,
// "<policy>";r=<remaining>;t=<reset seconds>.
func srvAppendRateLimit(b []byte, policy string, remaining int, reset time.Duration) []byte {
	b = srvAppendSFString(b, policy)
	b = append(b, ";r="...)
	b = strconv.AppendInt(b, srvSFInt(remaining), 10)
	b = append(b, ";t="...)
	return strconv.AppendInt(b, srvCeilSeconds(reset, 0), 10)
}
