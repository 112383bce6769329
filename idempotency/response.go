package idempotency

import (
	"encoding/binary"
	"errors"
)

// Field is one header name and value. Headers are ordered lists of fields so
// that a response replays byte for byte and fingerprints are deterministic.
type Field struct {
	Name, Value string
}

// Response is a stored result, neutral to the transport: the HTTP adapter
// stores the status code, the headers it chooses to replay and the body; the
// gRPC adapter stores the status code, metadata and the marshalled message.
// Responses returned by a store share memory with it: treat them as
// read-only.
type Response struct {
	// Status is the HTTP status code or gRPC code.
	Status int
	// Header holds the headers (metadata) to replay, in order.
	Header []Field
	// Body is the payload.
	Body []byte
}

// notReplayable names the one header field of a [NotReplayable] record. No
// HTTP field or gRPC metadata key can start with a colon, so no stored
// response is mistaken for one.
const notReplayable = ":not-replayable"

// NotReplayable returns the record of a response that reached its client but
// cannot be stored for replay: larger than the adapter or the store keeps,
// streamed, or sent over a connection the handler took over. It keeps the
// status only. Completing a lease with it keeps the request from running a
// second time: a repeat of its key gets [ResultReplayed] with this record,
// which the adapters answer with "already processed, response not
// replayable" (HTTP 409, gRPC AlreadyExists) rather than the response.
func NotReplayable(status int) Response {
	return Response{Status: status, Header: []Field{{Name: notReplayable}}}
}

// Replayable reports whether r holds a response to replay, not only the
// [NotReplayable] record that there was one.
func (r *Response) Replayable() bool {
	return len(r.Header) != 1 || r.Header[0].Name != notReplayable
}

// Size returns the number of bytes the response's fields occupy: header
// names and values plus the body. Stores use it for their byte limits.
func (r *Response) Size() int {
	n := len(r.Body)
	for _, f := range r.Header {
		n += len(f.Name) + len(f.Value)
	}
	return n
}

// codecVersion is the first byte of every encoded Response.
const codecVersion = 1

// Limits on decoded input: a record larger than this is corrupt.
const (
	maxEncodedHeaders = 1 << 16
	maxEncodedLen     = 1 << 31
)

var errCorrupt = errors.New("idempotency: corrupt stored response")

// AppendBinary appends the compact encoding of r to b and returns the
// extended slice: a version byte, the status as a zigzag varint, the number
// of header fields, then each name and value and finally the body, each
// prefixed by its length as a uvarint. It never fails; the error is there to
// satisfy encoding.BinaryAppender.
func (r *Response) AppendBinary(b []byte) ([]byte, error) {
	b = append(b, codecVersion)
	b = binary.AppendVarint(b, int64(r.Status))
	b = binary.AppendUvarint(b, uint64(len(r.Header)))
	for _, f := range r.Header {
		b = appendField(b, f.Name)
		b = appendField(b, f.Value)
	}
	b = binary.AppendUvarint(b, uint64(len(r.Body)))
	return append(b, r.Body...), nil
}

// EncodedLen returns the length of r's encoding.
func (r *Response) EncodedLen() int {
	n := 1 + varintLen(zigzag(int64(r.Status))) + varintLen(uint64(len(r.Header)))
	for _, f := range r.Header {
		n += varintLen(uint64(len(f.Name))) + len(f.Name) + varintLen(uint64(len(f.Value))) + len(f.Value)
	}
	return n + varintLen(uint64(len(r.Body))) + len(r.Body)
}

// MarshalBinary returns the encoding described at AppendBinary.
func (r *Response) MarshalBinary() ([]byte, error) {
	return r.AppendBinary(make([]byte, 0, r.EncodedLen()))
}

// UnmarshalBinary decodes data into r. The decoded response does not share
// memory with data.
func (r *Response) UnmarshalBinary(data []byte) error {
	d, err := DecodeResponse(data)
	if err != nil {
		return err
	}
	d.Body = append([]byte(nil), d.Body...)
	*r = d
	return nil
}

// DecodeResponse decodes an encoding made by AppendBinary. The returned Body
// aliases data (no copy); all header strings share one allocation. It
// returns an error, never panics, on truncated or corrupt input.
func DecodeResponse(data []byte) (Response, error) {
	var r Response
	if len(data) == 0 || data[0] != codecVersion {
		return r, errCorrupt
	}
	p := data[1:]
	status, n := binary.Varint(p)
	if n <= 0 || int64(int(status)) != status {
		return r, errCorrupt
	}
	r.Status = int(status)
	p = p[n:]
	nh, n := binary.Uvarint(p)
	// Every field takes at least two bytes, which bounds the count.
	if n <= 0 || nh > maxEncodedHeaders || nh > uint64(len(p))/2 {
		return r, errCorrupt
	}
	p = p[n:]
	if nh > 0 {
		// First pass: find the extent of the header region, so that all
		// names and values become substrings of one string.
		q := p
		for i := uint64(0); i < 2*nh; i++ {
			var err error
			if _, q, err = nextField(q); err != nil {
				return Response{}, err
			}
		}
		region := string(p[:len(p)-len(q)])
		r.Header = make([]Field, nh)
		off := 0
		for i := range r.Header {
			name, o := fieldAt(region, off)
			value, o2 := fieldAt(region, o)
			r.Header[i] = Field{Name: name, Value: value}
			off = o2
		}
		p = q
	}
	body, rest, err := nextField(p)
	if err != nil || len(rest) != 0 {
		return Response{}, errCorrupt
	}
	if len(body) > 0 {
		r.Body = body
	}
	return r, nil
}

// nextField splits one length-prefixed field off p.
func nextField(p []byte) (field, rest []byte, err error) {
	l, n := binary.Uvarint(p)
	if n <= 0 || l > maxEncodedLen || l > uint64(len(p)-n) {
		return nil, nil, errCorrupt
	}
	end := n + int(l)
	return p[n:end:end], p[end:], nil
}

// fieldAt reads the length-prefixed field at off in an already validated
// region.
func fieldAt(s string, off int) (string, int) {
	var l uint64
	var shift uint
	for {
		c := s[off]
		off++
		l |= uint64(c&0x7f) << shift
		if c < 0x80 {
			break
		}
		shift += 7
	}
	end := off + int(l)
	return s[off:end], end
}

func zigzag(v int64) uint64 { return uint64(v<<1) ^ uint64(v>>63) }

func varintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}
