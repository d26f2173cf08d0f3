package check

import (
	"bytes"
	"flag"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite deploy/k8s from the chart's default values")

const (
	chartDir = "../helm/orchestrix"
	k8sDir   = "../k8s"
)

// valueSets returns the values the chart is rendered and checked with:
// the inline sets below and every deploy/helm/values-*.yaml (by file name).
func valueSets(t *testing.T) map[string]string {
	t.Helper()
	out := maps.Clone(inlineValueSets)
	files, err := filepath.Glob("../helm/values-*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no deploy/helm/values-*.yaml: %v", err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(f)] = string(b)
	}
	return out
}

// inlineValueSets: the defaults, a secured cluster (TLS/SASL Secrets,
// KEDA authentication), and the two example services without KEDA,
// grants or the topics Job.
var inlineValueSets = map[string]string{
	"default": "",
	"secured": `
monitoring: {serviceMonitor: true, prometheusRule: true, grafanaDashboard: true, labels: {release: kube-prometheus-stack}}
kafka:
  brokers: b-1.kafka.example:9096,b-2.kafka.example:9096
  secretName: kafka-sasl
  filesSecretName: kafka-ca
topics:
  partitions: 24
  extraArgs: ["--group", "banking-aggregates", "--retry-levels", "2"]
processors:
  - name: banking
    command: ["orchestrix-banking"]
    args: ["serve"]
    port: 8080
    replicas: 3
    drainSeconds: 40
    shutdownFlag: --shutdown-timeout
    resources: {requests: {cpu: 500m, memory: 256Mi}}
    keda:
      enabled: true
      consumerGroup: banking-aggregates
      topic: banking.commands
      minReplicas: 2
      maxReplicas: 24
      lagThreshold: "500"
      activationLagThreshold: "1"
      pollingInterval: 10
      cooldownPeriod: 120
      authenticationRef: kafka-sasl
`,
	"examples": `
context: ecommerce
migrations: {grants: false}
exporter: {enabled: false}
topics: {enabled: false}
processors:
  - name: ecommerce
    command: ["orchestrix-ecommerce"]
    args: ["serve"]
    port: 8080
    replicas: 2
    drainSeconds: 30
    shutdownFlag: --shutdown-timeout
    resources: {}
    keda: {enabled: false}
  - name: banking
    command: ["orchestrix-banking"]
    args: ["serve", "--context", "banking"]
    port: 9090
    replicas: 1
    drainSeconds: 25
    shutdownFlag: --shutdown-timeout
    resources: {}
`,
}

// render renders the chart as `helm template` does, with the values
// overlaid on values.yaml, and returns the manifests by template name.
func render(t *testing.T, overlay string) map[string]string {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	vals := map[string]any{}
	if err := yaml.Unmarshal([]byte(overlay), &vals); err != nil {
		t.Fatalf("values: %v", err)
	}
	rv, err := util.ToRenderValues(ch, vals, common.ReleaseOptions{Name: "orchestrix", Namespace: "orchestrix", IsInstall: true}, common.DefaultCapabilities)
	if err != nil {
		t.Fatalf("render values: %v", err)
	}
	out, err := engine.Render(ch, rv)
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	return out
}

// TestChart renders the chart with each value set, lints it, decodes
// every object strictly into its Kubernetes type (an unknown or
// misspelt field fails) and checks the properties docs/deployment.md
// promises.
func TestChart(t *testing.T) {
	for name, overlay := range valueSets(t) {
		t.Run(name, func(t *testing.T) {
			vals := map[string]any{}
			if err := yaml.Unmarshal([]byte(overlay), &vals); err != nil {
				t.Fatal(err)
			}
			linter := lint.RunAll(chartDir, vals, "orchestrix")
			for _, m := range linter.Messages {
				if m.Severity >= support.WarningSev {
					t.Errorf("helm lint: %v", m)
				}
			}
			var objs []object
			for file, text := range render(t, overlay) {
				if strings.HasSuffix(file, "NOTES.txt") {
					continue
				}
				objs = append(objs, decodeAll(t, file, text)...)
			}
			checkObjects(t, objs, overlay)
			if name == "secured" {
				var kinds []string
				for _, o := range objs {
					kinds = append(kinds, o.kind+"/"+o.name)
				}
				for _, want := range []string{"ServiceMonitor/orchestrix-exporter", "PrometheusRule/orchestrix", "ConfigMap/orchestrix-dashboard"} {
					if !slices.Contains(kinds, want) {
						t.Errorf("monitoring on: no %s (%v)", want, kinds)
					}
				}
			}
		})
	}
}

