// Command benchtable turns the output of one or more `go test -bench` runs
// into a markdown table: for each benchmark the median ns/op, allocs/op and
// B/op over the runs, any other reported metric, and the ratio to its group's
// reference variant, under a header that names the machine, the Go version
// and the date; then whether each target of config.go is met.
//
// Benchmarks are named Benchmark<Group>/<variant>/<mode>, mode being serial
// or parallel; config.go lists the groups and their references.
//
// Usage:
//
//	benchtable [-cmd 'bench/run'] [-ref Group=variant]... [file ...]
//
// With no file it reads standard input.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// group is a set of variants doing the same work.
type group struct {
	name  string // the <Group> of Benchmark<Group>/...
	title string // what the work is
	ref   string // the variant ratios are taken against; empty: none
	// metric is the unit the ratio compares, ns/op unless set. A unit that
	// ends in "/s" is a rate, where more is better.
	metric string
	// floor, when set, names the variant whose value is subtracted from both
	// sides of each ratio, which then compares the cost each variant adds
	// to the floor (a bare handler, say).
	floor string
	// ratioUnits are other units shown with their own ratio to the
	// reference, such as latency quantiles beside a rate.
	ratioUnits []string
	// paired groups take each ratio as the median of the ratios within each
	// run, where run i of every variant ran close together in time (one
	// after the other, as cmd/loopback does), rather than as the ratio of
	// the medians: a slow spell of a shared machine then cancels out.
	paired  bool
	targets []target
}

func (g *group) unit() string {
	if g.metric == "" {
		return "ns/op"
	}
	return g.metric
}

// target is what a variant should reach.
type target struct {
	variant string
	mode    string // "serial" or "parallel"; empty: every mode
	ratio   bound  // on the group's metric, against its reference
	allocs  bound  // allocs/op
	// addedAllocs bounds the allocs/op added to the group's floor (its
	// reference when it has no floor); addedPerOp bounds what is added to
	// the floor in other units.
	addedAllocs bound
	addedPerOp  map[string]bound
	// than names a variant doing comparable work: thanRatio bounds the ns/op
	// this variant adds to the floor (or reference) over the ns/op than adds.
	than      string
	thanRatio bound
	perOp     map[string]bound
}

// bound is an upper or lower limit on a value; the zero bound is no limit.
type bound struct {
	limit    float64
	min, set bool
}

func atMost(v float64) bound  { return bound{limit: v, set: true} }
func atLeast(v float64) bound { return bound{limit: v, min: true, set: true} }

func (b bound) ok(v float64) bool {
	if b.min {
		return v >= b.limit
	}
	return v <= b.limit
}

func (b bound) String() string {
	if b.min {
		return "≥ " + num2(b.limit)
	}
	return "≤ " + num2(b.limit)
}

// miss says by how much v misses b: relative when the limit is not zero.
func (b bound) miss(v float64) string {
	if b.limit == 0 {
		return "by " + num(math.Abs(v-b.limit))
	}
	return fmt.Sprintf("by %.0f%%", math.Abs(v/b.limit-1)*100)
}

// id names one benchmark.
type id struct{ group, variant, mode string }

// series holds the values a benchmark reported, by unit, one per run.
type series map[string][]float64

// results is everything read from the input.
type results struct {
	cpu    string // from the "cpu:" line go test prints
	procs  int    // GOMAXPROCS, from the names' suffix
	order  []id   // in order of first appearance
	series map[id]series
}

var procsSuffix = regexp.MustCompile(`-(\d+)$`)

