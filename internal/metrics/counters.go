package metrics

import (
	"fmt"
	"runtime"
	"slices"
	"sync"
	"weak"

	"github.com/prometheus/client_golang/prometheus"
)

// Family is one counter family of a [Counters]. Its series are labelled by
// the instance's name and, when Label is set, by Label too, which then takes
// the values Kinds: the family has one value per kind. Without a Label the
// family has one value, and Kinds must be empty.
type Family struct {
	Name, Help string
	Label      string
	Kinds      []string
}

// width is the number of values the family takes in a reading.
func (f Family) width() int { return max(1, len(f.Kinds)) }

// Counters is a collector of counter families whose values live in the
// instances that count them — plain atomics, often one per shard, so that
// counting costs a hot path no shared cache line — and are read at scrape
// time. An instance's reading is one flat list of values: those of the
// first family (one per kind, in order), then those of the next, and so on.
//
// Instances that share a name are summed. So that a name's counters never go
// down when one of its instances is garbage collected (Prometheus would read
// a reset, and rate() would count the whole total again), Counters keeps
// what it last read from each instance in the name's total while another
// instance of the name lives; what a collected instance counted after the
// last scrape is lost. A name whose instances are all gone leaves the output
// and is forgotten, so memory follows the live instances; an instance given
// the name later starts its series again from its own counts.
//
// Instances are read with no lock of the collector held (a read must not
// block: it runs in scrapes and now and then when an instance is added), and scrapes
// may run at once: each value kept is the highest read so far,
// whatever order concurrent scrapes finish in. Safe for concurrent use.
type Counters struct {
	families []Family
	descs    []*prometheus.Desc // one per family
	width    int                // values in a reading, all families together

	mu      sync.Mutex
	members []*counterSource
	live    int                 // members after the last refresh
	retired map[string][]uint64 // read from collected instances, by name
}

type counterSource struct {
	name string
	// read adds the instance's counts to dst. It returns what keeps the
	// instance alive until the reading is summed, or nil once the instance
	// is gone.
	read func(dst []uint64) (keep any)
	last []uint64 // the highest reading so far; under the collector's mu
}

// NewCounters returns a collector of the counter families fams. It panics
// when a family has a Label and no Kinds, or Kinds and no Label.
func NewCounters(fams ...Family) *Counters {
	c := &Counters{families: fams, retired: map[string][]uint64{}}
	for _, f := range fams {
		labels := []string{"name"}
		if f.Label != "" {
			labels = append(labels, f.Label)
		}
		if (f.Label == "") != (len(f.Kinds) == 0) {
			panic(fmt.Sprintf("bulwark: counter family %s: label %q with kinds %q", f.Name, f.Label, f.Kinds))
		}
		c.descs = append(c.descs, prometheus.NewDesc(f.Name, f.Help, labels, nil))
		c.width += f.width()
	}
	return c
}

// AddInstance reports the counters of v, an instance called name, through
// c, which holds v weakly. read adds to dst, which starts zeroed, v's values
// in the order of [Counters].
func AddInstance[T any](c *Counters, name string, v *T, read func(v *T, dst []uint64)) {
	wp := weak.Make(v)
	c.add(name, func(dst []uint64) any {
		v := wp.Value()
		if v == nil {
			return nil
		}
		read(v, dst)
		return v
	})
}

func (c *Counters) add(name string, read func(dst []uint64) any) {
	// So that memory follows the live instances even without scrapes, an
	// add refreshes once the members have doubled since the last refresh:
	// at most twice the live instances are held, and a refresh, which
	// reads every member, costs each add a constant on average.
	c.mu.Lock()
	due := len(c.members) >= 2*max(c.live, 8)
	c.mu.Unlock()
	if due {
		c.refresh()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.members = append(c.members, &counterSource{name: name, read: read, last: make([]uint64, c.width)})
}

// Len returns the number of instances c reads and of names it keeps a
// retired total for: what c holds in memory.
func (c *Counters) Len() (instances, retired int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.members), len(c.retired)
}

// refresh reads every instance, drops the gone ones, keeping their last
// reading in their name's retired total while the name has an instance
// left, and forgets the retired totals of names that have none. It returns
// the names left, in the order their first instance was added, and their
// totals.
func (c *Counters) refresh() (names []string, totals map[string][]uint64) {
	c.mu.Lock()
	members := slices.Clone(c.members)
	c.mu.Unlock()

	// Reading an instance may take its own locks: none of c's is held.
	readings := make([]uint64, len(members)*c.width)
	keep := make([]any, len(members))
	for i, m := range members {
		keep[i] = m.read(readings[i*c.width : (i+1)*c.width])
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	gone := map[*counterSource]bool{}
	for i, m := range members {
		if keep[i] == nil {
			gone[m] = true
			continue
		}
		// Scrapes running at once may store their readings out of order.
		for k, v := range readings[i*c.width : (i+1)*c.width] {
			m.last[k] = max(m.last[k], v)
		}
	}
	// A concurrent refresh may have dropped a gone instance already: only
	// those still here are dropped now, so none is retired twice.
	var dropped []*counterSource
	c.members = slices.DeleteFunc(c.members, func(m *counterSource) bool {
		if gone[m] {
			dropped = append(dropped, m)
		}
		return gone[m]
	})
	c.live = len(c.members)
	totals = map[string][]uint64{}
	for _, m := range c.members {
		s := totals[m.name]
		if s == nil {
			s = make([]uint64, c.width)
			totals[m.name] = s
			names = append(names, m.name)
		}
		addTo(s, m.last)
	}
	for _, m := range dropped {
		if totals[m.name] == nil {
			continue // the name has no instance left
		}
		r := c.retired[m.name]
		if r == nil {
			r = make([]uint64, c.width)
			c.retired[m.name] = r
		}
		addTo(r, m.last)
	}
	for name, r := range c.retired {
		if s := totals[name]; s != nil {
			addTo(s, r)
		} else {
			delete(c.retired, name)
		}
	}
	// Until here the instances read stay alive, so no concurrent refresh
	// finds every instance of a name gone and forgets the total meanwhile.
	runtime.KeepAlive(keep)
	return names, totals
}

func addTo(dst, src []uint64) {
	for i, v := range src {
		dst[i] += v
	}
}

// Describe implements [prometheus.Collector].
func (c *Counters) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// Collect implements [prometheus.Collector].
func (c *Counters) Collect(ch chan<- prometheus.Metric) {
	names, totals := c.refresh()
	for _, name := range names {
		values := totals[name]
		for i, f := range c.families {
			if f.Label == "" {
				ch <- prometheus.MustNewConstMetric(c.descs[i], prometheus.CounterValue, float64(values[0]), name)
			} else {
				for k, kind := range f.Kinds {
					ch <- prometheus.MustNewConstMetric(c.descs[i], prometheus.CounterValue, float64(values[k]), name, kind)
				}
			}
			values = values[f.width():]
		}
	}
}
