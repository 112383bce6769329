package grpcmw

import (
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/bulwark-go/bulwark/internal/parallel"
)

// A capture is lent to one call at a time: under many goroutines no two
// hold the same one, and each reads back the trailer it was given.
func TestCapturesLendEachToOneCallAtATime(t *testing.T) {
	cs := newCaptures()
	var holders sync.Map // *callState → *atomic.Int32
	var wg sync.WaitGroup
	for g := range 64 {
		wg.Go(func() {
			mine := metadata.Pairs("g", string(rune('A'+g%26)))
			for range 2000 {
				st := cs.get()
				n, _ := holders.LoadOrStore(st, new(atomic.Int32))
				if held := n.(*atomic.Int32).Add(1); held != 1 {
					t.Errorf("a capture lent to %d calls at once", held)
				}
				if len(st.with(nil)) != 1 {
					t.Errorf("lent with options of an earlier call")
				}
				st.trailer = mine // as grpc-go's Trailer option does
				if st.trailer["g"][0] != mine["g"][0] {
					t.Errorf("trailer overwritten while lent")
				}
				n.(*atomic.Int32).Add(-1)
				cs.put(st)
			}
		})
	}
	wg.Wait()
}

// put forgets the call's trailer and options, so the next call neither
// reads an old hint nor keeps the previous caller's options alive.
func TestCapturesPutForgetsTheCall(t *testing.T) {
	cs := newCaptures()
	st := cs.get()
	var md metadata.MD
	opts := st.with([]grpc.CallOption{grpc.Trailer(&md)})
	require.Len(t, opts, 2)
	st.trailer = metadata.Pairs("grpc-retry-pushback-ms", "5")
	cs.put(st)
	require.Nil(t, st.trailer)
	require.Len(t, st.opts, 1)
	require.Nil(t, st.opts[:2][1], "the call's option is cleared, not only sliced off")
	// The capture option still points at the state's own trailer.
	to, ok := st.opts[0].(grpc.TrailerCallOption)
	require.True(t, ok)
	require.Equal(t, unsafe.Pointer(&st.trailer), unsafe.Pointer(to.TrailerAddr))
}

// An interceptor nearer the network may append to the options it is given;
// that must not write into the capture's own array, which outlives the call.
func TestCapturesKeepNoOptionAppendedDownstream(t *testing.T) {
	cs := newCaptures()
	st := cs.get()
	extra := grpc.WaitForReady(true)
	_ = append(st.with(nil), extra)
	cs.put(st)
	for _, o := range st.opts[:cap(st.opts)] {
		require.NotEqual(t, extra, o, "an option appended downstream is kept by the capture")
	}
}

// BenchmarkCaptures: lending and taking back a trailer capture, the price
// of reading the pushback trailer on every retried call.
func BenchmarkCaptures(b *testing.B) {
	cs := newCaptures()
	b.ReportAllocs()
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			cs.put(cs.get())
		}
	})
	b.Run("parallel", func(b *testing.B) {
		parallel.Run(b, 0, func(pw *parallel.Worker) {
			for pw.Next() {
				cs.put(cs.get())
			}
		})
	})
}
