package idempotency

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
)

// MaxKeyLen is the longest idempotency key ValidateKey accepts, in bytes.
const MaxKeyLen = 255

// ValidateKey reports whether key is a well-formed idempotency key: 1 to
// MaxKeyLen characters, each visible ASCII (0x21 to 0x7E). It returns
// ErrMissingKey for the empty string and ErrInvalidKey for anything else it
// rejects. The error never contains the key, so it is safe to log.
func ValidateKey(key string) error {
	if key == "" {
		return ErrMissingKey
	}
	if len(key) > MaxKeyLen {
		return ErrInvalidKey
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x21 || c > 0x7E {
			return ErrInvalidKey
		}
	}
	return nil
}

// Key is the identity of one idempotent operation as stores see it: the
// SHA-256 of the caller's scope, the method, the route and the client's key
// (see DeriveKey). The raw client key never reaches a store, a metric label
// or a log line; only this digest does.
type Key [sha256.Size]byte

// String returns the key in lowercase hex.
func (k Key) String() string { return hex.EncodeToString(k[:]) }

// keyDomain separates bulwark's key digests from any other SHA-256 use and
// names the derivation's version.
const keyDomain = "bulwark/idempotency/key/v1"

// DeriveKey returns the stored identity of a client key: SHA-256 over a
// domain tag and the four fields, each prefixed by its length as a uvarint,
// so that no two different (scope, method, route, key) tuples produce the
// same input ("ab","c" and "a","bc" differ). Scope is the principal or tenant
// the key belongs to: the same client key under two scopes gives two
// unrelated Keys, so one caller can never replay another's response.
//
// DeriveKey does not validate key; call ValidateKey first. It does not
// allocate when the fields total less than about 400 bytes.
func DeriveKey(scope, method, route, key string) Key {
	var stack [512]byte
	b := stack[:0]
	b = append(b, keyDomain...)
	b = appendField(b, scope)
	b = appendField(b, method)
	b = appendField(b, route)
	b = appendField(b, key)
	return sha256.Sum256(b)
}

func appendField(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}
