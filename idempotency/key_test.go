package idempotency_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/idempotency"
)

func TestValidateKey(t *testing.T) {
	tests := []struct {
		key  string
		want error
	}{
		{"", idempotency.ErrMissingKey},
		{"a", nil},
		{"8e03978e-40d5-43e8-bc93-6894a57f9324", nil},
		{"!~", nil},
		{strings.Repeat("k", 255), nil},
		{strings.Repeat("k", 256), idempotency.ErrInvalidKey},
		{"has space", idempotency.ErrInvalidKey},
		{"tab\t", idempotency.ErrInvalidKey},
		{"\x00", idempotency.ErrInvalidKey},
		{"del\x7f", idempotency.ErrInvalidKey},
		{"caf\u00e9", idempotency.ErrInvalidKey},
		{"\xff", idempotency.ErrInvalidKey},
	}
	for _, tc := range tests {
		err := idempotency.ValidateKey(tc.key)
		if tc.want == nil {
			require.NoError(t, err, "%q", tc.key)
			continue
		}
		require.ErrorIs(t, err, tc.want, "%q", tc.key)
		require.NotContains(t, err.Error(), tc.key[:min(len(tc.key), 3)]+"x", "errors never echo the key")
	}
}

func TestDeriveKeyIsUnambiguous(t *testing.T) {
	base := idempotency.DeriveKey("alice", "POST", "/orders", "k1")
	require.Equal(t, base, idempotency.DeriveKey("alice", "POST", "/orders", "k1"))
	for _, other := range [][4]string{
		{"bob", "POST", "/orders", "k1"},
		{"alice", "PUT", "/orders", "k1"},
		{"alice", "POST", "/order", "k1"},
		{"alice", "POST", "/orders", "k2"},
		{"alic", "ePOST", "/orders", "k1"},     // shifted boundaries
		{"alice", "POST/", "orders", "k1"},     // shifted boundaries
		{"", "alicePOST", "/orders", "k1"},     // shifted boundaries
		{"alice", "POST", "/ordersk1", ""},     // shifted boundaries
		{"alice", "POST", "/orders", "k1\x00"}, // trailing byte
	} {
		require.NotEqual(t, base, idempotency.DeriveKey(other[0], other[1], other[2], other[3]), "%q", other)
	}
	require.Len(t, base.String(), 64)
	require.NotContains(t, base.String(), "k1")
	// Long fields are fine (heap path).
	long := strings.Repeat("x", 2000)
	require.NotEqual(t, idempotency.DeriveKey(long, "", "", "a"), idempotency.DeriveKey(long, "", "", "b"))
}

func TestDeriveKeyAllocs(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() {
		_ = idempotency.DeriveKey("tenant-42", "POST", "/v1/orders/{id}/pay", "8e03978e-40d5-43e8-bc93-6894a57f9324")
	})
	require.Zero(t, allocs)
}

func FuzzValidateKey(f *testing.F) {
	for _, s := range []string{"", "a", "abc-123", strings.Repeat("z", 255), strings.Repeat("z", 256), "\x00", "a b", "\u00e9", "~!\x7f"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		err := idempotency.ValidateKey(key)
		valid := len(key) >= 1 && len(key) <= 255
		for i := 0; i < len(key); i++ {
			if key[i] < 0x21 || key[i] > 0x7e {
				valid = false
			}
		}
		switch {
		case valid:
			require.NoError(t, err)
		case key == "":
			require.ErrorIs(t, err, idempotency.ErrMissingKey)
		default:
			require.ErrorIs(t, err, idempotency.ErrInvalidKey)
		}
		// Distinct keys never share a stored key (no collisions among the
		// fuzz inputs is the most a test can show; the derivation is
		// injective before hashing).
		if valid {
			require.NotEqual(t, idempotency.DeriveKey("s", "m", "r", key), idempotency.DeriveKey("s", "m", "r", key+"x"))
		}
	})
}
