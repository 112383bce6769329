package observability

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var update = flag.Bool("update", false, "rewrite metrics.md from the registry")

// metricRef matches a bulwark metric name in a PromQL expression.
var metricRef = regexp.MustCompile(`bulwark_[a-z][a-z_]*`)

// resolve maps a name used in PromQL to the family that exposes it:
// itself, or for a histogram's series the histogram (name_bucket, _sum,
// _count).
func resolve(fams map[string]family, used string) (string, bool) {
	if _, ok := fams[used]; ok {
		return used, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(used, suffix)
		if f, exists := fams[base]; ok && exists && f.Type == "histogram" {
			return base, true
		}
	}
	return "", false
}

func TestRegistryLints(t *testing.T) {
	reg, fams := exposed(t)
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
	for name, f := range fams {
		require.Contains(t, f.Labels, "name", "%s: every bulwark metric has the name label", name)
	}
}

type grafanaPanel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"` // a collapsed row's panels
}

type grafanaDashboard struct {
	Title      string `json:"title"`
	UID        string `json:"uid"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []grafanaPanel `json:"panels"`
}

func TestDashboard(t *testing.T) {
	_, fams := exposed(t)
	raw, err := os.ReadFile("dashboard.json")
	require.NoError(t, err)
	var d grafanaDashboard
	require.NoError(t, json.Unmarshal(raw, &d))
	require.NotEmpty(t, d.Title)
	require.NotEmpty(t, d.UID)

	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	require.Equal(t, "datasource", vars["datasource"], "a data source variable")
	require.Equal(t, "query", vars["name"], "a $name variable over the name label")

	var panels []grafanaPanel
	for _, p := range d.Panels {
		panels = append(panels, p)
		panels = append(panels, p.Panels...)
	}
	ids := map[int]bool{}
	used := map[string]bool{}
	selector := regexp.MustCompile(`(bulwark_[a-z][a-z_]*)(\{[^}]*\})?`)
	for _, p := range panels {
		require.False(t, ids[p.ID], "panel id %d is used twice", p.ID)
		ids[p.ID] = true
		require.NotEmpty(t, p.Title, "panel %d has a title", p.ID)
		require.True(t, p.GridPos.W > 0 && p.GridPos.X+p.GridPos.W <= 24, "panel %q fits the 24-column grid", p.Title)
		if p.Type == "row" {
			continue
		}
		require.NotNil(t, p.Datasource, "panel %q", p.Title)
		require.Equal(t, "${datasource}", p.Datasource.UID, "panel %q uses the data source variable", p.Title)
		require.NotEmpty(t, p.Targets, "panel %q has queries", p.Title)
		for _, tg := range p.Targets {
			require.True(t, balanced(tg.Expr), "panel %q: unbalanced brackets in %s", p.Title, tg.Expr)
			for _, m := range selector.FindAllStringSubmatch(tg.Expr, -1) {
				name, ok := resolve(fams, m[1])
				require.True(t, ok, "panel %q queries %s, which bulwark does not expose", p.Title, m[1])
				used[name] = true
				require.Contains(t, m[2], `name=~"$name"`, "panel %q: %s is not filtered by $name", p.Title, m[1])
			}
		}
	}
	for name := range fams {
		require.True(t, used[name], "the dashboard shows no panel of %s", name)
	}
}

func TestAlertRules(t *testing.T) {
	_, fams := exposed(t)
	raw, err := os.ReadFile("alerts.yml")
	require.NoError(t, err)
	doc, err := parseYAML(string(raw))
	require.NoError(t, err)

	groups := asList(t, asMap(t, doc)["groups"])
	require.NotEmpty(t, groups)
	alerts := map[string]bool{}
	used := map[string]bool{}
	for _, g := range groups {
		gm := asMap(t, g)
		require.NotEmpty(t, gm["name"])
		for _, r := range asList(t, gm["rules"]) {
			rule := asMap(t, r)
			name, _ := rule["alert"].(string)
			require.Regexp(t, `^Bulwark[A-Z][A-Za-z]+$`, name)
			require.False(t, alerts[name], "alert %s is defined twice", name)
			alerts[name] = true

			expr, _ := rule["expr"].(string)
			require.True(t, balanced(expr), "%s: unbalanced brackets", name)
			refs := metricRef.FindAllString(expr, -1)
			require.NotEmpty(t, refs, "%s uses no bulwark metric", name)
			for _, ref := range refs {
				base, ok := resolve(fams, ref)
				require.True(t, ok, "%s uses %s, which bulwark does not expose", name, ref)
				used[base] = true
			}
			require.Contains(t, expr, "by (name", "%s: one alert per instance name", name)

			forDur, _ := rule["for"].(string)
			d, err := time.ParseDuration(forDur)
			require.NoError(t, err, "%s: for", name)
			require.Positive(t, d)

			labels := asMap(t, rule["labels"])
			require.Contains(t, []string{"page", "ticket"}, labels["severity"], "%s: severity", name)
			ann := asMap(t, rule["annotations"])
			require.NotEmpty(t, ann["summary"], name)
			require.NotEmpty(t, ann["description"], name)
		}
	}
	for _, want := range []string{"BulwarkBreakerOpen", "BulwarkRetryBudgetExhausted", "BulwarkIdempotencyStoreErrors",
		"BulwarkRateLimitStoreErrors", "BulwarkBulkheadRejecting"} {
		require.True(t, alerts[want], "missing alert %s", want)
	}
	t.Logf("rules cover %d of %d metrics", len(used), len(fams))
}

func TestPrometheusConfig(t *testing.T) {
	raw, err := os.ReadFile("prometheus.yml")
	require.NoError(t, err)
	doc, err := parseYAML(string(raw))
	require.NoError(t, err)
	cfg := asMap(t, doc)
	require.Equal(t, []any{"alerts.yml"}, cfg["rule_files"])
	var targets []any
	for _, sc := range asList(t, cfg["scrape_configs"]) {
		for _, st := range asList(t, asMap(t, sc)["static_configs"]) {
			targets = append(targets, asList(t, asMap(t, st)["targets"])...)
		}
	}
	require.Contains(t, targets, "127.0.0.1:9464", "scrapes the demo's -metrics-addr")
}

// TestMetricsTable keeps metrics.md, the table the README quotes, equal to
// what the registry exposes. Run with -update to rewrite it.
func TestMetricsTable(t *testing.T) {
	_, fams := exposed(t)
	var b strings.Builder
	b.WriteString("| metric | type | labels | help |\n| --- | --- | --- | --- |\n")
	names := make([]string, 0, len(fams))
	for name := range fams {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		f := fams[name]
		var labels []string
		for _, l := range f.Labels {
			if vs := f.Values[l]; len(vs) > 0 && l != "from" && l != "to" {
				labels = append(labels, fmt.Sprintf("`%s` (%s)", l, strings.Join(vs, ", ")))
			} else {
				labels = append(labels, "`"+l+"`")
			}
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", name, f.Type, strings.Join(labels, ", "), strings.ReplaceAll(f.Help, "|", "\\|"))
	}
	got := b.String()
	if *update {
		require.NoError(t, os.WriteFile("metrics.md", []byte(got), 0o644))
	}
	want, err := os.ReadFile("metrics.md")
	require.NoError(t, err)
	require.Equal(t, string(want), got, "metrics.md is stale: go test ./examples/observability -run TestMetricsTable -update")
}

func balanced(s string) bool {
	var stack []rune
	pairs := map[rune]rune{')': '(', ']': '[', '}': '{'}
	inString := false
	for _, r := range s {
		switch {
		case r == '"':
			inString = !inString
		case inString:
		case r == '(' || r == '[' || r == '{':
			stack = append(stack, r)
		case pairs[r] != 0:
			if len(stack) == 0 || stack[len(stack)-1] != pairs[r] {
				return false
			}
			stack = stack[:len(stack)-1]
		}
	}
	return len(stack) == 0 && !inString
}

func asMap(t *testing.T, v any) map[string]any {
	t.Helper()
	m, ok := v.(map[string]any)
	require.True(t, ok, "want a mapping, got %T", v)
	return m
}

func asList(t *testing.T, v any) []any {
	t.Helper()
	l, ok := v.([]any)
	require.True(t, ok, "want a sequence, got %T", v)
	return l
}

// parseYAML parses the subset of YAML that alerts.yml and prometheus.yml
// are written in: block mappings and sequences indented with spaces, plain,
// double-quoted and single-quoted scalars on one line, and comment lines.
// Anything else (flow collections, block scalars, anchors, tabs) is an
// error, so the files cannot silently leave the subset. It exists because
// go.yaml.in/yaml/v3, though in the module graph, is not a direct
// dependency of the module.
func parseYAML(src string) (any, error) {
	p := &yamlParser{}
	for i, line := range strings.Split(src, "\n") {
		text := strings.TrimSpace(line)
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		if strings.ContainsRune(line, '\t') {
			return nil, fmt.Errorf("line %d: tab", i+1)
		}
		indent := len(line) - len(strings.TrimLeft(line, " "))
		p.lines = append(p.lines, yamlLine{indent: indent, text: text, n: i + 1})
	}
	if len(p.lines) == 0 {
		return nil, nil
	}
	v, err := p.block(p.lines[0].indent)
	if err == nil && p.i < len(p.lines) {
		err = fmt.Errorf("line %d: unexpected indentation", p.lines[p.i].n)
	}
	return v, err
}

type yamlLine struct {
	indent int
	text   string
	n      int
}

type yamlParser struct {
	lines []yamlLine
	i     int
}

func isItem(text string) bool { return text == "-" || strings.HasPrefix(text, "- ") }

func (p *yamlParser) block(indent int) (any, error) {
	if isItem(p.lines[p.i].text) {
		return p.sequence(indent)
	}
	return p.mapping(indent)
}

func (p *yamlParser) sequence(indent int) ([]any, error) {
	var out []any
	for p.i < len(p.lines) && p.lines[p.i].indent == indent && isItem(p.lines[p.i].text) {
		l := &p.lines[p.i]
		rest := strings.TrimSpace(strings.TrimPrefix(l.text, "-"))
		if rest == "" {
			return nil, fmt.Errorf("line %d: empty sequence item", l.n)
		}
		if _, _, isKey := cutKey(rest); !isKey {
			v, err := scalar(rest, l.n)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
			p.i++
			continue
		}
		// "- key: value" starts a mapping whose keys sit two columns in.
		l.text, l.indent = rest, indent+2
		m, err := p.mapping(indent + 2)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

func (p *yamlParser) mapping(indent int) (map[string]any, error) {
	m := map[string]any{}
	for p.i < len(p.lines) && p.lines[p.i].indent == indent && !isItem(p.lines[p.i].text) {
		l := p.lines[p.i]
		key, rest, ok := cutKey(l.text)
		if !ok {
			return nil, fmt.Errorf("line %d: want key: value", l.n)
		}
		if _, dup := m[key]; dup {
			return nil, fmt.Errorf("line %d: duplicate key %q", l.n, key)
		}
		p.i++
		var v any
		var err error
		switch {
		case rest != "":
			v, err = scalar(rest, l.n)
		case p.i < len(p.lines) && (p.lines[p.i].indent > indent || p.lines[p.i].indent == indent && isItem(p.lines[p.i].text)):
			v, err = p.block(p.lines[p.i].indent)
		}
		if err != nil {
			return nil, err
		}
		m[key] = v
	}
	if p.i < len(p.lines) && p.lines[p.i].indent > indent {
		return nil, fmt.Errorf("line %d: unexpected indentation", p.lines[p.i].n)
	}
	return m, nil
}

// cutKey splits "key: value" or "key:"; keys are plain words.
func cutKey(text string) (key, rest string, ok bool) {
	i := strings.Index(text, ":")
	if i <= 0 || (i+1 < len(text) && text[i+1] != ' ') {
		return "", "", false
	}
	key = text[:i]
	if strings.ContainsAny(key, ` "'{[`) {
		return "", "", false
	}
	return key, strings.TrimSpace(text[i+1:]), true
}

