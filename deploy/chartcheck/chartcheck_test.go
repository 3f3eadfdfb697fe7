package chartcheck

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

const chartDir = "../helm/tokenpool"

// valuesFiles are the chart's defaults ("") and every file under its ci/.
func valuesFiles(t *testing.T) []string {
	t.Helper()
	ci, err := filepath.Glob(filepath.Join(chartDir, "ci", "*.yaml"))
	if err != nil || len(ci) == 0 {
		t.Fatalf("no values files under %s/ci (%v)", chartDir, err)
	}
	return append([]string{""}, ci...)
}

// TestTheChartRendersLintsAndDecodes renders the chart with its default
// values and with each values file under ci/, lints it, decodes every
// object strictly into its Kubernetes API type, and checks the objects
// fit together.
func TestTheChartRendersLintsAndDecodes(t *testing.T) {
	routes := daemonRoutes(t)
	vars := daemonVariables(t)
	for _, vf := range valuesFiles(t) {
		name := "defaults"
		if vf != "" {
			name = filepath.Base(vf)
		}
		t.Run(name, func(t *testing.T) {
			msgs, err := Lint(chartDir, vf)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range msgs {
				t.Errorf("helm lint: %s", m)
			}
			files, err := Render(chartDir, vf)
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			objs, err := Decode(files)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			for _, o := range objs {
				t.Logf("%s %s (%s)", o.Kind, o.Name, o.Source)
			}
			checkObjects(t, objs, routes, vars)
		})
	}
}