// parse reads go test -bench output. Lines that are not benchmark results
// are ignored, except the "cpu:" header.
func (r *results) parse(in io.Reader) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if cpu, ok := strings.CutPrefix(line, "cpu: "); ok {
			r.cpu = strings.TrimSpace(cpu)
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || len(f)%2 != 0 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if _, err := strconv.ParseInt(f[1], 10, 64); err != nil {
			continue
		}
		name := strings.TrimPrefix(f[0], "Benchmark")
		if m := procsSuffix.FindStringSubmatch(name); m != nil {
			r.procs, _ = strconv.Atoi(m[1])
			name = strings.TrimSuffix(name, m[0])
		}
		k := splitName(name)
		s := r.series[k]
		if s == nil {
			s = series{}
			r.series[k] = s
			r.order = append(r.order, k)
		}
		for i := 2; i < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return fmt.Errorf("%q: value %q: %w", line, f[i], err)
			}
			s[f[i+1]] = append(s[f[i+1]], v)
		}
	}
	return sc.Err()
}

// splitName splits Group/variant/mode; a variant may itself contain slashes.
func splitName(name string) id {
	parts := strings.Split(name, "/")
	switch len(parts) {
	case 1:
		return id{group: parts[0]}
	case 2:
		return id{group: parts[0], variant: parts[1]}
	}
	return id{group: parts[0], variant: strings.Join(parts[1:len(parts)-1], "/"), mode: parts[len(parts)-1]}
}