func scalar(s string, n int) (any, error) {
	switch {
	case strings.HasPrefix(s, `"`):
		v, err := strconv.Unquote(s)
		if err != nil {
			return nil, fmt.Errorf("line %d: bad double-quoted string: %v", n, err)
		}
		return v, nil
	case strings.HasPrefix(s, "'"):
		if len(s) < 2 || !strings.HasSuffix(s, "'") {
			return nil, fmt.Errorf("line %d: bad single-quoted string", n)
		}
		return strings.ReplaceAll(s[1:len(s)-1], "''", "'"), nil
	case slices.Contains([]string{"|", ">", "|-", ">-", "&", "*", "!"}, s[:1]) || strings.HasPrefix(s, "[") || strings.HasPrefix(s, "{"):
		return nil, fmt.Errorf("line %d: %q is outside the YAML subset these files use", n, s)
	}
	return s, nil
}

func TestParseYAML(t *testing.T) {
	v, err := parseYAML("a:\n  - b: 1\n    c: \"x: y\"\n  - plain\nd: 'it''s'\n# comment\ne:\n- 5m\n")
	require.NoError(t, err)
	require.Equal(t, map[string]any{
		"a": []any{map[string]any{"b": "1", "c": "x: y"}, "plain"},
		"d": "it's",
		"e": []any{"5m"},
	}, v)
	for _, bad := range []string{"a: |\n  x\n", "a: 1\n   b: 2\n", "a: 1\na: 2\n", "a:\n\t- b\n", "a: [1, 2]\n", "just text\n"} {
		_, err := parseYAML(bad)
		require.Error(t, err, "%q", bad)
	}
}