// checkObjects checks what the rendered objects promise one another.
func checkObjects(t *testing.T, objs []Object, routes, vars map[string]bool) {
	t.Helper()
	deps := all[*appsv1.Deployment](objs)
	if len(deps) != 1 {
		t.Fatalf("%d Deployments, want 1", len(deps))
	}
	dep := deps[0]
	pods := labels.Set(dep.Spec.Template.Labels)
	if !selects(t, dep.Spec.Selector, pods) {
		t.Fatalf("the Deployment's selector %v does not select its own pods %v", dep.Spec.Selector, pods)
	}
	spec := dep.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}

	// Probes on the daemon's real routes, on a port the container opens;
	// liveness never on /readyz (a Redis outage must not restart pods).
	for kind, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe, "startup": c.StartupProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s probe: none, or not an HTTP GET", kind)
			continue
		}
		if !routes[p.HTTPGet.Path] {
			t.Errorf("%s probe on %s: not a route of the daemon (api/openapi.yaml)", kind, p.HTTPGet.Path)
		}
		if _, ok := ports[p.HTTPGet.Port.String()]; !ok {
			t.Errorf("%s probe on port %s: the container opens %v", kind, p.HTTPGet.Port.String(), ports)
		}
	}
	if c.ReadinessProbe != nil && c.ReadinessProbe.HTTPGet != nil && c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("readiness probe on %s, want /readyz", c.ReadinessProbe.HTTPGet.Path)
	}
	if c.LivenessProbe != nil && c.LivenessProbe.HTTPGet != nil && c.LivenessProbe.HTTPGet.Path == "/readyz" {
		t.Error("liveness probe on /readyz: a Redis outage would restart every pod")
	}

	// Non-root, read-only root filesystem, no privilege, resources.
	if psc := spec.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Error("the pod does not require a non-root user")
	}
	if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("the container's root filesystem is writable or it may escalate privileges")
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources: %+v, want CPU and memory requests and a memory limit", c.Resources)
	}

	// Every variable is one the daemon reads; secrets only by reference.
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
		if !vars[e.Name] {
			t.Errorf("variable %s: not in the README's configuration", e.Name)
		}
		if secretVariable(e.Name) && e.ValueFrom == nil {
			t.Errorf("variable %s has a literal value; it must come from the Secret", e.Name)
		}
	}
	if len(c.EnvFrom) == 0 {
		for _, want := range []string{"TOKENPOOL_JWT_SECRET"} {
			if e, ok := env[want]; !ok || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
				t.Errorf("no envFrom and %s not from the Secret", want)
			}
		}
	}
	_, single := env["REDIS_URL"]
	_, cluster := env["REDIS_CLUSTER_ADDRS"]
	_, sentinel := env["REDIS_SENTINEL_ADDRS"]
	if !single && !cluster && !sentinel && len(c.EnvFrom) == 0 {
		t.Error("no Redis: the embedded one serves a single replica only")
	}
	if grace, shutdown := spec.TerminationGracePeriodSeconds, env["TOKENPOOL_SHUTDOWN_TIMEOUT"].Value; grace == nil ||
		shutdown == "" || float64(*grace) <= mustSeconds(t, shutdown) {
		t.Errorf("termination grace period %v is not longer than TOKENPOOL_SHUTDOWN_TIMEOUT %q", grace, shutdown)
	}

	// The Services reach the pods on the container's ports: the API's
	// (named as the Deployment) and the metrics' (a ClusterIP).
	svcs := all[*corev1.Service](objs)
	if len(svcs) != 2 {
		t.Fatalf("%d Services, want the API's and the metrics'", len(svcs))
	}
	reaches := func(p corev1.ServicePort) int32 { // the container port a Service port reaches
		if n, ok := ports[p.TargetPort.String()]; ok {
			return n
		}
		return p.TargetPort.IntVal
	}
	var svc, metricsSvc *corev1.Service
	for _, s := range svcs {
		if !labels.SelectorFromSet(s.Spec.Selector).Matches(pods) {
			t.Errorf("the Service %s selects %v, not the pods %v", s.Name, s.Spec.Selector, pods)
		}
		for _, p := range s.Spec.Ports {
			if _, ok := ports[p.TargetPort.String()]; !ok {
				t.Errorf("Service %s port %s targets %s, which the container does not open", s.Name, p.Name, p.TargetPort.String())
			}
		}
		if s.Name == dep.Name {
			svc = s
		} else {
			metricsSvc = s
		}
	}
	if svc == nil || metricsSvc == nil {
		t.Fatalf("Services %s and %s: want one named %s, for the API", svcs[0].Name, svcs[1].Name, dep.Name)
	}

	// The autoscaler scales this Deployment, which then sets no replicas.
	for _, h := range all[*autoscalingv2.HorizontalPodAutoscaler](objs) {
		ref := h.Spec.ScaleTargetRef
		if ref.Kind != "Deployment" || ref.Name != dep.Name || ref.APIVersion != "apps/v1" {
			t.Errorf("the autoscaler scales %s %s %s, not the Deployment %s", ref.APIVersion, ref.Kind, ref.Name, dep.Name)
		}
		if dep.Spec.Replicas != nil {
			t.Error("the Deployment sets replicas while an autoscaler scales it: every upgrade would reset them")
		}
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 2 || h.Spec.MaxReplicas < *h.Spec.MinReplicas {
			t.Errorf("autoscaler replicas %v to %d", h.Spec.MinReplicas, h.Spec.MaxReplicas)
		}
	}

	// The disruption budget covers the Deployment's pods and lets a node
	// drain (at least one pod may go).
	for _, b := range all[*policyv1.PodDisruptionBudget](objs) {
		if !selects(t, b.Spec.Selector, pods) {
			t.Errorf("the disruption budget selects %v, not the pods %v", b.Spec.Selector, pods)
		}
		if b.Spec.MaxUnavailable != nil && b.Spec.MaxUnavailable.IntValue() < 1 && b.Spec.MaxUnavailable.String() != "" &&
			!strings.HasSuffix(b.Spec.MaxUnavailable.String(), "%") {
			t.Errorf("maxUnavailable %s: no pod may ever be evicted", b.Spec.MaxUnavailable.String())
		}
		if b.Spec.MinAvailable != nil && dep.Spec.Replicas != nil && b.Spec.MinAvailable.IntValue() >= int(*dep.Spec.Replicas) {
			t.Errorf("minAvailable %s of %d replicas: no pod may ever be evicted", b.Spec.MinAvailable.String(), *dep.Spec.Replicas)
		}
	}

	// The daemon serves metrics on a port of its own, which the container
	// opens, reachable from another pod, never the API's; only the
	// metrics Service, a ClusterIP whatever the API's Service is, reaches
	// it.
	metricsPort := listenPort(t, env["TOKENPOOL_METRICS_ADDR"].Value)
	if metricsPort == 0 || metricsPort == ports["http"] || ports["metrics"] != metricsPort {
		t.Errorf("TOKENPOOL_METRICS_ADDR %q: want a port of every interface that the container opens as \"metrics\" (it opens %v), not the API's", env["TOKENPOOL_METRICS_ADDR"].Value, ports)
	}
	for _, p := range svc.Spec.Ports {
		if reaches(p) == metricsPort {
			t.Errorf("the API's Service (%s) reaches the metrics port as %s", svc.Spec.Type, p.Name)
		}
	}
	if metricsSvc.Spec.Type != corev1.ServiceTypeClusterIP {
		t.Errorf("the metrics Service is a %s; want a ClusterIP", metricsSvc.Spec.Type)
	}

	// The ServiceMonitor selects the metrics Service alone and scrapes
	// /metrics on its port that reaches the metrics port.
	for _, m := range all[*monitoringv1.ServiceMonitor](objs) {
		if !selects(t, &m.Spec.Selector, labels.Set(metricsSvc.Labels)) || selects(t, &m.Spec.Selector, labels.Set(svc.Labels)) {
			t.Errorf("the ServiceMonitor selects %v: want the metrics Service's labels %v and not the API's %v", m.Spec.Selector, metricsSvc.Labels, svc.Labels)
		}
		if len(m.Spec.Endpoints) == 0 {
			t.Error("the ServiceMonitor scrapes nothing")
		}
		for _, e := range m.Spec.Endpoints {
			var target int32
			for _, p := range metricsSvc.Spec.Ports {
				if p.Name == e.Port {
					target = reaches(p)
				}
			}
			if target != metricsPort || e.Path != "/metrics" {
				t.Errorf("the ServiceMonitor scrapes port %q (container port %d) path %q; the daemon serves /metrics on %d", e.Port, target, e.Path, metricsPort)
			}
		}
	}

	// The NetworkPolicy applies to the pods and lets callers in.
	for _, np := range all[*networkingv1.NetworkPolicy](objs) {
		if !selects(t, &np.Spec.PodSelector, pods) {
			t.Errorf("the NetworkPolicy applies to %v, not the pods", np.Spec.PodSelector)
		}
		in := map[string]bool{}
		for _, r := range np.Spec.Ingress {
			for _, p := range r.Ports {
				if p.Port != nil {
					in[p.Port.String()] = true
				}
			}
		}
		for _, name := range []string{"http", "metrics"} {
			if !in[name] {
				t.Errorf("the NetworkPolicy lets nothing reach the container's %s port (it lets in %v)", name, in)
			}
		}
	}

	// Whatever the ServiceAccount, the pod mounts no API token.
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("the pod mounts a Kubernetes API token it never uses")
	}
}

