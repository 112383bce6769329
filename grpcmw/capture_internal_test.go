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

// With every slot taken (more calls in flight than slots), a call is lent a
// spare, which goes back to the spares, not into a slot; once a slot is
// free, calls take slots again.
func TestCapturesLendSpareWhenSlotsTaken(t *testing.T) {
	cs := newCaptures()
	for i := range cs.slots {
		cs.slots[i].busy.Store(true)
	}
	spare := cs.get()
	require.Nil(t, spare.busy, "a spare")
	spare.trailer = metadata.Pairs("k", "v")
	cs.put(spare)
	require.Nil(t, spare.trailer)
	for i := range cs.slots {
		require.True(t, cs.slots[i].busy.Load(), "a spare given back frees no slot")
		cs.slots[i].busy.Store(false)
	}
	st := cs.get()
	require.NotNil(t, st.busy, "a slot")
	require.True(t, st.busy.Load())
	cs.put(st)
	require.False(t, st.busy.Load(), "the slot is free again")
}

// A call that never gives its capture back (its invoker panicked) leaves the
// slot taken; later calls on the goroutine still get captures of their own.
func TestCapturesOutliveACaptureNeverGivenBack(t *testing.T) {
	cs := newCaptures()
	lost := cs.get()
	for range 100 {
		st := cs.get()
		require.NotSame(t, lost, st)
		require.Len(t, st.with(nil), 1)
		cs.put(st)
	}
}

// An attempt's options are the capture, then the call's own, however many;
// the next call on the same capture sees none of them.
func TestCapturesWithCallOptions(t *testing.T) {
	cs := newCaptures()
	for _, n := range []int{0, 1, 3, 4, 9} {
		own := make([]grpc.CallOption, n)
		for i := range own {
			own[i] = grpc.MaxCallRecvMsgSize(i + 1)
		}
		st := cs.get()
		for range 2 { // every attempt of the call
			opts := st.with(own)
			require.Len(t, opts, 1+n)
			require.Equal(t, cap(opts), len(opts))
			require.IsType(t, grpc.TrailerCallOption{}, opts[0])
			require.Equal(t, own, opts[1:])
		}
		cs.put(st)
		require.Len(t, st.with(nil), 1, "after %d options", n)
		for _, o := range st.opts[1:cap(st.opts)] {
			require.Nil(t, o, "an option of an earlier call kept after %d options", n)
		}
	}
}
