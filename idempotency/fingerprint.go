package idempotency

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
)

// Fingerprint identifies the content of a request: two requests with the
// same key but different fingerprints are a mismatch. The zero Fingerprint is
// a valid value (adapters that do not fingerprint pass it for every request,
// which turns mismatch detection off).
type Fingerprint [sha256.Size]byte

// String returns the fingerprint in lowercase hex.
func (f Fingerprint) String() string { return hex.EncodeToString(f[:]) }

// DefaultMaxBody is the body limit ReadFingerprint applies when given a limit
// of zero or less: 1 MiB.
const DefaultMaxBody = 1 << 20

const fingerprintDomain = "bulwark/idempotency/fingerprint/v1"

// ReadFingerprint reads body to its end and returns the fingerprint of the
// request together with the body's bytes.
//
// The fingerprint is SHA-256 over a domain tag, the method, the route, the
// number of headers, each header's name and value, and then the body; every
// field but the body (which comes last) is prefixed by its length, so the
// encoding is unambiguous. Headers are hashed in the order given and compared
// byte for byte: the adapter chooses which headers matter and passes them in a
// fixed order with canonical names.
//
// The body is streamed through the hash while it is appended to buf, so there
// is exactly one copy of it in memory: the returned slice, which is buf
// extended (pass a pooled buf[:0] to reuse memory, or nil). Adapters hand the
// returned bytes to the handler (bytes.NewReader) instead of reading the body
// again. A body longer than limit bytes (DefaultMaxBody when limit <= 0)
// stops the read and returns ErrBodyTooLarge; an error from body is returned
// wrapped. On error the returned slice holds what was read so far.
func ReadFingerprint(method, route string, headers []Field, body io.Reader, limit int64, buf []byte) (Fingerprint, []byte, error) {
	if limit <= 0 {
		limit = DefaultMaxBody
	}
	h := sha256.New()
	var stack [256]byte
	p := stack[:0]
	p = append(p, fingerprintDomain...)
	p = appendField(p, method)
	p = appendField(p, route)
	p = binary.AppendUvarint(p, uint64(len(headers)))
	for _, f := range headers {
		p = appendField(p, f.Name)
		p = appendField(p, f.Value)
		if len(p) > len(stack)/2 {
			h.Write(p)
			p = p[:0]
		}
	}
	h.Write(p)

	start := len(buf)
	var err error
	if body != nil {
		buf, err = readLimited(h, body, buf, limit)
	}
	var fp Fingerprint
	if err != nil {
		return fp, buf, err
	}
	// The body's length closes the input, so a body cannot be confused with
	// a longer header list even by a future change in field order.
	var n [binary.MaxVarintLen64]byte
	h.Write(binary.AppendUvarint(n[:0], uint64(len(buf)-start)))
	h.Sum(fp[:0])
	return fp, buf, nil
}

// readLimited appends r's content to buf, hashing each chunk as it arrives,
// and fails with ErrBodyTooLarge once more than limit bytes have been read.
func readLimited(h hash.Hash, r io.Reader, buf []byte, limit int64) ([]byte, error) {
	start := len(buf)
	for {
		if int64(len(buf)-start) > limit {
			return buf, ErrBodyTooLarge
		}
		if len(buf) == cap(buf) {
			// Grow by doubling, but never reserve far beyond the limit.
			want := max(512, 2*cap(buf))
			if ceil := start + int(min(limit, int64(1<<40))) + 1; want > ceil && ceil > len(buf) {
				want = ceil
			}
			nb := make([]byte, len(buf), want)
			copy(nb, buf)
			buf = nb
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		if n > 0 {
			// Hash only what stays within the limit plus one byte; the
			// check above rejects the read before its result is used.
			h.Write(buf[len(buf) : len(buf)+n])
			buf = buf[:len(buf)+n]
		}
		if err == io.EOF {
			if int64(len(buf)-start) > limit {
				return buf, ErrBodyTooLarge
			}
			return buf, nil
		}
		if err != nil {
			return buf, fmt.Errorf("idempotency: reading body: %w", err)
		}
	}
}