// TestTheChartRefusesIncompleteValues: values that would start a daemon
// that can't work fail the render with a message naming the value.
func TestTheChartRefusesIncompleteValues(t *testing.T) {
	for _, c := range []struct{ values, want string }{
		{"redis:\n  mode: cluster\n", "redis.cluster.addrs"},
		{"redis:\n  mode: sentinel\n  sentinel:\n    addrs: [a:26379]\n", "redis.sentinel.master"},
		{"redis:\n  mode: primary\n", "want single, cluster or sentinel"},
		{"secret:\n  keys:\n    ORGA_API_KEY: k\n", "redis.single.url"},
		{"podDisruptionBudget:\n  maxUnavailable: \"\"\n", "maxUnavailable or minAvailable"},
	} {
		f := filepath.Join(t.TempDir(), "values.yaml")
		if err := os.WriteFile(f, []byte(c.values), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Render(chartDir, f)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("values %q: render error %v, want one naming %q", c.values, err, c.want)
		}
	}
}

// TestDecodeIsStrict: a misspelt field fails the decode (so the test
// above can't pass a manifest Kubernetes would reject or ignore).
func TestDecodeIsStrict(t *testing.T) {
	_, err := Decode(map[string]string{"x.yaml": "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  selectr: {}\n"})
	if err == nil || !strings.Contains(err.Error(), "selectr") {
		t.Fatalf("decode of a misspelt field: %v", err)
	}
	_, err = Decode(map[string]string{"x.yaml": "apiVersion: v1\nkind: Gadget\nmetadata:\n  name: x\n"})
	if err == nil {
		t.Fatal("decode of an unknown kind succeeded")
	}
}

func all[T any](objs []Object) []T {
	var out []T
	for _, o := range objs {
		if v, ok := o.Value.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

func selects(t *testing.T, s *metav1.LabelSelector, set labels.Set) bool {
	t.Helper()
	if s == nil || (len(s.MatchLabels) == 0 && len(s.MatchExpressions) == 0) {
		return false // an empty selector selects everything: not this Deployment's pods alone
	}
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		t.Fatalf("selector %v: %v", s, err)
	}
	return sel.Matches(set)
}

// secretVariable reports whether the daemon's variable name holds a secret.
func secretVariable(name string) bool {
	switch name {
	case "ORGA_API_KEY", "OPENAI_API_KEY", "TOKENPOOL_JWT_SECRET", "TOKENPOOL_SEAL_KEYS", "TOKENPOOL_API_KEYS",
		"TOKENPOOL_ADMIN_KEYS", "REDIS_PASSWORD", "REDIS_SENTINEL_PASSWORD":
		return true
	}
	return false
}

func mustSeconds(t *testing.T, d string) float64 {
	t.Helper()
	var s float64
	if _, err := fmt.Sscanf(strings.TrimSuffix(d, "s"), "%g", &s); err != nil || !strings.HasSuffix(d, "s") {
		t.Fatalf("duration %q: want whole seconds like 20s", d)
	}
	return s
}

// listenPort is the port of a listen address that serves other pods
// (":9464" or "0.0.0.0:9464"); 0 for a loopback one, or none.
func listenPort(t *testing.T, addr string) int32 {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil || (host != "" && host != "0.0.0.0" && host != "::") {
		return 0
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		return 0
	}
	return int32(n)
}

// daemonRoutes are the paths of the daemon's API document.
func daemonRoutes(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("../../api/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths map[string]any `json:"paths"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	routes := map[string]bool{}
	for p := range doc.Paths {
		routes[p] = true
	}
	if !routes["/healthz"] || !routes["/readyz"] {
		t.Fatalf("api/openapi.yaml lists %v", routes)
	}
	return routes
}

// daemonVariables are the variable names of the README's configuration
// table (and OTEL_*, the OpenTelemetry standard ones).
func daemonVariables(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		first := strings.SplitN(line, "|", 3)[1]
		for _, f := range strings.Split(first, "`") {
			if f = strings.TrimSpace(f); f != "" && strings.ToUpper(f) == f && !strings.ContainsAny(f, " ,") {
				vars[f] = true
			}
		}
	}
	if !vars["TOKENPOOL_ADDR"] || !vars["REDIS_URL"] {
		t.Fatalf("README's configuration table not found: %v", vars)
	}
	return vars
}
