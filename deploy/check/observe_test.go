package check

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"
)

// goldenSeries reads the series names metrics/prom promises: its golden
// test's list (what TestGolden checks the registry against) and the full
// names in its source.
func goldenSeries(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("../../metrics/prom/golden_test.go")
	if err != nil {
		t.Fatal(err)
	}
	src := string(b)
	start := strings.Index(src, "var golden = []string{")
	end := strings.Index(src[start:], "\n}")
	if start < 0 || end < 0 {
		t.Fatal("metrics/prom/golden_test.go has no golden list")
	}
	names := map[string]bool{}
	for _, m := range regexp.MustCompile(`"(orchestrix_[a-z0-9_]+)\{`).FindAllStringSubmatch(src[start:start+end], -1) {
		names[m[1]] = true
	}
	if len(names) < 20 {
		t.Fatalf("only %d series in the golden list", len(names))
	}
	// Series measured at scrape time from PostgreSQL (the relay backlog)
	// are not in the fake-only golden list: take the full names written
	// in the package's source too.
	files, err := filepath.Glob("../../metrics/prom/*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile(`"(orchestrix_[a-z0-9_]+[a-z0-9])"`).FindAllStringSubmatch(string(b), -1) {
			names[m[1]] = true
		}
	}
	return names
}

var seriesRef = regexp.MustCompile(`\borchestrix_[a-z0-9_]+`)

// unknownSeries returns the series expr names that metrics/prom does not
// export (a histogram's _bucket, _sum and _count count as its own).
func unknownSeries(expr string, golden map[string]bool, used map[string]bool) []string {
	var bad []string
	for _, name := range seriesRef.FindAllString(expr, -1) {
		base := name
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(name, suffix); ok && golden[b] {
				base = b
			}
		}
		if !golden[base] {
			bad = append(bad, name)
			continue
		}
		used[base] = true
	}
	return bad
}

// parsePromQL parses expr as Prometheus does and returns the metric
// names it selects.
func parsePromQL(expr string) ([]string, error) {
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			names = append(names, vs.Name)
		}
		return nil
	})
	return names, nil
}

type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Expr        string            `json:"expr"`
			For         string            `json:"for,omitempty"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

type dashboard struct {
	UID    string `json:"uid"`
	Title  string `json:"title"`
	Panels []struct {
		ID         int    `json:"id"`
		Type       string `json:"type"`
		Title      string `json:"title"`
		Datasource *struct {
			Type string `json:"type"`
			UID  string `json:"uid"`
		} `json:"datasource"`
		GridPos struct{ H, W, X, Y int } `json:"gridPos"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

