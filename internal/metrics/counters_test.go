package metrics

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"weak"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/bulwark-go/bulwark/internal/gctest"
)

// source is an instance the test counts for by hand; gone stands for its
// collection by the garbage collector.
type source struct {
	n    [2]uint64
	gone bool
}

func (s *source) read(dst []uint64) bool {
	if s.gone {
		return false
	}
	dst[0] += s.n[0]
	dst[1] += s.n[1]
	return true
}

func newTestCounters() *Counters {
	return NewCounters(Family{Name: "bulwark_test_events_total", Help: "Events.", Label: "kind", Kinds: []string{"good", "bad"}})
}

func expectEvents(t *testing.T, reg prometheus.Gatherer, lines ...string) {
	t.Helper()
	want := "# HELP bulwark_test_events_total Events.\n# TYPE bulwark_test_events_total counter\n" +
		strings.Join(lines, "\n") + "\n"
	if len(lines) == 0 {
		want = ""
	}
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want), "bulwark_test_events_total"))
}

func TestCountersSumInstancesOfAName(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	a, b, c := &source{n: [2]uint64{1, 2}}, &source{n: [2]uint64{10, 20}}, &source{n: [2]uint64{5, 0}}
	Register(reg, newTestCounters()).Add("x", a.read)
	Register(reg, newTestCounters()).Add("x", b.read) // the same collector
	Register(reg, newTestCounters()).Add("y", c.read)
	expectEvents(t, reg,
		`bulwark_test_events_total{kind="bad",name="x"} 22`,
		`bulwark_test_events_total{kind="good",name="x"} 11`,
		`bulwark_test_events_total{kind="bad",name="y"} 0`,
		`bulwark_test_events_total{kind="good",name="y"} 5`,
	)
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
}

// When one of two instances of a name goes, what was last read from it stays
// in the name's total: a counter that went down would read as a reset.
func TestCountersNeverGoDownWhenAnInstanceGoes(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	cs := Register(reg, newTestCounters())
	a, b := &source{n: [2]uint64{3, 1}}, &source{n: [2]uint64{4, 0}}
	cs.Add("x", a.read)
	cs.Add("x", b.read)
	expectEvents(t, reg,
		`bulwark_test_events_total{kind="bad",name="x"} 1`,
		`bulwark_test_events_total{kind="good",name="x"} 7`,
	)
	a.gone = true
	b.n[0]++
	expectEvents(t, reg,
		`bulwark_test_events_total{kind="bad",name="x"} 1`,
		`bulwark_test_events_total{kind="good",name="x"} 8`,
	)
	// A new instance of the name adds to the total too.
	cs.Add("x", (&source{n: [2]uint64{0, 2}}).read)
	expectEvents(t, reg,
		`bulwark_test_events_total{kind="bad",name="x"} 3`,
		`bulwark_test_events_total{kind="good",name="x"} 8`,
	)
}

// A name whose instances are all gone leaves the output and the collector's
// memory, also when nobody scrapes: Add forgets the gone instances.
func TestCountersForgetNamesWithNoInstance(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	cs := Register(reg, newTestCounters())
	a := &source{n: [2]uint64{1, 1}}
	cs.Add("x", a.read)
	expectEvents(t, reg,
		`bulwark_test_events_total{kind="bad",name="x"} 1`,
		`bulwark_test_events_total{kind="good",name="x"} 1`,
	)
	a.gone = true
	for range 100 {
		s := &source{}
		cs.Add("y", s.read)
		s.gone = true
	}
	n, retired := cs.Len()
	require.LessOrEqual(t, n, 2*8+1, "at most twice the live instances, and a few")
	require.Zero(t, retired)
	expectEvents(t, reg)
}

// Adding instances reads the ones already there only now and then: adding
// n costs O(n) reads in all, not one read of every instance per add.
func TestCountersAddIsAmortised(t *testing.T) {
	cs := newTestCounters()
	reads := 0
	const n = 10_000
	for range n {
		cs.Add("x", func(dst []uint64) bool { reads++; return true })
	}
	require.LessOrEqual(t, reads, 2*n)
	got, _ := cs.Len()
	require.Equal(t, n, got)
}

