package check

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// composeService is what the checks read of a compose service (YAML
// anchors and merge keys resolved by the decoder).
type composeService struct {
	Image       string                    `json:"image"`
	Profiles    []string                  `json:"profiles"`
	Entrypoint  any                       `json:"entrypoint"`
	Command     any                       `json:"command"`
	Environment map[string]string         `json:"environment"`
	DependsOn   map[string]map[string]any `json:"depends_on"`
	Volumes     []string                  `json:"volumes"`
	Ports       []string                  `json:"ports"`
}

func strs(v any) []string {
	switch v := v.(type) {
	case string:
		return strings.Fields(v)
	case []any:
		var out []string
		for _, x := range v {
			s, _ := x.(string)
			out = append(out, s)
		}
		return out
	}
	return nil
}

// args is the service's command line: entrypoint, then command.
func (s composeService) args() []string { return append(strs(s.Entrypoint), strs(s.Command)...) }

func composeServices(t *testing.T) map[string]composeService {
	t.Helper()
	b, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Services map[string]map[string]any `json:"services"`
	}
	if err := yaml.Unmarshal(b, &raw); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	out := map[string]composeService{}
	for name, m := range raw.Services {
		// depends_on is a list or a map: make it a map.
		if l, ok := m["depends_on"].([]any); ok {
			dm := map[string]any{}
			for _, x := range l {
				dm[x.(string)] = map[string]any{"condition": "service_started"}
			}
			m["depends_on"] = dm
		}
		j, _ := yaml.Marshal(m)
		var s composeService
		if err := yaml.Unmarshal(j, &s); err != nil {
			t.Fatalf("service %s: %v", name, err)
		}
		out[name] = s
	}
	return out
}

// imageBinaries reads the programs deploy/image puts in the image.
func imageBinaries(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../image/main.go")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range regexp.MustCompile(`\{"[^"]+", "[^"]+", "(orchestrix[a-z-]*)"\}`).FindAllStringSubmatch(string(b), -1) {
		out = append(out, m[1])
	}
	if len(out) == 0 {
		t.Fatal("no binaries found in deploy/image/main.go")
	}
	return out
}

// TestCompose checks docker-compose.yml: the test services stay the
// default profile, every dependency exists with a valid condition, every
// mounted file exists, every program the stack runs is in the image.
func TestCompose(t *testing.T) {
	services := composeServices(t)
	var plain []string
	for name, s := range services {
		if len(s.Profiles) == 0 {
			plain = append(plain, name)
		}
	}
	slices.Sort(plain)
	if !slices.Equal(plain, []string{"eventsourcingdb", "kafka", "postgres"}) {
		t.Errorf("`docker compose up` starts %v, want only the test services", plain)
	}
	bins := imageBinaries(t)
	for name, s := range services {
		for dep, opts := range s.DependsOn {
			if _, ok := services[dep]; !ok {
				t.Errorf("%s depends on %s, which is not a service", name, dep)
			}
			switch opts["condition"] {
			case "service_started", "service_healthy", "service_completed_successfully":
			default:
				t.Errorf("%s: depends_on %s condition %v", name, dep, opts["condition"])
			}
			if opts["condition"] == "service_completed_successfully" && len(services[dep].Profiles) > 0 && !slices.Contains(services[dep].Profiles, "stack") {
				t.Errorf("%s waits for %s, which is not in the stack profile", name, dep)
			}
		}
		for _, v := range s.Volumes {
			host, _, _ := strings.Cut(v, ":")
			if strings.HasPrefix(host, "./") {
				if _, err := os.Stat(filepath.Join("../..", host)); err != nil {
					t.Errorf("%s mounts %s: %v", name, host, err)
				}
			}
		}
		if s.Image == "orchestrix:dev" {
			prog := "orchestrix"
			if e := strs(s.Entrypoint); len(e) > 0 {
				prog = e[0]
			}
			if !slices.Contains(bins, prog) {
				t.Errorf("%s runs %s, which deploy/image does not build (%v)", name, prog, bins)
			}
			if !slices.Contains(s.args(), "migrate") && s.Environment["KAFKA_BROKERS"] != "kafka:9092" && !slices.Contains(s.args(), "kafka:9092") {
				t.Errorf("%s: not on the stack's Kafka listener kafka:9092", name)
			}
		}
		for _, p := range s.Ports {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("%s publishes %s beyond localhost", name, p)
			}
		}
	}
}

// programBuilds are the image's programs: directory and package.
var programBuilds = map[string][2]string{
	"orchestrix":               {"../..", "./cmd/orchestrix"},
	"orchestrix-banking":       {"../..", "./examples/banking/cmd/banking"},
	"orchestrix-ecommerce":     {"../..", "./examples/ecommerce"},
	"orchestrix-notifications": {"../..", "./examples/notifications"},
	"orchestrix-exporter":      {"../exporter", "."},
}

// built holds the programs built once per run of the tests (TestMain
// removes the directory).
var built struct {
	once sync.Once
	dir  string
	err  error
}

