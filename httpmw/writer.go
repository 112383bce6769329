package httpmw

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
	"sync"

	"github.com/bulwark-go/bulwark/idempotency"
)

// srvWriter is the one ResponseWriter wrapper of the server middleware. It
// records the final status code and, for the Idempotency middleware, captures
// the response. It implements http.Flusher (and FlushError), http.Hijacker,
// io.ReaderFrom and Unwrap whatever the underlying writer supports: each
// delegates to the first writer down the Unwrap chain that has the feature
// and returns http.ErrNotSupported (Flush: does nothing) when none has.
// Deadlines and full duplex are reached through Unwrap by
// http.ResponseController.
type srvWriter struct {
	rw http.ResponseWriter
	// status is the final status code, 0 until the header is written.
	status int
	// rejected is set by srvReject when a bulwark middleware inside this
	// one answered instead of the handler.
	rejected bool
	hijacked bool
	flushed  bool

	// Capture, for Idempotency only.
	capturing bool
	capLimit  int
	capOver   bool
	capNames  []string
	capHeader []idempotency.Field
	capBody   []byte
	// capTrailers are the trailer fields the header declared (Trailer).
	capTrailers []string
}

var srvWriterPool = sync.Pool{New: func() any { return new(srvWriter) }}

// srvGetWriter returns a pooled wrapper around rw. Give it back with
// srvPutWriter once the handler has returned, never when it panicked (the
// panic may be recovered by code that still holds the writer).
func srvGetWriter(rw http.ResponseWriter) *srvWriter {
	sw := srvWriterPool.Get().(*srvWriter)
	sw.rw = rw
	return sw
}

func srvPutWriter(sw *srvWriter) {
	*sw = srvWriter{}
	srvWriterPool.Put(sw)
}

// srvStatus returns the status the client got: the recorded one, or 200
// when the handler wrote nothing (net/http then sends 200).
func (sw *srvWriter) srvStatus() int {
	if sw.status == 0 {
		return http.StatusOK
	}
	return sw.status
}

// Header returns the underlying writer's header map.
func (sw *srvWriter) Header() http.Header { return sw.rw.Header() }

// Unwrap returns the underlying writer, for http.ResponseController.
func (sw *srvWriter) Unwrap() http.ResponseWriter { return sw.rw }

// WriteHeader records code when it is final (not 1xx, except 101) and
// passes it on.
func (sw *srvWriter) WriteHeader(code int) {
	if sw.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		sw.srvRecordHeader(code)
	}
	sw.rw.WriteHeader(code)
}

// srvRecordHeader records the final status and, when capturing, the
// allowlisted header fields as they stand when the header goes out.
func (sw *srvWriter) srvRecordHeader(code int) {
	sw.status = code
	if !sw.capturing {
		return
	}
	h := sw.rw.Header()
	for _, name := range sw.capNames {
		for _, v := range h[name] {
			sw.capHeader = append(sw.capHeader, idempotency.Field{Name: name, Value: v})
		}
	}
	for _, v := range h["Trailer"] {
		for name := range strings.SplitSeq(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				sw.capTrailers = append(sw.capTrailers, http.CanonicalHeaderKey(name))
			}
		}
	}
}

// srvCaptureTrailers captures, once the handler has returned, the
// allowlisted trailer fields it set: those the header declared and those
// under http.TrailerPrefix. They are stored under http.TrailerPrefix, which
// is how a replay sends them as trailers again.
func (sw *srvWriter) srvCaptureTrailers() {
	h := sw.rw.Header()
	add := func(name string, values []string) {
		if !slices.Contains(sw.capNames, name) {
			return
		}
		for _, v := range values {
			sw.capHeader = append(sw.capHeader, idempotency.Field{Name: http.TrailerPrefix + name, Value: v})
		}
	}
	for _, name := range sw.capTrailers {
		add(name, h[name])
	}
	for k, vs := range h {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			add(http.CanonicalHeaderKey(name), vs)
		}
	}
}

// Write writes p, with an implicit 200 when no status was written. When
// capturing, all of p is captured even if the underlying write fails: the
// handler produced it, and a client whose connection broke mid-response
// must get the whole response when its retry is replayed.
func (sw *srvWriter) Write(p []byte) (int, error) {
	if sw.status == 0 {
		sw.srvRecordHeader(http.StatusOK)
	}
	if sw.capturing && !sw.capOver {
		if len(sw.capBody)+len(p) > sw.capLimit {
			sw.capOver = true
			sw.capBody = nil
		} else {
			sw.capBody = append(sw.capBody, p...)
		}
	}
	return sw.rw.Write(p)
}

// srvWriteOnly hides every method of a writer but Write, so that io.Copy
// does not come back to ReadFrom.
type srvWriteOnly struct{ w io.Writer }

func (o srvWriteOnly) Write(p []byte) (int, error) { return o.w.Write(p) }

// ReadFrom copies src to the response, using the underlying writer's
// ReadFrom (sendfile, say) when it has one and the response is not being
// captured.
func (sw *srvWriter) ReadFrom(src io.Reader) (int64, error) {
	if sw.capturing {
		return io.Copy(srvWriteOnly{sw}, src)
	}
	if sw.status == 0 {
		sw.srvRecordHeader(http.StatusOK)
	}
	if rf, ok := sw.rw.(io.ReaderFrom); ok {
		return rf.ReadFrom(src)
	}
	return io.Copy(srvWriteOnly{sw.rw}, src)
}

// Flush sends buffered data to the client; see FlushError.
func (sw *srvWriter) Flush() { _ = sw.FlushError() }

// FlushError flushes through the first writer down the Unwrap chain that can,
// and returns http.ErrNotSupported, changing nothing, when none can. A
// flushed response is streaming: the Idempotency middleware stores only its
// status (idempotency.NotReplayable).
func (sw *srvWriter) FlushError() error {
	rw := sw.rw
	for {
		switch t := rw.(type) {
		case interface{ FlushError() error }:
			err := t.FlushError()
			if !errors.Is(err, http.ErrNotSupported) { // a wrapper may not flush after all
				sw.flushing()
			}
			return err
		case http.Flusher:
			t.Flush()
			sw.flushing()
			return nil
		case interface{ Unwrap() http.ResponseWriter }:
			rw = t.Unwrap()
		default:
			return http.ErrNotSupported
		}
	}
}

// flushing marks the response as streaming, its header sent by the flush
// that just happened.
func (sw *srvWriter) flushing() {
	if sw.status == 0 {
		sw.srvRecordHeader(http.StatusOK)
	}
	sw.flushed = true
}

// Hijack takes over the connection through the first writer down the
// Unwrap chain that supports it, and returns http.ErrNotSupported when none
// does (HTTP/2, say).
func (sw *srvWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(sw.rw).Hijack()
	if err == nil {
		sw.hijacked = true
	}
	return c, brw, err
}