// instance is what AddInstance holds weakly: the garbage collector decides
// when it is gone.
type instance struct {
	n     [4]uint64 // ops, then errors by kind a, b, c
	stall chan stall
}

// stall makes a read stall once it has taken its reading: it sends on
// stalled, then waits for release to close.
type stall struct{ stalled, release chan struct{} }

func readInstance(v *instance, dst []uint64) {
	for i, n := range v.n {
		dst[i] += n
	}
	if v.stall != nil {
		select {
		case s := <-v.stall:
			s.stalled <- struct{}{}
			<-s.release
		default:
		}
	}
}

func newTwoFamilies() *Counters {
	return NewCounters(
		Family{Name: "bulwark_test_ops_total", Help: "Ops."},
		Family{Name: "bulwark_test_errors_total", Help: "Errors.", Label: "kind", Kinds: []string{"a", "b", "c"}},
	)
}

func expectTwoFamilies(t *testing.T, reg prometheus.Gatherer, name string, ops, a, b, c uint64) {
	t.Helper()
	want := fmt.Sprintf(`# HELP bulwark_test_errors_total Errors.
# TYPE bulwark_test_errors_total counter
bulwark_test_errors_total{kind="a",name="%[1]s"} %[3]d
bulwark_test_errors_total{kind="b",name="%[1]s"} %[4]d
bulwark_test_errors_total{kind="c",name="%[1]s"} %[5]d
# HELP bulwark_test_ops_total Ops.
# TYPE bulwark_test_ops_total counter
bulwark_test_ops_total{name="%[1]s"} %[2]d
`, name, ops, a, b, c)
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want), "bulwark_test_ops_total", "bulwark_test_errors_total"))
}

// One reading fills every family in order: a family with no label takes
// one value, a labelled one a value per kind.
func TestCountersFamilies(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	x := &instance{n: [4]uint64{7, 1, 2, 3}}
	AddInstance(Register(reg, newTwoFamilies()), "x", x, readInstance)
	AddInstance(Register(reg, newTwoFamilies()), "x", &instance{n: [4]uint64{1, 0, 0, 1}}, readInstance)
	cs := Register(reg, newTwoFamilies())
	require.Equal(t, 2, func() int { n, _ := cs.Len(); return n }(), "one collector for both")
	expectTwoFamilies(t, reg, "x", 8, 1, 2, 4)
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
	runtime.KeepAlive(x)
}

func TestCountersFamilyLabelNeedsKinds(t *testing.T) {
	require.Panics(t, func() { NewCounters(Family{Name: "bulwark_test_total", Help: "T.", Label: "kind"}) })
	require.Panics(t, func() { NewCounters(Family{Name: "bulwark_test_total", Help: "T.", Kinds: []string{"a"}}) })
}

// AddInstance holds instances weakly: a collected one keeps what was last
// read from it in its name's total while the name has an instance, and the
// name is forgotten with its last instance.
func TestCountersAddInstanceAcrossGC(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	cs := Register(reg, newTwoFamilies())
	keep := &instance{n: [4]uint64{1, 1, 0, 0}}
	AddInstance(cs, "x", keep, readInstance)
	gone := &instance{n: [4]uint64{2, 0, 1, 0}}
	AddInstance(cs, "x", gone, readInstance)
	expectTwoFamilies(t, reg, "x", 3, 1, 1, 0) // gone lives through this scrape
	wp := weak.Make(gone)
	gone = nil
	gctest.Collect(t, wp)
	expectTwoFamilies(t, reg, "x", 3, 1, 1, 0)
	keep.n[0]++
	expectTwoFamilies(t, reg, "x", 4, 1, 1, 0)
	n, retired := cs.Len()
	require.Equal(t, 1, n)
	require.Equal(t, 1, retired)

	wp = weak.Make(keep)
	keep = nil
	gctest.Collect(t, wp)
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(""), "bulwark_test_ops_total", "bulwark_test_errors_total"))
	n, retired = cs.Len()
	require.Zero(t, n)
	require.Zero(t, retired)
}

