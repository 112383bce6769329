package metrics

import (
	"sync"
	"weak"
)

// WeakSet is the set of instances a scrape-time collector reads: it holds
// them weakly, so an instance that nobody uses any more is garbage
// collected and drops out of the metrics. Safe for concurrent use; the zero
// value is an empty set.
type WeakSet[T any] struct {
	mu      sync.Mutex
	members []weak.Pointer[T]
}

// Add adds v to the set.
func (s *WeakSet[T]) Add(v *T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked()
	s.members = append(s.members, weak.Make(v))
}

// Live returns the members still alive, in the order they were added. The
// caller reads them without any lock of the set held.
func (s *WeakSet[T]) Live() []*T {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked()
	live := make([]*T, 0, len(s.members))
	for _, wp := range s.members {
		if v := wp.Value(); v != nil {
			live = append(live, v)
		}
	}
	return live
}

func (s *WeakSet[T]) pruneLocked() {
	kept := s.members[:0]
	for _, wp := range s.members {
		if wp.Value() != nil {
			kept = append(kept, wp)
		}
	}
	clear(s.members[len(kept):])
	s.members = kept
}
