package httpmw

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"sync/atomic"

	"github.com/bulwark-go/bulwark/bulkhead"
)

// trMaxDrain is how much of a discarded response's body the transport reads
// before closing it, so that the connection goes back to the pool instead of
// being closed. A body known to be longer is closed at once.
const trMaxDrain = 64 << 10

// trDiscard drains and closes the body of a response the caller will never
// see. Reading it to the end lets net/http reuse the connection; the read is
// bounded by trMaxDrain bytes and by the attempt's context.
func trDiscard(resp *http.Response) {
	if resp.Body == nil {
		return
	}
	if resp.ContentLength <= trMaxDrain { // unknown (-1) or small
		_, _ = io.CopyN(io.Discard, resp.Body, trMaxDrain+1)
	}
	_ = resp.Body.Close()
}

// trBody is a response body that holds what the attempt that produced it
// still needs until the caller is done with it: the bulkhead slot (the
// connection is busy until the body is read) and the release of the
// attempt's context (cancelling it earlier would cut the body short). Both
// are released once, on Close or when a Read reaches the end.
type trBody struct {
	rc     io.ReadCloser
	slot   bulkhead.Permit
	cancel context.CancelFunc
	done   atomic.Bool
}

func (b *trBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.release()
	}
	return n, err
}

func (b *trBody) Close() error {
	err := b.rc.Close()
	b.release()
	return err
}

func (b *trBody) release() {
	if b.done.CompareAndSwap(false, true) {
		b.slot.Release()
		if b.cancel != nil {
			b.cancel()
		}
	}
}

// trBodyRW keeps the io.Writer of a 101 Switching Protocols response body,
// which net/http hands out as an io.ReadWriteCloser for the upgraded
// connection.
type trBodyRW struct{ trBody }

func (b *trBodyRW) Write(p []byte) (int, error) { return b.rc.(io.Writer).Write(p) }

// trWrapBody attaches slot and cancel to resp's body.
func trWrapBody(resp *http.Response, slot bulkhead.Permit, cancel context.CancelFunc) {
	if resp.Body == nil {
		resp.Body = http.NoBody
	}
	if _, ok := resp.Body.(io.Writer); ok {
		b := &trBodyRW{trBody{rc: resp.Body, slot: slot, cancel: cancel}}
		resp.Body = b
		return
	}
	resp.Body = &trBody{rc: resp.Body, slot: slot, cancel: cancel}
}

// trPrefixBody is a request body whose first bytes were already read (while
// trying to buffer it for replay) followed by the rest of the original.
type trPrefixBody struct {
	io.Reader
	orig io.Closer
}

func (b trPrefixBody) Close() error { return b.orig.Close() }

// trBuffer reads body for replay. It returns the whole body when it is at
// most limit bytes long (and closes the original), or, when it is longer or
// limit is not positive, a body that yields the same bytes once and must be
// sent without retries.
func trBuffer(body io.ReadCloser, limit int64) (buf []byte, once io.ReadCloser, err error) {
	if limit <= 0 {
		return nil, body, nil
	}
	buf, err = io.ReadAll(io.LimitReader(body, min(limit, math.MaxInt64-1)+1)) // one more byte tells a longer body
	if err != nil {
		_ = body.Close()
		return nil, nil, fmt.Errorf("httpmw: reading the request body to replay it: %w", err)
	}
	if int64(len(buf)) > limit {
		return nil, trPrefixBody{Reader: io.MultiReader(bytes.NewReader(buf), body), orig: body}, nil
	}
	_ = body.Close()
	return buf, nil, nil
}