// Scrapes read instances with no lock held and may finish out of order: a
// scrape that read an instance before another scrape read it higher still
// reports the higher value; the instance it reads stays alive meanwhile, so
// its name is not forgotten under it.
func TestCountersConcurrentScrapes(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	cs := Register(reg, newTwoFamilies())
	x := &instance{n: [4]uint64{1, 0, 0, 0}, stall: make(chan stall, 1)}
	AddInstance(cs, "x", x, readInstance)
	wp := weak.Make(x)

	st := stall{stalled: make(chan struct{}), release: make(chan struct{})}
	x.stall <- st // the next read of x stalls
	done := make(chan []*dto.MetricFamily)
	go func() {
		ch := make(chan prometheus.Metric, 16)
		go func() {
			cs.Collect(ch) // reads x.n[0] == 1, then stalls
			close(ch)
		}()
		var mfs []*dto.MetricFamily
		for m := range ch {
			var pb dto.Metric
			if m.Write(&pb) == nil {
				mfs = append(mfs, &dto.MetricFamily{Metric: []*dto.Metric{&pb}})
			}
		}
		done <- mfs
	}()
	<-st.stalled

	// The stalled scrape holds no lock: another scrape and an Add go on.
	x.n[0] = 5
	x = nil // only the stalled scrape holds x now
	runtime.GC()
	require.NotNil(t, wp.Value(), "the stalled scrape keeps x alive")
	y := &instance{n: [4]uint64{10, 0, 0, 0}}
	AddInstance(cs, "x", y, readInstance)
	expectTwoFamilies(t, reg, "x", 15, 0, 0, 0)

	close(st.release)
	mfs := <-done
	require.NotEmpty(t, mfs)
	require.Equal(t, 15.0, mfs[0].GetMetric()[0].GetCounter().GetValue(),
		"the stalled scrape read 1 but reports the highest reading, 5, plus y")

	gctest.Collect(t, wp)
	expectTwoFamilies(t, reg, "x", 15, 0, 0, 0) // x's last reading is retired
	runtime.KeepAlive(y)
}

// Instances of one name come and go while scrapers read the collector: the
// name keeps an instance throughout, so each scraper sees its counters only
// grow.
func TestCountersChurnWithConcurrentScrapes(t *testing.T) {
	cs := newTwoFamilies()
	var mu sync.Mutex // guards the counts the instances read
	read := func(v *instance, dst []uint64) {
		mu.Lock()
		defer mu.Unlock()
		readInstance(v, dst)
	}
	keep := &instance{}
	AddInstance(cs, "x", keep, read)
	stop := make(chan struct{})
	var churn sync.WaitGroup
	churn.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			v := &instance{}
			AddInstance(cs, "x", v, read)
			mu.Lock()
			v.n[0]++
			v.n[2]++
			keep.n[0]++
			mu.Unlock()
			if i%8 == 0 {
				runtime.GC()
			}
		}
	})
	scrape := func() {
		prev := map[string]float64{}
		for range 200 {
			ch := make(chan prometheus.Metric, 16)
			go func() { cs.Collect(ch); close(ch) }()
			for m := range ch {
				var pb dto.Metric
				require.NoError(t, m.Write(&pb))
				key := m.Desc().String()
				for _, lp := range pb.GetLabel() {
					key += "," + lp.GetValue()
				}
				v := pb.GetCounter().GetValue()
				if v < prev[key] {
					t.Errorf("%s went down from %v to %v", key, prev[key], v)
				}
				prev[key] = v
			}
		}
	}
	var scrapers sync.WaitGroup
	scrapers.Go(scrape)
	scrapers.Go(scrape)
	scrapers.Wait()
	close(stop)
	churn.Wait()
	runtime.KeepAlive(keep)
}

// Add, for tests, reports the counters of one instance called name. read adds to dst,
// which starts zeroed, the instance's values in the order of [Counters],
// and returns false once the instance is gone; it must not hold the
// instance strongly (read it through a weak.Pointer), or the instance is
// never collected. Prefer [AddInstance], which also keeps an instance being
// read alive until the scrape has summed it.
func (c *Counters) Add(name string, read func(dst []uint64) bool) {
	c.add(name, func(dst []uint64) any {
		if !read(dst) {
			return nil
		}
		return true // read holds its instance itself: nothing to keep
	})
}
