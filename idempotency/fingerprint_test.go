package idempotency_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/idempotency"
)

func fingerprint(t testing.TB, method, route string, h []idempotency.Field, body string) idempotency.Fingerprint {
	f, got, err := idempotency.ReadFingerprint(method, route, h, strings.NewReader(body), 0, nil)
	require.NoError(t, err)
	require.Equal(t, body, string(got))
	return f
}

func TestReadFingerprint(t *testing.T) {
	ct := []idempotency.Field{{Name: "content-type", Value: "application/json"}}
	base := fingerprint(t, "POST", "/orders", ct, `{"a":1}`)
	require.Equal(t, base, fingerprint(t, "POST", "/orders", ct, `{"a":1}`))
	for name, other := range map[string]idempotency.Fingerprint{
		"body":          fingerprint(t, "POST", "/orders", ct, `{"a":2}`),
		"method":        fingerprint(t, "PUT", "/orders", ct, `{"a":1}`),
		"route":         fingerprint(t, "POST", "/order", ct, `{"a":1}`),
		"header value":  fingerprint(t, "POST", "/orders", []idempotency.Field{{Name: "content-type", Value: "text/plain"}}, `{"a":1}`),
		"no header":     fingerprint(t, "POST", "/orders", nil, `{"a":1}`),
		"shifted":       fingerprint(t, "POS", "T/orders", ct, `{"a":1}`),
		"header → body": fingerprint(t, "POST", "/orders", []idempotency.Field{{Name: "content-type", Value: "application/json{\"a\":1}"}}, ``),
	} {
		require.NotEqual(t, base, other, name)
	}
}

func TestReadFingerprintStreamsIntoOneBuffer(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789"), 100_000) // 1,000,000 bytes
	buf := make([]byte, 0, len(body)+1)
	f1, got, err := idempotency.ReadFingerprint("POST", "/", nil, iotest.OneByteReader(bytes.NewReader(body[:1000])), 0, nil)
	require.NoError(t, err)
	require.Equal(t, body[:1000], got)

	f2, got, err := idempotency.ReadFingerprint("POST", "/", nil, bytes.NewReader(body), 0, buf)
	require.NoError(t, err)
	require.Equal(t, body, got)
	require.Equal(t, &buf[:1][0], &got[:1][0], "the caller's buffer was used, not a copy")
	require.NotEqual(t, f1, f2)

	// Chunking does not change the fingerprint.
	f3, _, err := idempotency.ReadFingerprint("POST", "/", nil, iotest.HalfReader(bytes.NewReader(body)), 0, nil)
	require.NoError(t, err)
	require.Equal(t, f2, f3)
}

func TestReadFingerprintLimit(t *testing.T) {
	for _, tc := range []struct {
		size, limit int
		err         error
	}{
		{10, 10, nil},
		{11, 10, idempotency.ErrBodyTooLarge},
		{0, 1, nil},
		{idempotency.DefaultMaxBody, 0, nil},
		{idempotency.DefaultMaxBody + 1, 0, idempotency.ErrBodyTooLarge},
		{5000, 4096, idempotency.ErrBodyTooLarge},
	} {
		_, got, err := idempotency.ReadFingerprint("POST", "/", nil, bytes.NewReader(make([]byte, tc.size)), int64(tc.limit), nil)
		if tc.err != nil {
			require.ErrorIs(t, err, tc.err, "%+v", tc)
			require.LessOrEqual(t, len(got), max(tc.limit, idempotency.DefaultMaxBody)+32<<10, "reading stops near the limit")
			continue
		}
		require.NoError(t, err, "%+v", tc)
		require.Len(t, got, tc.size)
	}
}

func TestReadFingerprintReaderError(t *testing.T) {
	boom := errors.New("connection reset")
	_, _, err := idempotency.ReadFingerprint("POST", "/", nil, io.MultiReader(strings.NewReader("abc"), iotest.ErrReader(boom)), 0, nil)
	require.ErrorIs(t, err, boom)
	f, got, err := idempotency.ReadFingerprint("POST", "/", nil, nil, 0, nil)
	require.NoError(t, err)
	require.Empty(t, got)
	require.Equal(t, fingerprint(t, "POST", "/", nil, ""), f)
}

func FuzzFingerprint(f *testing.F) {
	f.Add("POST", "/orders", "content-type", "application/json", []byte(`{"a":1}`), int64(0), uint8(1))
	f.Add("", "", "", "", []byte{}, int64(1), uint8(0))
	f.Add("PUT", "/x", "a", "b", bytes.Repeat([]byte{0xff}, 600), int64(512), uint8(3))
	f.Fuzz(func(t *testing.T, method, route, name, value string, body []byte, limit int64, chunk uint8) {
		h := []idempotency.Field{{Name: name, Value: value}}
		var r io.Reader = bytes.NewReader(body)
		if chunk%2 == 1 {
			r = iotest.OneByteReader(r)
		}
		fp, got, err := idempotency.ReadFingerprint(method, route, h, r, limit, nil)
		effective := limit
		if effective <= 0 {
			effective = idempotency.DefaultMaxBody
		}
		if int64(len(body)) > effective {
			require.ErrorIs(t, err, idempotency.ErrBodyTooLarge)
			return
		}
		require.NoError(t, err)
		require.Equal(t, len(body), len(got))
		require.True(t, bytes.Equal(body, got))
		// Deterministic, and independent of how the body was chunked.
		again, _, err := idempotency.ReadFingerprint(method, route, h, bytes.NewReader(body), limit, make([]byte, 0, 3))
		require.NoError(t, err)
		require.Equal(t, fp, again)
		// A different body gives a different fingerprint.
		other, _, err := idempotency.ReadFingerprint(method, route, h, bytes.NewReader(append(body[:len(body):len(body)], 0)), 0, nil)
		if err == nil {
			require.NotEqual(t, fp, other)
		}
	})
}