func median(vs []float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	s := slices.Sorted(slices.Values(vs))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// spread is half the range of vs relative to its median.
func spread(vs []float64) float64 {
	m := median(vs)
	if len(vs) < 2 || m == 0 {
		return 0
	}
	return (slices.Max(vs) - slices.Min(vs)) / 2 / m
}

// value is the median of unit in s, and whether s has it.
func (s series) value(unit string) (float64, bool) {
	vs, ok := s[unit]
	if !ok {
		return 0, false
	}
	return median(vs), true
}

// num formats v with about three significant digits, in k or M beyond 10⁴.
func num(v float64) string {
	a := math.Abs(v)
	switch {
	case math.IsNaN(v):
		return "?"
	case a >= 1e7:
		return strconv.FormatFloat(v/1e6, 'f', 1, 64) + "M"
	case a >= 1e4:
		return strconv.FormatFloat(v/1e3, 'f', 1, 64) + "k"
	case a >= 100 || v == math.Trunc(v):
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

// table is the report.
type table struct {
	res    *results
	groups []*group // configured ones first, then the others
	modes  []string
}

func newTable(res *results, config []group, refs map[string]string) *table {
	t := &table{res: res}
	known := map[string]*group{}
	for i := range config {
		g := config[i]
		if r, ok := refs[g.name]; ok {
			g.ref = r
		}
		known[g.name] = &g
		t.groups = append(t.groups, &g)
	}
	for _, k := range res.order {
		if known[k.group] == nil {
			g := &group{name: k.group, ref: refs[k.group]}
			known[k.group] = g
			t.groups = append(t.groups, g)
		}
		if !slices.Contains(t.modes, k.mode) {
			t.modes = append(t.modes, k.mode)
		}
	}
	// serial before parallel, whatever ran first.
	slices.SortStableFunc(t.modes, func(a, b string) int { return modeRank(a) - modeRank(b) })
	return t
}

func modeRank(m string) int {
	switch m {
	case "serial":
		return 0
	case "parallel":
		return 1
	}
	return 2
}

// rows returns the ids of g measured in mode, in order of appearance.
func (t *table) rows(g *group, mode string) []id {
	var ids []id
	for _, k := range t.res.order {
		if k.group == g.name && k.mode == mode {
			ids = append(ids, k)
		}
	}
	return ids
}

// ratio of k's metric to the reference's in the same mode.
func (t *table) ratio(g *group, k id) (float64, bool) {
	return t.unitRatio(g, k, g.unit())
}

// unitRatio is the ratio of k's unit to the reference's in the same mode.
func (t *table) unitRatio(g *group, k id, unit string) (float64, bool) {
	if g.ref == "" {
		return 0, false
	}
	if g.paired {
		return t.pairedRatio(g, k, unit)
	}
	rv, ok1 := t.value(id{g.name, g.ref, k.mode}, unit)
	v, ok2 := t.value(k, unit)
	if !ok1 || !ok2 {
		return 0, false
	}
	if g.floor != "" {
		f, ok := t.value(id{g.name, g.floor, k.mode}, unit)
		if !ok {
			return 0, false
		}
		v, rv = v-f, rv-f
	}
	if rv == 0 {
		return 0, false
	}
	return v / rv, true
}

// pairedRatio is the median over the runs of the ratio of k's unit to the
// reference's in the same run, less the floor's in that run if g has one.
// Runs are matched by their order; variants with different numbers of runs
// have no paired ratio.
func (t *table) pairedRatio(g *group, k id, unit string) (float64, bool) {
	series := func(variant string) []float64 {
		s := t.res.series[id{g.name, variant, k.mode}]
		return s[unit]
	}
	vs, rs := series(k.variant), series(g.ref)
	fs := make([]float64, len(vs))
	if g.floor != "" {
		fs = series(g.floor)
	}
	if len(vs) == 0 || len(vs) != len(rs) || len(vs) != len(fs) {
		return 0, false
	}
	ratios := make([]float64, 0, len(vs))
	for i := range vs {
		if d := rs[i] - fs[i]; d != 0 {
			ratios = append(ratios, (vs[i]-fs[i])/d)
		}
	}
	if len(ratios) == 0 {
		return 0, false
	}
	return median(ratios), true
}

// base is the variant that added costs are measured from: the floor, else
// the reference.
func (g *group) base() string {
	if g.floor != "" {
		return g.floor
	}
	return g.ref
}

// added is how much k's unit exceeds the base variant's in the same mode:
// the difference of the medians, or in a paired group the median of the
// differences within each run.
func (t *table) added(g *group, k id, unit string) (float64, bool) {
	if g.base() == "" {
		return 0, false
	}
	if g.paired {
		vs := t.res.series[k][unit]
		bs := t.res.series[id{g.name, g.base(), k.mode}][unit]
		if len(vs) == 0 || len(vs) != len(bs) {
			return 0, false
		}
		d := make([]float64, len(vs))
		for i := range vs {
			d[i] = vs[i] - bs[i]
		}
		return median(d), true
	}
	b, ok1 := t.value(id{g.name, g.base(), k.mode}, unit)
	v, ok2 := t.value(k, unit)
	return v - b, ok1 && ok2
}

// value is the median of k's unit.
func (t *table) value(k id, unit string) (float64, bool) {
	s, ok := t.res.series[k]
	if !ok {
		return 0, false
	}
	return s.value(unit)
}

func (t *table) runs() (lo, hi int) {
	lo = math.MaxInt
	for _, s := range t.res.series {
		n := len(s["ns/op"])
		lo, hi = min(lo, n), max(hi, n)
	}
	return lo, hi
}

func (t *table) write(w io.Writer, cmd string, now time.Time) {
	cpu, cores := cpuInfo()
	if cpu == "" {
		cpu = t.res.cpu
	}
	lo, hi := t.runs()
	runs := strconv.Itoa(lo)
	if lo != hi {
		runs = fmt.Sprintf("%d–%d", lo, hi)
	}
	fmt.Fprintf(w, "Measured %s on %s, %d cores (GOMAXPROCS %d), %s %s/%s, with `%s`: "+
		"median of %s runs; ± is half the range of the runs.\n\n",
		now.UTC().Format("2006-01-02"), cpu, cores, t.res.procs, runtime.Version(), runtime.GOOS, runtime.GOARCH, cmd, runs)

	fmt.Fprintln(w, "| benchmark | variant | ns/op | allocs/op | B/op | ratio to ref | other |")
	fmt.Fprintln(w, "| --- | --- | ---: | ---: | ---: | ---: | --- |")
	for _, g := range t.groups {
		for _, mode := range t.modes {
			for _, k := range t.rows(g, mode) {
				t.writeRow(w, g, k)
			}
		}
	}
	fmt.Fprintln(w)
	for _, g := range t.groups {
		if len(t.groupIDs(g)) == 0 {
			continue
		}
		fmt.Fprintf(w, "- **%s**", g.name)
		if g.title != "" {
			fmt.Fprintf(w, ": %s", g.title)
		}
		switch {
		case g.ref != "" && g.floor != "":
			fmt.Fprintf(w, "; ratios of the %s each adds to %s, to what %s adds", g.unit(), g.floor, g.ref)
		case g.ref != "":
			fmt.Fprintf(w, "; ratios of %s to %s", g.unit(), g.ref)
		}
		if len(g.ratioUnits) > 0 && g.ref != "" {
			fmt.Fprintf(w, " (%s too, in the last column)", strings.Join(g.ratioUnits, " and "))
		}
		if g.paired && g.ref != "" {
			fmt.Fprint(w, ", each the median of the ratios within each round")
		}
		fmt.Fprintln(w, ".")
	}
	t.writeTargets(w)
}

func (t *table) groupIDs(g *group) []id {
	var ids []id
	for _, k := range t.res.order {
		if k.group == g.name {
			ids = append(ids, k)
		}
	}
	return ids
}

func (t *table) writeRow(w io.Writer, g *group, k id) {
	s := t.res.series[k]
	name := g.name
	if k.mode != "" {
		name += " " + k.mode
	}
	cell := func(unit string) string {
		v, ok := s.value(unit)
		if !ok {
			return ""
		}
		return num(v)
	}
	ns := cell("ns/op")
	if sp := spread(s["ns/op"]); ns != "" && sp >= 0.005 {
		ns += fmt.Sprintf(" ±%.0f%%", sp*100)
	}
	ratio := ""
	switch {
	case k.variant == g.ref:
		ratio = "1 (ref)"
	case g.ref != "" && k.variant == g.floor:
		ratio = "floor"
	default:
		if r, ok := t.ratio(g, k); ok {
			ratio = ratioText(r)
		}
	}
	var other []string
	units := slices.Sorted(func(yield func(string) bool) {
		for u := range s {
			if !yield(u) {
				return
			}
		}
	})
	// The group's own metric first, the others in alphabetical order.
	if i := slices.Index(units, g.unit()); i > 0 {
		units = slices.Insert(slices.Delete(units, i, i+1), 0, g.unit())
	}
	for _, unit := range units {
		switch unit {
		case "ns/op", "allocs/op", "B/op":
			continue
		}
		c := cell(unit) + " " + unit
		if slices.Contains(g.ratioUnits, unit) && k.variant != g.ref {
			if r, ok := t.unitRatio(g, k, unit); ok {
				c += " (" + ratioText(r) + "×)"
			}
		}
		other = append(other, c)
	}
	fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n",
		name, k.variant, ns, cell("allocs/op"), cell("B/op"), ratio, strings.Join(other, ", "))
}

// writeTargets lists each target of each mode as met, missed or not measured.
func (t *table) writeTargets(w io.Writer) {
	var lines []string
	for _, g := range t.groups {
		for _, tg := range g.targets {
			for _, mode := range t.modes {
				if tg.mode != "" && tg.mode != mode {
					continue
				}
				k := id{g.name, tg.variant, mode}
				if _, ok := t.res.series[k]; !ok {
					continue
				}
				lines = append(lines, t.check(g, tg, k))
			}
		}
	}
	if len(lines) == 0 {
		return
	}
	fmt.Fprintln(w, "\nTargets:")
	for _, l := range lines {
		fmt.Fprintln(w, "- "+l)
	}
}

func (t *table) check(g *group, tg target, k id) string {
	s := t.res.series[k]
	var parts []string
	missed, unmeasured := false, false
	add := func(what string, v float64, have bool, b bound) {
		switch {
		case !have:
			unmeasured = true
			parts = append(parts, fmt.Sprintf("%s not measured (%s)", what, b))
		case b.ok(v):
			parts = append(parts, fmt.Sprintf("%s %s (%s)", what, num2(v), b))
		default:
			missed = true
			parts = append(parts, fmt.Sprintf("%s %s (%s, missed %s)", what, num2(v), b, b.miss(v)))
		}
	}
	if tg.ratio.set {
		r, ok := t.ratio(g, k)
		what := g.unit() + " ratio to " + g.ref
		if g.floor != "" {
			what = "added " + g.unit() + " ratio to " + g.ref + "'s"
		}
		add(what, r, ok, tg.ratio)
	}
	if tg.allocs.set {
		v, ok := s.value("allocs/op")
		add("allocs/op", v, ok, tg.allocs)
	}
	if tg.addedAllocs.set {
		v, ok := t.added(g, k, "allocs/op")
		add("allocs/op added to "+g.base(), v, ok, tg.addedAllocs)
	}
	if tg.thanRatio.set {
		v, ok1 := t.added(g, k, "ns/op")
		w, ok2 := t.added(g, id{g.name, tg.than, k.mode}, "ns/op")
		// A peer that adds nothing measurable leaves no ratio to take.
		add(fmt.Sprintf("ns/op added to %s, ratio to what %s adds", g.base(), tg.than),
			v/w, ok1 && ok2 && w > 0, tg.thanRatio)
	}
	for _, unit := range slices.Sorted(maps.Keys(tg.addedPerOp)) {
		v, ok := t.added(g, k, unit)
		add(unit+" added to "+g.base(), v, ok, tg.addedPerOp[unit])
	}
	for _, unit := range slices.Sorted(maps.Keys(tg.perOp)) {
		v, ok := s.value(unit)
		add(unit, v, ok, tg.perOp[unit])
	}
	verdict := "met"
	switch {
	case missed:
		verdict = "**missed**"
	case unmeasured:
		verdict = "incomplete"
	}
	return fmt.Sprintf("%s: %s %s %s — %s", verdict, g.name, k.mode, k.variant, strings.Join(parts, "; "))
}

// num2 formats a value checked against a target: three significant digits
// below 100 (a ratio of 0.252 must not read as 0.25), whole numbers above.
func num2(v float64) string {
	if math.Abs(v) >= 100 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}

// ratioText formats a ratio for the table: two decimals below 10.
func ratioText(r float64) string {
	switch a := math.Abs(r); {
	case a >= 100:
		return strconv.FormatFloat(r, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(r, 'f', 1, 64)
	}
	return strconv.FormatFloat(r, 'f', 2, 64)
}

// cpuInfo returns the CPU model and the number of logical CPUs from
// /proc/cpuinfo, falling back on runtime.NumCPU for the count.
func cpuInfo() (model string, cores int) {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err == nil {
		for line := range strings.Lines(string(data)) {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			switch strings.TrimSpace(k) {
			case "processor":
				cores++
			case "model name":
				if model == "" {
					model = strings.TrimSpace(v)
				}
			}
		}
	}
	if cores == 0 {
		cores = runtime.NumCPU()
	}
	return model, cores
}

// refFlags collects -ref Group=variant.
type refFlags map[string]string

func (r refFlags) String() string { return fmt.Sprint(map[string]string(r)) }

func (r refFlags) Set(s string) error {
	g, v, ok := strings.Cut(s, "=")
	if !ok || g == "" || v == "" {
		return errors.New("want Group=variant")
	}
	r[g] = v
	return nil
}

func main() {
	refs := refFlags{}
	cmd := flag.String("cmd", "bench/run", "the command that produced the input, for the header")
	flag.Var(refs, "ref", "Group=variant: take the group's ratios against variant (repeatable)")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: benchtable [-cmd text] [-ref Group=variant]... [file ...]")
		flag.PrintDefaults()
	}
	flag.Parse()
	if err := run(os.Stdout, flag.Args(), *cmd, refs); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
}

func run(w io.Writer, files []string, cmd string, refs map[string]string) error {
	res := &results{series: map[id]series{}}
	if len(files) == 0 {
		if err := res.parse(os.Stdin); err != nil {
			return err
		}
	}
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		err = res.parse(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	if len(res.order) == 0 {
		return errors.New("no benchmark results in the input")
	}
	newTable(res, groups, refs).write(w, cmd, time.Now())
	return nil
}