// TestAlertsAndDashboard checks deploy/prometheus/alerts.yml and
// deploy/grafana/orchestrix.json: every expression parses as PromQL
// (Prometheus' own parser), every series it selects exists in
// metrics/prom, every rule is well formed, every panel queries the
// provisioned data source.
func TestAlertsAndDashboard(t *testing.T) {
	golden := goldenSeries(t)
	used := map[string]bool{}

	b, err := os.ReadFile("../prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rules ruleFile
	if err := yaml.UnmarshalStrict(b, &rules); err != nil {
		t.Fatalf("alerts.yml: %v", err)
	}
	names := map[string]bool{}
	n := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			n++
			if r.Alert == "" || names[r.Alert] {
				t.Errorf("alerts.yml group %s: rule %q: empty or duplicate name", g.Name, r.Alert)
			}
			names[r.Alert] = true
			names, err := parsePromQL(r.Expr)
			if err != nil || len(names) == 0 {
				t.Errorf("alert %s: expr %q: %v", r.Alert, r.Expr, err)
			}
			if bad := unknownSeries(strings.Join(names, " "), golden, used); len(bad) > 0 {
				t.Errorf("alert %s: series not in metrics/prom: %v", r.Alert, bad)
			}
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("alert %s: for %q: %v", r.Alert, r.For, err)
				}
			}
			if s := r.Labels["severity"]; s != "page" && s != "warn" {
				t.Errorf("alert %s: severity %q, want page or warn", r.Alert, s)
			}
			if r.Annotations["summary"] == "" {
				t.Errorf("alert %s: no summary", r.Alert)
			}
		}
	}

	b, err = os.ReadFile("../grafana/orchestrix.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("orchestrix.json: %v", err)
	}
	var ds struct {
		Datasources []struct {
			UID  string `json:"uid"`
			Type string `json:"type"`
			URL  string `json:"url"`
		} `json:"datasources"`
	}
	pb, err := os.ReadFile("../grafana/provisioning/datasources/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(pb, &ds); err != nil || len(ds.Datasources) != 1 {
		t.Fatalf("provisioned data source: %v", err)
	}
	ids := map[int]bool{}
	queries := 0
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel %q: duplicate id %d", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.X+p.GridPos.W > 24 || p.GridPos.W <= 0 {
			t.Errorf("panel %q: gridPos %+v outside the 24 columns", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != ds.Datasources[0].UID || p.Datasource.Type != ds.Datasources[0].Type {
			t.Errorf("panel %q: data source %+v, want the provisioned one (%s)", p.Title, p.Datasource, ds.Datasources[0].UID)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q: no query", p.Title)
		}
		for _, q := range p.Targets {
			queries++
			names, err := parsePromQL(q.Expr)
			if err != nil || len(names) == 0 {
				t.Errorf("panel %q: expr %q: %v", p.Title, q.Expr, err)
			}
			if bad := unknownSeries(strings.Join(names, " "), golden, used); len(bad) > 0 {
				t.Errorf("panel %q: series not in metrics/prom: %v", p.Title, bad)
			}
		}
	}
	var unused []string
	for s := range golden {
		if !used[s] {
			unused = append(unused, s)
		}
	}
	sort.Strings(unused)
	t.Logf("%d alert rules, %d panels, %d queries; %d of %d metrics/prom series used; on neither: %v",
		n, len(d.Panels), queries, len(used), len(golden), unused)
}

// TestPrometheusConfig: the scrape targets are services of the compose
// stack on the ports they listen on, and the rule file is the one checked
// above.
func TestPrometheusConfig(t *testing.T) {
	var cfg struct {
		Global        map[string]string `json:"global"`
		RuleFiles     []string          `json:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string `json:"job_name"`
			StaticConfigs []struct {
				Targets []string `json:"targets"`
			} `json:"static_configs"`
		} `json:"scrape_configs"`
	}
	b, err := os.ReadFile("../prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, &cfg); err != nil {
		t.Fatalf("prometheus.yml: %v", err)
	}
	services := composeServices(t)
	if !slices.Contains(cfg.RuleFiles, "/etc/prometheus/alerts.yml") {
		t.Errorf("rule_files %v: want /etc/prometheus/alerts.yml (mounted from deploy/prometheus)", cfg.RuleFiles)
	}
	for _, sc := range cfg.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				host, port, _ := strings.Cut(target, ":")
				svc, ok := services[host]
				if !ok {
					t.Errorf("job %s: target %s is not a compose service", sc.JobName, target)
					continue
				}
				if !strings.Contains(strings.Join(svc.args(), " "), ":"+port) {
					t.Errorf("job %s: %s does not listen on :%s (%v)", sc.JobName, host, port, svc.args())
				}
			}
		}
	}
}

// TestGuideNamesEveryVariable: every environment variable the CLI, the
// examples, kafkaconn and the exporter read is in docs/deployment.md.
func TestGuideNamesEveryVariable(t *testing.T) {
	guide, err := os.ReadFile("../../docs/deployment.md")
	if err != nil {
		t.Fatal(err)
	}
	read := regexp.MustCompile(`(?:env|envOr|Getenv|getenv)\("([A-Z][A-Z0-9_]+)"`)
	seen := map[string]bool{}
	for _, dir := range []string{"../../cmd", "../../internal/cli", "../../kafkaconn", "../../examples", "../exporter"} {
		err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, m := range read.FindAllStringSubmatch(string(b), -1) {
				seen[m[1]] = true
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(seen) < 15 {
		t.Fatalf("found only %d variables", len(seen))
	}
	for v := range seen {
		if !strings.Contains(string(guide), "`"+v+"`") {
			t.Errorf("docs/deployment.md does not name the variable %s", v)
		}
	}
}