// buildPrograms builds programBuilds once and returns their directory.
func buildPrograms(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		if built.dir, built.err = os.MkdirTemp("", "orchestrix-check-"); built.err != nil {
			return
		}
		for name, b := range programBuilds {
			cmd := exec.Command("go", "build", "-o", filepath.Join(built.dir, name), b[1])
			cmd.Dir = b[0]
			if out, err := cmd.CombinedOutput(); err != nil {
				built.err = fmt.Errorf("build %s: %v\n%s", name, err, out)
				return
			}
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.dir
}

// commandLine is one program invocation the deployment files make.
type commandLine struct {
	where string
	args  []string // program first
}

// TestCommandLines builds the image's programs and checks that every flag
// the compose file and the chart pass is one the program has (its -h).
func TestCommandLines(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the CLI, the examples and the exporter")
	}
	dir := buildPrograms(t)
	builds := programBuilds
	help := map[string]string{}
	usage := func(args []string) string {
		key := strings.Join(args, " ")
		if h, ok := help[key]; ok {
			return h
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(dir, args[0]), append(args[1:], "-h")...)
		cmd.Env = []string{"PATH=/usr/bin:/bin"}
		out, _ := cmd.CombinedOutput()
		help[key] = string(out)
		return help[key]
	}
	lines := append(composeCommandLines(t), chartCommandLines(t)...)
	if len(lines) < 10 {
		t.Fatalf("only %d command lines found", len(lines))
	}
	for _, l := range lines {
		if _, ok := builds[l.args[0]]; !ok {
			t.Errorf("%s: program %s is not in the image", l.where, l.args[0])
			continue
		}
		// The subcommand: the words before the first flag.
		sub := []string{l.args[0]}
		for _, a := range l.args[1:] {
			if strings.HasPrefix(a, "-") {
				break
			}
			sub = append(sub, a)
		}
		h := usage(sub)
		for _, a := range l.args[1:] {
			if !strings.HasPrefix(a, "-") {
				continue
			}
			flagName, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if !regexp.MustCompile(`(?m)^\s+-` + regexp.QuoteMeta(flagName) + `\b`).MatchString(h) {
				t.Errorf("%s: %s has no flag -%s", l.where, strings.Join(sub, " "), flagName)
			}
		}
	}
	t.Logf("%d command lines checked against %d programs' usage", len(lines), len(help))

	// The guide's configuration reference names every flag of every
	// command and program.
	guide, err := os.ReadFile("../../docs/deployment.md")
	if err != nil {
		t.Fatal(err)
	}
	flagRe := regexp.MustCompile(`(?m)^\s+-([a-z][a-z0-9-]*)`)
	for _, cmd := range guideCommands {
		for _, m := range flagRe.FindAllStringSubmatch(usage(strings.Fields(cmd)), -1) {
			if !strings.Contains(string(guide), "`--"+m[1]) && !strings.Contains(string(guide), "`-"+m[1]+"`") {
				t.Errorf("docs/deployment.md does not name %s's flag --%s", cmd, m[1])
			}
		}
	}
}

// guideCommands are the commands whose flags docs/deployment.md lists.
var guideCommands = []string{
	"orchestrix migrate", "orchestrix topics create", "orchestrix relay", "orchestrix dlq list", "orchestrix dlq redrive",
	"orchestrix dlq purge", "orchestrix events export", "orchestrix events import", "orchestrix groups describe",
	"orchestrix groups reset", "orchestrix projections status", "orchestrix projections rebuild", "orchestrix projections cutover",
	"orchestrix projections skip", "orchestrix replay", "orchestrix sagas list", "orchestrix sagas retry", "orchestrix sagas timers",
	"orchestrix demo", "orchestrix-banking serve", "orchestrix-banking drive", "orchestrix-ecommerce serve",
	"orchestrix-ecommerce drive", "orchestrix-notifications serve", "orchestrix-notifications drive", "orchestrix-exporter",
}

func composeCommandLines(t *testing.T) []commandLine {
	t.Helper()
	var out []commandLine
	for name, s := range composeServices(t) {
		if s.Image != "orchestrix:dev" {
			continue
		}
		args := s.args()
		if len(strs(s.Entrypoint)) == 0 {
			args = append([]string{"orchestrix"}, args...)
		}
		out = append(out, commandLine{"docker-compose.yml " + name, args})
	}
	return out
}

func chartCommandLines(t *testing.T) []commandLine {
	t.Helper()
	var out []commandLine
	for set, overlay := range valueSets(t) {
		for file, text := range render(t, overlay) {
			if strings.HasSuffix(file, "NOTES.txt") {
				continue
			}
			for _, o := range decodeAll(t, file, text) {
				var spec corev1.PodSpec
				switch v := o.v.(type) {
				case *appsv1.Deployment:
					spec = v.Spec.Template.Spec
				case *batchv1.Job:
					spec = v.Spec.Template.Spec
				default:
					continue
				}
				for _, c := range append(spec.InitContainers, spec.Containers...) {
					if !strings.HasPrefix(c.Image, "orchestrix:") {
						continue
					}
					args := append(slices.Clone(c.Command), c.Args...)
					if len(c.Command) == 0 {
						args = append([]string{"orchestrix"}, args...)
					}
					out = append(out, commandLine{"chart (" + set + ") " + o.name + "/" + c.Name, args})
				}
			}
		}
	}
	return out
}
