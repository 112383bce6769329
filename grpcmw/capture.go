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
	trailer  metadata.MD
	opts     []grpc.CallOption
	slotBusy *atomic.Bool // the busy flag of the table slot holding it; nil when pooled
}

// init points the capture option at st's own trailer, with room for a few
// options of the call's.
func (st *callState) init() {
	st.opts = make([]grpc.CallOption, 1, 4)
	st.opts[0] = grpc.TrailerCallOption{TrailerAddr: &st.trailer}
}

// with returns the options of an attempt: the trailer capture, then opts.
// The slice has no spare capacity, so an interceptor nearer the network that
// appends to it gets an array of its own instead of writing into st's.
func (st *callState) with(opts []grpc.CallOption) []grpc.CallOption {
	if len(opts) > 0 || len(st.opts) > 1 {
		st.opts = append(st.opts[:1], opts...)
	}
	return st.opts[:len(st.opts):len(st.opts)]
}

// Sizes of a client's table of captures.
const (
	captureBits   = 5
	numCaptures   = 1 << captureBits
	captureProbes = 4 // slots tried before the pool
)

// captures lends each retried call a trailer capture for its duration. The
// grpc.Trailer option needs an address of its own per call in flight, which
// would otherwise cost an allocation per call.
//
// Most calls borrow a slot of a fixed table: one compare-and-swap to take
// it, one store to give it back. A sync.Pool Get and Put took a third of the
// time the interceptor adds to a call that succeeds at once (bench/,
// BenchmarkGRPCClient); the table takes about half that. The slot tried
// first is picked by a hash of the caller's stack address, so that calls on
// different goroutines mostly take different slots, each on its own cache
// line, and one goroutine's calls keep taking the same. Calls beyond the
// table's size, or that find the slots they try taken, use the pool.
type captures struct {
	slots *[numCaptures]captureSlot // 2 KiB, so cache-line aligned
	pool  sync.Pool
}

type captureSlot struct {
	callState
	busy atomic.Bool
	_    [64 - unsafe.Sizeof(callState{}) - unsafe.Sizeof(atomic.Bool{})]byte // one cache line per slot
}

func newCaptures() *captures {
	cs := &captures{slots: new([numCaptures]captureSlot)}
	for i := range cs.slots {
		s := &cs.slots[i]
		s.init()
		s.slotBusy = &s.busy
	}
	cs.pool.New = func() any {
		st := new(callState)
		st.init()
		return st
	}
	return cs
}

// get lends a capture; give it back with put.
func (cs *captures) get() *callState {
	var here byte
	i := uint64(uintptr(unsafe.Pointer(&here))) * 0x9e3779b97f4a7c15 >> (64 - captureBits) // Fibonacci hashing
	for range captureProbes {
		s := &cs.slots[i]
		if !s.busy.Load() && s.busy.CompareAndSwap(false, true) {
			return &s.callState
		}
		i = (i + 1) % numCaptures
	}
	return cs.pool.Get().(*callState)
}

// put takes back st, without the call's options and trailer.
func (cs *captures) put(st *callState) {
	if len(st.opts) > 1 {
		clear(st.opts[1:])
		st.opts = st.opts[:1]
	}
	st.trailer = nil
	if st.slotBusy != nil {
		st.slotBusy.Store(false)
		return
	}
	cs.pool.Put(st)
}
