package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Counters is a collector of one counter family labelled (name, kind) whose
// values live in the instances that count them — plain atomics, often one
// per shard, so that counting costs a hot path no shared cache line — and
// are read at scrape time.
//
// Instances that share a name are summed. So that a name's counters never go
// down when one of its instances is garbage collected (Prometheus would read
// a reset), Counters keeps what it last read from each instance in the
// name's total while another instance of the name lives; what a collected
// instance counted after the last scrape is lost. A name whose instances are
// all gone leaves the output, so memory follows the live instances.
type Counters struct {
	desc  *prometheus.Desc
	kinds []string

	mu      sync.Mutex
	members []counterSource
	retired map[string][]uint64 // read from collected instances, by name
}

type counterSource struct {
	name string
	read func(dst []uint64) bool
	last []uint64 // what the last scrape read
}

// NewCounters returns a collector of the counter family fqName with labels
// name and label, whose label takes the values kinds.
func NewCounters(fqName, help, label string, kinds ...string) *Counters {
	return &Counters{
		desc:    prometheus.NewDesc(fqName, help, []string{"name", label}, nil),
		kinds:   kinds,
		retired: map[string][]uint64{},
	}
}

// Add reports the counters of one instance called name. read adds to dst,
// which starts zeroed, one value per kind in the order given to
// [NewCounters], and returns false once
// the instance is gone; it must not hold the instance strongly (read it
// through a weak.Pointer), or the instance is never collected.
func (c *Counters) Add(name string, read func(dst []uint64) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refreshLocked() // memory follows the live instances even without scrapes
	c.members = append(c.members, counterSource{name: name, read: read, last: make([]uint64, len(c.kinds))})
}

// refreshLocked reads every live instance, drops the gone ones, keeping their
// last reading in their name's retired total while the name has a live
// instance, and forgets the retired totals of names that have none; mu is
// held.
func (c *Counters) refreshLocked() {
	liveNames := map[string]bool{}
	live := c.members[:0]
	var gone []counterSource
	reading := make([]uint64, len(c.kinds))
	for _, m := range c.members {
		clear(reading)
		if !m.read(reading) {
			gone = append(gone, m)
			continue
		}
		copy(m.last, reading)
		liveNames[m.name] = true
		live = append(live, m)
	}
	clear(c.members[len(live):])
	c.members = live
	for _, m := range gone {
		if !liveNames[m.name] {
			continue
		}
		r := c.retired[m.name]
		if r == nil {
			r = make([]uint64, len(c.kinds))
			c.retired[m.name] = r
		}
		addTo(r, m.last)
	}
	for name := range c.retired {
		if !liveNames[name] {
			delete(c.retired, name)
		}
	}
}

func addTo(dst, src []uint64) {
	for i, v := range src {
		dst[i] += v
	}
}

// Describe implements [prometheus.Collector].
func (c *Counters) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements [prometheus.Collector].
func (c *Counters) Collect(ch chan<- prometheus.Metric) {
	var names []string
	byName := map[string][]uint64{}
	c.mu.Lock()
	c.refreshLocked()
	for _, m := range c.members {
		s := byName[m.name]
		if s == nil {
			s = make([]uint64, len(c.kinds))
			byName[m.name] = s
			names = append(names, m.name)
		}
		addTo(s, m.last)
	}
	for name, r := range c.retired {
		addTo(byName[name], r) // refreshLocked kept only names with members
	}
	c.mu.Unlock()
	for _, name := range names {
		for i, v := range byName[name] {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(v), name, c.kinds[i])
		}
	}
}
