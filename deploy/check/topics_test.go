package check

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
)

// examplePrograms are the image's programs with a `serve` that needs
// topics it does not create (without --init).
var examplePrograms = []string{"orchestrix-banking", "orchestrix-ecommerce", "orchestrix-notifications"}

// invocation is one program run as a deployment file says: its arguments
// (program first) and the plain environment it sets.
type invocation struct {
	where string
	args  []string
	env   map[string]string
}

// deployment is what one deployment file runs: the topics Jobs in their
// order, and the example services.
type deployment struct {
	name     string
	topics   []invocation
	services []invocation
}

// TestJobsCreateWhatServeNeeds runs the topics Jobs of the compose stack
// and of the chart (each value set with a topics Job) against an empty
// broker (kfake, three brokers, no auto-creation), then each example
// service of that deployment as it is deployed but without a database
// and with its relay in the process (the relay creates its own
// checkpoint topic, as the relay Deployment does): every one must get
// ready and stay up — an example's `serve` without --init exits 1 naming
// a topic it needs that does not exist. A control run of each example
// against an empty broker must exit naming a missing topic, so the check
// cannot pass by waiting too little.
func TestJobsCreateWhatServeNeeds(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the CLI and the examples")
	}
	dir := buildPrograms(t)
	deps := []deployment{composeDeployment(t)}
	sets := valueSets(t)
	names := slices.Sorted(func(yield func(string) bool) {
		for k := range sets {
			if !yield(k) {
				return
			}
		}
	})
	for _, name := range names {
		if d := chartDeployment(t, name, sets[name]); len(d.topics) > 0 {
			deps = append(deps, d)
		}
	}
	seen := map[string]bool{}
	for _, d := range deps {
		for _, s := range d.services {
			seen[s.args[0]] = true
		}
	}
	for _, p := range examplePrograms {
		if !seen[p] {
			t.Errorf("no deployment runs %s serve", p)
		}
	}
	t.Run("control", func(t *testing.T) {
		for _, p := range examplePrograms {
			seeds := emptyBroker(t)
			out, err := runServe(t, dir, invocation{where: "control", args: []string{p, "serve"}}, seeds, 30*time.Second)
			if err == nil || !strings.Contains(out, "topic") {
				t.Errorf("%s serve on an empty broker: %v, want an exit naming the missing topics\n%s", p, err, out)
			}
		}
	})
	for _, d := range deps {
		t.Run(d.name, func(t *testing.T) {
			if len(d.services) == 0 {
				t.Skip("no example service")
			}
			seeds := emptyBroker(t)
			for _, j := range d.topics {
				ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
				cmd := exec.CommandContext(ctx, filepath.Join(dir, j.args[0]), j.args[1:]...)
				cmd.Env = programEnv(j.env, seeds)
				out, err := cmd.CombinedOutput()
				cancel()
				if err != nil {
					t.Fatalf("%s: %s: %v\n%s", j.where, strings.Join(j.args, " "), err, out)
				}
			}
			for _, s := range d.services {
				if out, err := runServe(t, dir, s, seeds, 0); err != nil {
					t.Errorf("%s: %s after the topics Jobs: %v\n%s", s.where, strings.Join(s.args, " "), err, out)
				}
			}
		})
	}
}

// emptyBroker starts a kfake cluster of three brokers (the chart's
// replication 3) with no topics.
func emptyBroker(t *testing.T) string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(3))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return strings.Join(c.ListenAddrs(), ",")
}

// programEnv is the environment of a program run: PATH, the deployment's
// plain variables but the connections, and the test's broker.
func programEnv(env map[string]string, seeds string) []string {
	out := []string{"PATH=/usr/bin:/bin", "KAFKA_BROKERS=" + seeds}
	for k, v := range env {
		switch k {
		case "KAFKA_BROKERS", "DATABASE_URL", "ORCHESTRIX_LISTEN":
		default:
			out = append(out, k+"="+v)
		}
	}
	return out
}

