package httpmw

import (
	"testing"
	"time"

	"github.com/dunglas/httpsfv"
	"github.com/stretchr/testify/require"
)

func TestFormatRetryAfter(t *testing.T) {
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{
		{0, "1"}, {-time.Second, "1"}, {time.Nanosecond, "1"}, {time.Second, "1"},
		{time.Second + time.Nanosecond, "2"}, {1500 * time.Millisecond, "2"}, {time.Minute, "60"},
	} {
		require.Equal(t, tt.want, FormatRetryAfter(tt.d), tt.d)
	}
}

func TestAppendRateLimitFieldsParse(t *testing.T) {
	for _, name := range []string{"default", "", `a"b\c`, "tab\there", "ünïcode"} {
		v := string(srvAppendPolicy(nil, name, 100, 59*time.Second+time.Millisecond))
		list, err := httpsfv.UnmarshalList([]string{v})
		require.NoError(t, err, v)
		item := list[0].(httpsfv.Item)
		q, _ := item.Params.Get("q")
		w, _ := item.Params.Get("w")
		require.Equal(t, int64(100), q)
		require.Equal(t, int64(60), w, "window rounded up")

		v = string(srvAppendRateLimit(nil, name, -3, 1500*time.Millisecond))
		list, err = httpsfv.UnmarshalList([]string{v})
		require.NoError(t, err, v)
		item = list[0].(httpsfv.Item)
		r, _ := item.Params.Get("r")
		tt, _ := item.Params.Get("t")
		require.Equal(t, int64(0), r, "never negative")
		require.Equal(t, int64(2), tt)
	}
	require.Equal(t, `"default";r=42;t=17`, string(srvAppendRateLimit(nil, "default", 42, 17*time.Second)))
	require.Equal(t, `"default";q=100;w=60`, string(srvAppendPolicy(nil, "default", 100, time.Minute)))
}