// TestChartRefusesBadValues: values that would break the guarantees
// fail at `helm template`, with a message naming the value.
func TestChartRefusesBadValues(t *testing.T) {
	for name, c := range map[string]struct{ overlay, want string }{
		"no relay":               {"relay: {replicas: 0}", "relay.replicas must be at least 1"},
		"min above max replicas": {"processors: [{name: p, command: [x], args: [], port: 8080, drainSeconds: 5, keda: {enabled: true, minReplicas: 5, maxReplicas: 2}}]", "minReplicas 5 exceeds maxReplicas 2"},
	} {
		t.Run(name, func(t *testing.T) {
			ch, err := loader.Load(chartDir)
			if err != nil {
				t.Fatal(err)
			}
			vals := map[string]any{}
			if err := yaml.Unmarshal([]byte(c.overlay), &vals); err != nil {
				t.Fatal(err)
			}
			rv, err := util.ToRenderValues(ch, vals, common.ReleaseOptions{Name: "orchestrix", Namespace: "orchestrix"}, common.DefaultCapabilities)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := engine.Render(ch, rv); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

// TestChartFilesAreTheOriginals: the chart's copies (Helm reads files
// inside the chart only) of grants.sql, the alert rules and the dashboard
// are the files under deploy/.
func TestChartFilesAreTheOriginals(t *testing.T) {
	for _, orig := range []string{"../postgres/grants.sql", "../prometheus/alerts.yml", "../grafana/orchestrix.json"} {
		a, err := os.ReadFile(orig)
		if err != nil {
			t.Fatal(err)
		}
		cp := filepath.Join(chartDir, "files", filepath.Base(orig))
		b, err := os.ReadFile(cp)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs from %s: cp %s %s", cp, orig, orig, cp)
		}
	}
}

const k8sHeader = "# Generated from deploy/helm/orchestrix with its default values (release\n" +
	"# and namespace \"orchestrix\"): cd deploy/check && go test -run TestK8sManifests -update\n" +
	"# Edit the chart, not this file. See docs/deployment.md for the order to apply them in.\n"

// TestK8sManifests checks that deploy/k8s is the chart rendered with its
// default values (regenerate with -update), and decodes every manifest
// there — the generated ones and secrets.example.yaml — strictly.
func TestK8sManifests(t *testing.T) {
	want := map[string]string{}
	for file, text := range render(t, "") {
		if strings.HasSuffix(file, "NOTES.txt") || strings.TrimSpace(text) == "" {
			continue
		}
		want[filepath.Base(file)] = k8sHeader + strings.TrimLeft(text, "\n")
	}
	if *update {
		for name, text := range want {
			if err := os.WriteFile(filepath.Join(k8sDir, name), []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name, text := range want {
		got, err := os.ReadFile(filepath.Join(k8sDir, name))
		if err != nil || string(got) != text {
			t.Errorf("deploy/k8s/%s is not the chart's default rendering (go test -run TestK8sManifests -update): %v", name, err)
		}
	}
	files, err := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in deploy/k8s: %v", err)
	}
	var objs []object
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, generated := want[filepath.Base(f)]; !generated && !strings.HasSuffix(f, ".example.yaml") {
			t.Errorf("%s: neither generated from the chart nor an example", f)
		}
		objs = append(objs, decodeAll(t, f, string(b))...)
	}
	checkObjects(t, objs, "")
}

// object is one decoded manifest.
type object struct {
	file, kind, name string
	v                any
}

// scaledObject is the part of KEDA's ScaledObject (keda.sh/v1alpha1)
// the chart writes; decoding is strict, so a field KEDA does not have
// (or the chart misspells) fails.
type scaledObject struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metadataLite      `json:"metadata"`
	Spec       scaledObjectSpec  `json:"spec"`
	Status     map[string]string `json:"status,omitempty"`
}

type metadataLite struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type scaledObjectSpec struct {
	ScaleTargetRef struct {
		Name       string `json:"name"`
		Kind       string `json:"kind,omitempty"`
		APIVersion string `json:"apiVersion,omitempty"`
	} `json:"scaleTargetRef"`
	PollingInterval *int32 `json:"pollingInterval,omitempty"`
	CooldownPeriod  *int32 `json:"cooldownPeriod,omitempty"`
	MinReplicaCount *int32 `json:"minReplicaCount,omitempty"`
	MaxReplicaCount *int32 `json:"maxReplicaCount,omitempty"`
	Triggers        []struct {
		Type              string            `json:"type"`
		Name              string            `json:"name,omitempty"`
		Metadata          map[string]string `json:"metadata"`
		AuthenticationRef *struct {
			Name string `json:"name"`
			Kind string `json:"kind,omitempty"`
		} `json:"authenticationRef,omitempty"`
	} `json:"triggers"`
}

// serviceMonitor and prometheusRule are the parts of the Prometheus
// operator's kinds (monitoring.coreos.com/v1) the chart writes.
type serviceMonitor struct {
	APIVersion string       `json:"apiVersion"`
	Kind       string       `json:"kind"`
	Metadata   metadataLite `json:"metadata"`
	Spec       struct {
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		Endpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path,omitempty"`
			Interval string `json:"interval,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

type prometheusRule struct {
	APIVersion string       `json:"apiVersion"`
	Kind       string       `json:"kind"`
	Metadata   metadataLite `json:"metadata"`
	Spec       ruleFile     `json:"spec"`
}

// kafkaTriggerKeys are the kafka trigger's metadata keys (keda.sh docs,
// scalers/apache-kafka).
var kafkaTriggerKeys = []string{"bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
	"offsetResetPolicy", "allowIdleConsumers", "scaleToZeroOnInvalidOffset", "excludePersistentLag",
	"limitToPartitionsWithLag", "partitionLimitation", "version", "sasl", "tls"}

var docSep = regexp.MustCompile(`(?m)^---\s*$`)

// decodeAll decodes every YAML document of text strictly into the type
// of its kind.
func decodeAll(t *testing.T, file, text string) []object {
	t.Helper()
	var out []object
	for _, doc := range docSep.Split(text, -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var head struct {
			APIVersion string       `json:"apiVersion"`
			Kind       string       `json:"kind"`
			Metadata   metadataLite `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Errorf("%s: %v", file, err)
			continue
		}
		var v any
		switch head.APIVersion + " " + head.Kind {
		case "apps/v1 Deployment":
			v = &appsv1.Deployment{}
		case "policy/v1 PodDisruptionBudget":
			v = &policyv1.PodDisruptionBudget{}
		case "batch/v1 Job":
			v = &batchv1.Job{}
		case "v1 ConfigMap":
			v = &corev1.ConfigMap{}
		case "v1 Secret":
			v = &corev1.Secret{}
		case "v1 Service":
			v = &corev1.Service{}
		case "v1 ServiceAccount":
			v = &corev1.ServiceAccount{}
		case "keda.sh/v1alpha1 ScaledObject":
			v = &scaledObject{}
		case "monitoring.coreos.com/v1 ServiceMonitor":
			v = &serviceMonitor{}
		case "monitoring.coreos.com/v1 PrometheusRule":
			v = &prometheusRule{}
		default:
			t.Errorf("%s: %s %s %q: a kind this check does not know", file, head.APIVersion, head.Kind, head.Metadata.Name)
			continue
		}
		if err := yaml.UnmarshalStrict([]byte(doc), v); err != nil {
			t.Errorf("%s: %s %q: %v", file, head.Kind, head.Metadata.Name, err)
			continue
		}
		out = append(out, object{file: file, kind: head.Kind, name: head.Metadata.Name, v: v})
	}
	return out
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// checkObjects checks what the guide promises of the rendered objects.
func checkObjects(t *testing.T, objs []object, overlay string) {
	t.Helper()
	vals := map[string]any{}
	_ = yaml.Unmarshal([]byte(overlay), &vals)
	partitions := 12
	if tp, ok := vals["topics"].(map[string]any); ok {
		if n, ok := tp["partitions"].(float64); ok {
			partitions = int(n)
		}
	}
	deployments := map[string]*appsv1.Deployment{}
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.kind)
		if d, ok := o.v.(*appsv1.Deployment); ok {
			deployments[d.Name] = d
		}
	}
	sort.Strings(kinds)
	for _, must := range []string{"Deployment", "PodDisruptionBudget", "Job"} {
		if !slices.Contains(kinds, must) {
			t.Errorf("no %s rendered (kinds: %v)", must, kinds)
		}
	}
	relay, ok := deployments["orchestrix-relay"]
	if !ok {
		t.Fatalf("no relay Deployment")
	}
	if relay.Spec.Replicas == nil || *relay.Spec.Replicas != 2 {
		t.Errorf("relay replicas %v, want 2 (leader and standby)", relay.Spec.Replicas)
	}
	for _, o := range objs {
		switch v := o.v.(type) {
		case *appsv1.Deployment:
			checkPod(t, v.Name, v.Spec.Template.Spec, true)
		case *batchv1.Job:
			checkPod(t, v.Name, v.Spec.Template.Spec, false)
			if v.Annotations["helm.sh/hook"] != "pre-install,pre-upgrade" {
				t.Errorf("Job %s: not a pre-install/pre-upgrade hook: %v", v.Name, v.Annotations)
			}
		case *policyv1.PodDisruptionBudget:
			if v.Name == "orchestrix-relay" && (v.Spec.MinAvailable == nil || v.Spec.MinAvailable.IntValue() != 1) {
				t.Errorf("relay PDB: minAvailable %v, want 1", v.Spec.MinAvailable)
			}
			if _, ok := deployments[v.Name]; !ok {
				t.Errorf("PDB %s: no Deployment of that name", v.Name)
			}
		case *prometheusRule:
			b, err := os.ReadFile("../prometheus/alerts.yml")
			if err != nil {
				t.Fatal(err)
			}
			var want ruleFile
			if err := yaml.Unmarshal(b, &want); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(v.Spec, want) {
				t.Errorf("PrometheusRule %s: its rules differ from deploy/prometheus/alerts.yml", v.Metadata.Name)
			}
		case *corev1.ConfigMap:
			if dash, ok := v.Data["orchestrix.json"]; ok {
				b, err := os.ReadFile("../grafana/orchestrix.json")
				if err != nil {
					t.Fatal(err)
				}
				if strings.TrimSpace(dash) != strings.TrimSpace(string(b)) || v.Labels["grafana_dashboard"] != "1" {
					t.Errorf("ConfigMap %s: not deploy/grafana/orchestrix.json for the sidecar", v.Name)
				}
			}
		case *scaledObject:
			target := v.Spec.ScaleTargetRef.Name
			if target == "orchestrix-relay" {
				t.Errorf("ScaledObject %s targets the relay: it must never be autoscaled", v.Metadata.Name)
			}
			d, ok := deployments[target]
			if !ok {
				t.Errorf("ScaledObject %s: no Deployment %s", v.Metadata.Name, target)
			} else if d.Spec.Replicas != nil {
				t.Errorf("Deployment %s sets replicas although KEDA scales it", target)
			}
			if v.Spec.MaxReplicaCount == nil || int(*v.Spec.MaxReplicaCount) > partitions {
				t.Errorf("ScaledObject %s: maxReplicaCount %v above the %d partitions", v.Metadata.Name, v.Spec.MaxReplicaCount, partitions)
			}
			for _, tr := range v.Spec.Triggers {
				if tr.Type != "kafka" {
					t.Errorf("ScaledObject %s: trigger %q", v.Metadata.Name, tr.Type)
				}
				for k := range tr.Metadata {
					if !slices.Contains(kafkaTriggerKeys, k) {
						t.Errorf("ScaledObject %s: kafka trigger has no field %q", v.Metadata.Name, k)
					}
				}
				if tr.Metadata["allowIdleConsumers"] != "false" || tr.Metadata["consumerGroup"] == "" || tr.Metadata["topic"] == "" {
					t.Errorf("ScaledObject %s: trigger %v", v.Metadata.Name, tr.Metadata)
				}
			}
		}
	}
	// No autoscaler of any kind for the relay.
	for _, o := range objs {
		if o.kind == "HorizontalPodAutoscaler" {
			t.Errorf("%s: an HPA (%s): scale processors with KEDA, never the relay", o.file, o.name)
		}
	}
}

// checkPod checks a workload's pod: non-root, read-only root, and for
// long-running ones probes on /livez and /readyz of a declared port and
// a grace period above the drain bound it is given.
func checkPod(t *testing.T, name string, spec corev1.PodSpec, service bool) {
	t.Helper()
	if spec.SecurityContext == nil || spec.SecurityContext.RunAsNonRoot == nil || !*spec.SecurityContext.RunAsNonRoot {
		t.Errorf("%s: not runAsNonRoot", name)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("%s: mounts a service account token it does not need", name)
	}
	for _, c := range append(spec.InitContainers, spec.Containers...) {
		if c.SecurityContext == nil || c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem {
			t.Errorf("%s/%s: root filesystem not read-only", name, c.Name)
		}
		if !service {
			continue
		}
		ports := map[string]bool{}
		for _, p := range c.Ports {
			ports[p.Name] = true
		}
		for probe, path := range map[string]*corev1.Probe{"/livez": c.LivenessProbe, "/readyz": c.ReadinessProbe, "/livez ": c.StartupProbe} {
			if path == nil || path.HTTPGet == nil || path.HTTPGet.Path != strings.TrimSpace(probe) || !ports[path.HTTPGet.Port.String()] {
				t.Errorf("%s/%s: no probe on %s of a declared port", name, c.Name, probe)
			}
		}
		drain := 10 * time.Second // the relay: its transaction in flight
		for _, a := range append(c.Command, c.Args...) {
			if v, ok := strings.CutPrefix(a, "--shutdown-timeout="); ok {
				d, err := time.ParseDuration(v)
				if err != nil {
					t.Errorf("%s: %s: %v", name, a, err)
				}
				drain = d
			}
		}
		grace := time.Duration(0)
		if spec.TerminationGracePeriodSeconds != nil {
			grace = time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
		}
		if grace < drain+5*time.Second {
			t.Errorf("%s: terminationGracePeriodSeconds %s, want the drain bound %s + 5s at least", name, grace, drain)
		}
	}
}
