package httpmw

import (
	"math"
	"net/http"
	"strings"
	"time"
)

// maxRetryAfterSeconds is the largest delay-seconds value that fits in a
// time.Duration; larger values saturate to the largest Duration.
const maxRetryAfterSeconds = math.MaxInt64 / int64(time.Second)

// ParseRetryAfter parses the value of a Retry-After header field (RFC 9110,
// section 10.2.3) and returns the delay it asks for, relative to now, and
// whether the value was valid.
//
// Both forms are accepted:
//
//   - delay-seconds, one or more ASCII digits ("120"): that many seconds.
//     Values too large for a time.Duration saturate to the largest Duration
//     (about 292 years) instead of overflowing, so that a caller's cap
//     applies to them.
//   - HTTP-date in any of the three forms RFC 9110 requires recipients to
//     accept (IMF-fixdate "Sun, 06 Nov 1994 08:49:37 GMT", the obsolete RFC
//     850 and asctime forms): the time from now until that date; a date that
//     has passed gives 0.
//
// Surrounding spaces and tabs are ignored. Anything else — an empty value, a sign,
// a fraction, an exponent, trailing text, a malformed date — is invalid and
// returns (0, false): a client should then retry as its policy sees fit, not
// guess. A caller that received the value in a response should pass the
// response's Date as now when it has one, so that the delay does not depend on
// the difference between the two machines' clocks (see [Transport]).
//
// ParseRetryAfter does not allocate for the delay-seconds form and is safe for
// concurrent use.
func ParseRetryAfter(value string, now time.Time) (time.Duration, bool) {
	v := strings.Trim(value, " \t") // optional whitespace: SP and HTAB
	if v == "" {
		return 0, false
	}
	if c := v[0]; c >= '0' && c <= '9' {
		var secs int64
		for i := 0; i < len(v); i++ {
			c := v[i]
			if c < '0' || c > '9' {
				return 0, false
			}
			if secs <= maxRetryAfterSeconds {
				secs = secs*10 + int64(c-'0')
			}
		}
		if secs > maxRetryAfterSeconds {
			return time.Duration(math.MaxInt64), true
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	d := t.Sub(now) // Sub saturates instead of overflowing
	if d < 0 {
		d = 0
	}
	return d, true
}