// runServe runs a service's `serve` on the memory stores with its relay
// (--relay=false dropped) and health on a free port. With fail 0 it waits
// until /readyz answers 200, checks the process is still up 2 s later,
// stops it with SIGTERM and wants exit 0; with fail > 0 it wants the
// process to exit by itself within fail, and returns its error.
func runServe(t *testing.T, dir string, s invocation, seeds string, fail time.Duration) (string, error) {
	t.Helper()
	var args []string
	for _, a := range s.args[1:] {
		if a != "--relay=false" {
			args = append(args, a)
		}
	}
	args = append(args, "--listen=127.0.0.1:0")
	cmd := exec.Command(filepath.Join(dir, s.args[0]), args...)
	cmd.Env = programEnv(s.env, seeds)
	var mu sync.Mutex
	var out strings.Builder
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); pw.Close() }()
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			l := sc.Text()
			mu.Lock()
			out.WriteString(l + "\n")
			mu.Unlock()
			if strings.Contains(l, "livez") {
				if m := regexp.MustCompile(`127\.0\.0\.1:\d+`).FindString(l); m != "" {
					select {
					case addr <- m:
					default:
					}
				}
			}
		}
	}()
	output := func() string {
		mu.Lock()
		defer mu.Unlock()
		return out.String()
	}
	kill := func() {
		_ = cmd.Process.Kill()
		<-done
	}
	if fail > 0 {
		select {
		case err := <-done:
			time.Sleep(50 * time.Millisecond) // the last lines
			return output(), err
		case <-time.After(fail):
			kill()
			return output(), nil
		}
	}
	var health string
	select {
	case health = <-addr:
	case err := <-done:
		return output(), err
	case <-time.After(time.Minute):
		kill()
		return output(), errorf("did not listen within a minute")
	}
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get("http://" + health + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			kill()
			return output(), errorf("/readyz not 200 within a minute")
		}
		select {
		case err := <-done:
			return output(), err
		case <-time.After(100 * time.Millisecond):
		}
	}
	select {
	case err := <-done:
		return output(), errorf("exited after it was ready: %v", err)
	case <-time.After(2 * time.Second):
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		return output(), err
	case <-time.After(45 * time.Second):
		kill()
		return output(), errorf("still running 45s after SIGTERM")
	}
}

// composeDeployment reads the compose stack's topics jobs (in the order
// their depends_on allows) and example services.
func composeDeployment(t *testing.T) deployment {
	t.Helper()
	d := deployment{name: "docker-compose.yml"}
	services := composeServices(t)
	var jobs []string
	for name, s := range services {
		args := s.args()
		if s.Image != "orchestrix:dev" {
			continue
		}
		if len(strs(s.Entrypoint)) == 0 && len(args) > 1 && args[0] == "topics" && args[1] == "create" {
			jobs = append(jobs, name)
		}
		if e := strs(s.Entrypoint); len(e) > 0 && slices.Contains(examplePrograms, e[0]) && len(args) > 1 && args[1] == "serve" {
			d.services = append(d.services, invocation{where: "docker-compose.yml " + name, args: args, env: s.Environment})
		}
	}
	sort.Strings(jobs)
	done := map[string]bool{}
	for len(done) < len(jobs) {
		progress := false
		for _, name := range jobs {
			if done[name] {
				continue
			}
			ready := true
			for dep := range services[name].DependsOn {
				if slices.Contains(jobs, dep) && !done[dep] {
					ready = false
				}
			}
			if ready {
				s := services[name]
				d.topics = append(d.topics, invocation{where: "docker-compose.yml " + name, args: append([]string{"orchestrix"}, s.args()...), env: s.Environment})
				done[name], progress = true, true
			}
		}
		if !progress {
			t.Fatalf("docker-compose.yml: the topics jobs' depends_on form a cycle")
		}
	}
	sort.Slice(d.services, func(i, j int) bool { return d.services[i].where < d.services[j].where })
	return d
}

// chartDeployment renders the chart with one value set and reads its
// topics Job's steps (init containers in order, then the containers) and
// its example services' Deployments.
func chartDeployment(t *testing.T, set, overlay string) deployment {
	t.Helper()
	d := deployment{name: "chart " + set}
	files := render(t, overlay)
	var names []string
	for f := range files {
		names = append(names, f)
	}
	sort.Strings(names)
	for _, file := range names {
		if strings.HasSuffix(file, "NOTES.txt") {
			continue
		}
		for _, o := range decodeAll(t, file, files[file]) {
			switch v := o.v.(type) {
			case *batchv1.Job:
				for _, c := range append(slices.Clone(v.Spec.Template.Spec.InitContainers), v.Spec.Template.Spec.Containers...) {
					if strings.HasPrefix(c.Image, "orchestrix:") && len(c.Command) == 0 && len(c.Args) > 1 && c.Args[0] == "topics" && c.Args[1] == "create" {
						d.topics = append(d.topics, invocation{where: d.name + " " + v.Name + "/" + c.Name, args: append([]string{"orchestrix"}, c.Args...), env: plainEnv(c.Env)})
					}
				}
			case *appsv1.Deployment:
				for _, c := range v.Spec.Template.Spec.Containers {
					if len(c.Command) == 1 && slices.Contains(examplePrograms, c.Command[0]) && len(c.Args) > 0 && c.Args[0] == "serve" {
						d.services = append(d.services, invocation{where: d.name + " " + v.Name, args: append(slices.Clone(c.Command), c.Args...), env: plainEnv(c.Env)})
					}
				}
			}
		}
	}
	return d
}

// plainEnv returns the variables a container sets by value.
func plainEnv(env []corev1.EnvVar) map[string]string {
	out := map[string]string{}
	for _, e := range env {
		if e.ValueFrom == nil {
			out[e.Name] = e.Value
		}
	}
	return out
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
