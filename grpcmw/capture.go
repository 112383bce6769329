package grpcmw

import (
	"sync"
	"sync/atomic"
	"unsafe"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// callState is the trailer capture of a call: opts[0] is the option that
// stores the trailer in trailer, and the call's own options follow it, so a
// call without options of its own copies nothing.
type callState struct {
	trailer metadata.MD
	opts    []grpc.CallOption
	// busy is the flag of the slot that holds this state; nil for a spare.
	busy *atomic.Bool
}

// init points the state's capture option, opts[0] of the array given, at
// its trailer.
func (st *callState) init(opts []grpc.CallOption) {
	st.opts = opts[:1]
	st.opts[0] = grpc.TrailerCallOption{TrailerAddr: &st.trailer}
}

// with returns the options of an attempt: the trailer capture, then opts.
// The slice has no spare capacity, so an interceptor nearer the network that
// appends to it gets an array of its own instead of writing into st's.
func (st *callState) with(opts []grpc.CallOption) []grpc.CallOption {
	n := 1 + len(opts)
	if n > cap(st.opts) {
		st.opts = append(st.opts[:1], opts...)
	} else if n > 1 || len(st.opts) > 1 {
		// A call has few options of its own (a generated stub's one, most
		// often): copied one by one, cheaper than append's copy.
		clearFrom(st.opts, n)
		st.opts = st.opts[:n]
		for i, o := range opts {
			st.opts[1+i] = o
		}
	}
	return st.opts[:n:n]
}

// clearFrom clears opts[i:], one by one: cheaper than clear for the few
// options of a call.
func clearFrom(opts []grpc.CallOption, i int) {
	for ; i < len(opts); i++ {
		opts[i] = nil
	}
}

// captures lends each retried call a trailer capture for its duration. The
// grpc.Trailer option needs an address of its own per call in flight, which
// would otherwise cost an allocation per call.
//
// A call takes the slot that a hash of an address on its goroutine's stack
// picks, or the next one, with one compare-and-swap, and gives it back with
// one atomic store; calls on different goroutines mostly pick different
// slots. When both are taken (more calls in flight than slots, or a
// collision) it takes a spare from a sync.Pool. The slots are there because
// a sync.Pool's Get and Put cost more than all the rest of a retried call
// that succeeds at once: interleaved A/B runs of bench/ BenchmarkGRPCClient
// bulwark-retry, 8 rounds, serial 31.3 → 26.6 ns and parallel 15.5 → 13.0 ns
// for the slots alone. They take 16 KiB per interceptor.
//
// A call whose invoker panics does not give its capture back, since grpc-go
// may still write the trailer or read the options of a call it has not
// finished: its slot stays taken, and the calls that pick it take the next
// slot or a spare. The slot keeps that call's options and trailer reachable;
// at most one call's per slot, 128 in all.
type captures struct {
	slots [numCaptureSlots]captureSlot
	spare sync.Pool
}

const (
	captureSlotBits = 7
	numCaptureSlots = 1 << captureSlotBits
)

// captureSlot is a capture and the flag that lends it, on cache lines of
// their own.
type captureSlot struct {
	busy atomic.Bool
	st   callState
	opts [4]grpc.CallOption // the capture, then up to three options of the call's own
	_    [128 - 8 - unsafe.Sizeof(callState{}) - 4*unsafe.Sizeof(grpc.CallOption(nil))]byte
}

func newCaptures() *captures {
	cs := new(captures)
	for i := range cs.slots {
		s := &cs.slots[i]
		s.st.init(s.opts[:])
		s.st.busy = &s.busy
	}
	cs.spare.New = func() any {
		st := new(callState)
		st.init(make([]grpc.CallOption, 1, 4))
		return st
	}
	return cs
}

// get lends a capture; give it back with put.
func (cs *captures) get() *callState {
	// here is on the caller's stack, whose address picks the slot, by
	// Fibonacci hashing.
	var here byte
	i := uint64(uintptr(unsafe.Pointer(&here))) * 0x9e3779b97f4a7c15 >> (64 - captureSlotBits)
	if s := &cs.slots[i]; !s.busy.Load() && s.busy.CompareAndSwap(false, true) {
		return &s.st
	}
	return cs.getElsewhere(i)
}

// getElsewhere lends the capture of the slot after i, or a spare.
func (cs *captures) getElsewhere(i uint64) *callState {
	if s := &cs.slots[(i+1)%numCaptureSlots]; !s.busy.Load() && s.busy.CompareAndSwap(false, true) {
		return &s.st
	}
	return cs.spare.Get().(*callState)
}

// put takes back st, without the call's options and trailer.
func (cs *captures) put(st *callState) {
	clearFrom(st.opts, 1)
	st.opts = st.opts[:1]
	st.trailer = nil
	if st.busy == nil {
		cs.spare.Put(st)
		return
	}
	st.busy.Store(false)
}
