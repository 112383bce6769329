package httpmw

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	maxDur := time.Duration(math.MaxInt64)
	tests := []struct {
		name  string
		value string
		want  time.Duration
		ok    bool
	}{
		{"zero", "0", 0, true},
		{"seconds", "120", 120 * time.Second, true},
		{"leading zeros", "007", 7 * time.Second, true},
		{"surrounding space", "  3\t", 3 * time.Second, true},
		{"newline is not whitespace here", "3\n", 0, false},
		{"unicode space", "\u00a03", 0, false},
		{"largest exact", strconv.FormatInt(maxRetryAfterSeconds, 10), time.Duration(maxRetryAfterSeconds) * time.Second, true},
		{"just above a Duration", strconv.FormatInt(maxRetryAfterSeconds+1, 10), maxDur, true},
		{"huge", "99999999999999999999999999999999999999", maxDur, true},
		{"imf-fixdate", "Thu, 01 Jan 2026 12:00:30 GMT", 30 * time.Second, true},
		{"rfc850", "Thursday, 01-Jan-26 12:01:00 GMT", time.Minute, true},
		{"asctime", "Thu Jan  1 12:00:05 2026", 5 * time.Second, true},
		{"date in the past", "Wed, 31 Dec 2025 12:00:00 GMT", 0, true},
		{"date far ahead", "Fri, 31 Dec 9999 23:59:59 GMT", maxDur, true},
		{"empty", "", 0, false},
		{"blank", "   ", 0, false},
		{"negative", "-5", 0, false},
		{"plus sign", "+5", 0, false},
		{"fraction", "1.5", 0, false},
		{"exponent", "1e3", 0, false},
		{"trailing text", "10s", 0, false},
		{"inner space", "1 0", 0, false},
		{"hex", "0x10", 0, false},
		{"garbage", "soon", 0, false},
		{"date without zone", "Thu, 01 Jan 2026 12:00:30", 0, false},
		{"iso date", "2026-01-01T12:00:30Z", 0, false},
		{"non-ascii digits", "١٢", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, ok := ParseRetryAfter(tt.value, now)
			require.Equal(t, tt.ok, ok)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestParseRetryAfterSecondsDoesNotAllocate(t *testing.T) {
	now := time.Now()
	allocs := testing.AllocsPerRun(100, func() {
		if _, ok := ParseRetryAfter("120", now); !ok {
			t.Fatal("not parsed")
		}
	})
	require.Zero(t, allocs)
}

func FuzzParseRetryAfter(f *testing.F) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	for _, s := range []string{
		"0", "1", "120", "007", " 5 ", "-1", "+1", "1.5", "1e9", "",
		"99999999999999999999999999999999", "9223372036", "9223372037",
		"Thu, 01 Jan 2026 12:00:30 GMT", "Thursday, 01-Jan-26 12:01:00 GMT",
		"Thu Jan  1 12:00:05 2026", "Mon, 01 Jan 0001 00:00:00 GMT",
		"Fri, 31 Dec 9999 23:59:59 GMT", "soon", "\x00", "12\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := ParseRetryAfter(s, now)
		if !ok {
			if d != 0 {
				t.Fatalf("invalid %q returned %v", s, d)
			}
			return
		}
		if d < 0 {
			t.Fatalf("%q parsed to a negative delay %v", s, d)
		}
		// A valid delay-seconds value is digits only, and its parse is exact
		// (or saturated).
		if n, err := strconv.ParseInt(trimmedForFuzz(s), 10, 64); err == nil && n >= 0 && n <= maxRetryAfterSeconds {
			if d != time.Duration(n)*time.Second {
				t.Fatalf("%q parsed to %v, want %ds", s, d, n)
			}
		}
		// An accepted date must be one net/http accepts too.
		if v := trimmedForFuzz(s); v != "" && (v[0] < '0' || v[0] > '9') {
			if _, err := http.ParseTime(v); err != nil {
				t.Fatalf("%q accepted as a date but http.ParseTime refuses it: %v", s, err)
			}
		}
	})
}

func trimmedForFuzz(s string) string { return strings.Trim(s, " \t") }
