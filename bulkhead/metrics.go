package bulkhead

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bulwark-go/bulwark/internal/metrics"
)

type bulkheadMetrics struct {
	inFlight, queued, limit *gaugeFamily
	rejected                *prometheus.CounterVec
	wait                    *prometheus.HistogramVec
}

func registerMetrics(reg prometheus.Registerer) bulkheadMetrics {
	return bulkheadMetrics{
		inFlight: metrics.Register(reg, newGaugeFamily("bulwark_bulkhead_in_flight",
			"Calls holding a slot in the bulkhead.",
			func(b *Bulkhead) float64 { return float64(b.InFlight()) })),
		queued: metrics.Register(reg, newGaugeFamily("bulwark_bulkhead_queued",
			"Calls waiting in the bulkhead's queue for a slot.",
			func(b *Bulkhead) float64 { return float64(b.Queued()) })),
		limit: metrics.Register(reg, newGaugeFamily("bulwark_bulkhead_limit",
			"Limit on calls in flight in the bulkhead.",
			func(b *Bulkhead) float64 { return float64(b.Limit()) })),
		rejected: metrics.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bulwark_bulkhead_rejected_total",
			Help: "Calls the bulkhead refused, by reason: full (no slot and no room in the queue), timeout (maximum wait elapsed) or canceled (the caller's context ended first).",
		}, []string{"name", "reason"})),
		wait: metrics.Register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "bulwark_bulkhead_wait_seconds",
			Help:    "Time calls spent in the bulkhead's queue, whatever ended the wait; calls admitted at once are not observed.",
			Buckets: metrics.DurationBuckets,
		}, []string{"name"})),
	}
}

// track adds b to the gauge families, which read it when scraped.
func (m bulkheadMetrics) track(b *Bulkhead) {
	for _, g := range []*gaugeFamily{m.inFlight, m.queued, m.limit} {
		g.add(b)
	}
}

// gaugeFamily is a collector of one gauge labelled by name whose values are
// read from the bulkheads themselves at scrape time, so that the hot path
// updates nothing. It holds the bulkheads weakly: a bulkhead nobody uses any
// more is garbage collected and drops out of the output. Bulkheads with the
// same name are summed into one series.
type gaugeFamily struct {
	desc    *prometheus.Desc
	value   func(*Bulkhead) float64
	members metrics.WeakSet[Bulkhead]
}

func newGaugeFamily(name, help string, value func(*Bulkhead) float64) *gaugeFamily {
	return &gaugeFamily{
		desc:  prometheus.NewDesc(name, help, []string{"name"}, nil),
		value: value,
	}
}

func (g *gaugeFamily) add(b *Bulkhead) { g.members.Add(b) }

// Describe implements prometheus.Collector.
func (g *gaugeFamily) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }

// Collect implements prometheus.Collector.
func (g *gaugeFamily) Collect(ch chan<- prometheus.Metric) {
	var names []string
	sums := make(map[string]float64)
	for _, b := range g.members.Live() {
		if _, ok := sums[b.name]; !ok {
			names = append(names, b.name)
		}
		sums[b.name] += g.value(b)
	}
	for _, n := range names {
		ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, sums[n], n)
	}
}
