package idempotency_test

import (
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/idempotency"
)

func TestResponseCodec(t *testing.T) {
	for _, r := range []idempotency.Response{
		{},
		{Status: 200},
		{Status: -1, Body: []byte{0}},
		{Status: math.MaxInt, Header: []idempotency.Field{{}}},
		{Status: 201, Header: []idempotency.Field{{Name: "Location", Value: "/orders/1"}, {Name: "Set-Cookie", Value: "a=b"}, {Name: "Set-Cookie", Value: "c=d"}}, Body: []byte(`{"id":1}`)},
	} {
		enc, err := r.MarshalBinary()
		require.NoError(t, err)
		require.Len(t, enc, r.EncodedLen())
		var got idempotency.Response
		require.NoError(t, got.UnmarshalBinary(enc))
		require.Equal(t, r, got)
		enc[len(enc)-1] ^= 0xff // UnmarshalBinary copied the body
		require.Equal(t, r, got)
	}
	small := idempotency.Response{Status: 204, Header: []idempotency.Field{{Name: "A", Value: "b"}}}
	enc, _ := small.MarshalBinary()
	require.Len(t, enc, 1+2+1+2+2+1, "compact: version, status, count, two fields, empty body")
}

func TestDecodeResponseRejectsCorruptInput(t *testing.T) {
	good, _ := (&idempotency.Response{Status: 200, Header: []idempotency.Field{{Name: "a", Value: "b"}}, Body: []byte("xyz")}).MarshalBinary()
	for i := range len(good) {
		_, err := idempotency.DecodeResponse(good[:i])
		require.Error(t, err, "truncated at %d", i)
	}
	_, err := idempotency.DecodeResponse(append(good[:len(good):len(good)], 0))
	require.Error(t, err, "trailing bytes")
	bad := append([]byte{}, good...)
	bad[0] = 2
	_, err = idempotency.DecodeResponse(bad)
	require.Error(t, err, "unknown version")
	_, err = idempotency.DecodeResponse([]byte{1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	require.Error(t, err, "absurd header count")
}

func FuzzResponseCodec(f *testing.F) {
	f.Add(200, "Content-Type", "application/json", []byte(`{"ok":true}`), []byte{1, 0x90, 0x03, 0, 0})
	f.Add(0, "", "", []byte{}, []byte{})
	f.Add(-5, "a\x00", "\xff", []byte{0}, []byte{1, 2, 1, 1, 'a', 1, 'b', 0})
	f.Fuzz(func(t *testing.T, status int, name, value string, body, raw []byte) {
		r := idempotency.Response{Status: status, Header: []idempotency.Field{{Name: name, Value: value}, {Name: value, Value: name}}, Body: body}
		if len(body) == 0 {
			r.Body = nil
		}
		enc, err := r.MarshalBinary()
		require.NoError(t, err)
		got, err := idempotency.DecodeResponse(enc)
		require.NoError(t, err)
		require.Equal(t, r, got)

		// Arbitrary input never panics; what decodes re-encodes to itself.
		d, err := idempotency.DecodeResponse(raw)
		if err != nil {
			return
		}
		enc2, _ := d.MarshalBinary()
		d2, err := idempotency.DecodeResponse(enc2)
		require.NoError(t, err)
		require.Equal(t, d, d2)
	})
}

func TestNotReplayable(t *testing.T) {
	r := idempotency.NotReplayable(201)
	require.False(t, r.Replayable())
	require.Equal(t, 201, r.Status)
	b, err := r.AppendBinary(nil)
	require.NoError(t, err)
	var got idempotency.Response
	require.NoError(t, got.UnmarshalBinary(b))
	require.False(t, got.Replayable(), "the mark survives the store's encoding")

	for _, r := range []idempotency.Response{
		{Status: 200},
		{Status: 200, Header: []idempotency.Field{{Name: "Content-Type", Value: "text/plain"}}},
		{Status: 200, Header: []idempotency.Field{{Name: ":not-replayable"}, {Name: "Etag", Value: `"x"`}}},
	} {
		require.True(t, r.Replayable(), "%+v", r)
	}
}
