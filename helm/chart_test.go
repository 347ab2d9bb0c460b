// Package helm holds the Kronos Helm chart (helm/kronos) and its tests: the
// chart is linted, rendered with several value sets by Helm's own packages,
// and every object is decoded strictly into the Kubernetes API types.
package helm

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/fake"
	"sigs.k8s.io/yaml"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
)

const chartDir = "kronos"

// A gossip key for tests only.
const testGossipKey = "c2l4dGVlbi1ieXRlLWtleS1mb3ItdGVzdHMtb25seSE="

var valueSets = map[string]map[string]any{
	"single node": {},
	"single node with backups and monitoring": {
		"backup":           map[string]any{"enabled": true, "keep": 5},
		"config":           map[string]any{"maxConns": 20000},
		"serviceMonitor":   map[string]any{"enabled": true},
		"grafanaDashboard": map[string]any{"enabled": true, "annotations": map[string]any{"grafana_folder": "Kronos"}},
		"prometheusRule":   map[string]any{"enabled": true, "labels": map[string]any{"release": "prometheus"}},
	},
	"cluster on PostgreSQL": {
		"replicaCount":     3,
		"store":            map[string]any{"type": "postgres", "url": "postgres://kronos:secret@db:5432/kronos?sslmode=require"},
		"cluster":          map[string]any{"gossipKey": testGossipKey},
		"autoscaling":      map[string]any{"enabled": true, "connectionsPerPod": 50000},
		"serviceMonitor":   map[string]any{"enabled": true},
		"grafanaDashboard": map[string]any{"enabled": true, "namespace": "monitoring"},
		"prometheusRule":   map[string]any{"enabled": true},
	},
	"cluster on RethinkDB": {
		"replicaCount": 2,
		"store":        map[string]any{"type": "rethinkdb", "existingSecret": "kronos-store"},
		"service":      map[string]any{"type": "ClusterIP"},
	},
}

// object is one rendered manifest.
type object struct {
	Kind, Name, Source string
	JSON               []byte
}

func render(t *testing.T, values map[string]any) ([]object, error) {
	t.Helper()
	return renderIn(t, values, nil)
}

// renderIn renders as Helm does against a cluster holding objects, which
// the chart's lookup calls see; nil: as `helm template`, without a cluster.
func renderIn(t *testing.T, values map[string]any, objects []runtime.Object) ([]object, error) {
	t.Helper()
	chart, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	vals, err := chartutil.ToRenderValues(chart, values,
		chartutil.ReleaseOptions{Name: "kronos", Namespace: "sync", IsInstall: objects == nil, IsUpgrade: objects != nil},
		chartutil.DefaultCapabilities)
	if err != nil {
		return nil, err
	}
	var files map[string]string
	if objects == nil {
		files, err = engine.Render(chart, vals)
	} else {
		files, err = engine.RenderWithClientProvider(chart, vals, fakeCluster{fake.NewSimpleDynamicClient(runtime.NewScheme(), objects...)})
	}
	if err != nil {
		return nil, err
	}
	var paths []string
	for p := range files {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	var out []object
	for _, p := range paths {
		if !strings.HasSuffix(p, ".yaml") {
			continue
		}
		for _, doc := range strings.Split(files[p], "\n---") {
			if strings.TrimSpace(strings.Trim(doc, "-")) == "" {
				continue
			}
			j, err := yaml.YAMLToJSON([]byte(doc))
			if err != nil {
				t.Fatalf("%s: %v\n%s", p, err, doc)
			}
			if string(j) == "null" {
				continue
			}
			var meta struct {
				Kind     string `json:"kind"`
				Metadata struct {
					Name string `json:"name"`
				} `json:"metadata"`
			}
			json.Unmarshal(j, &meta)
			out = append(out, object{meta.Kind, meta.Metadata.Name, p, j})
		}
	}
	return out, nil
}

// decodeStrict fills v from JSON, failing on any field the API type lacks.
func decodeStrict(t *testing.T, o object, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(o.JSON))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s %s (%s) does not decode strictly: %v", o.Kind, o.Name, o.Source, err)
	}
}

// manifests holds the typed objects of one rendering.
type manifests struct {
	deployments []appsv1.Deployment
	services    map[string]corev1.Service
	configMaps  []corev1.ConfigMap
	secrets     []corev1.Secret
	pvcs        []corev1.PersistentVolumeClaim
	pdbs        []policyv1.PodDisruptionBudget
	hpas        []autoscalingv2.HorizontalPodAutoscaler
	monitors    []map[string]any
	cronJobs    []batchv1.CronJob
	dashboards  []corev1.ConfigMap // ConfigMaps for Grafana's sidecar
	rules       []monitoringv1.PrometheusRule
	policies    []networkingv1.NetworkPolicy
}

func typed(t *testing.T, objs []object) manifests {
	t.Helper()
	m := manifests{services: map[string]corev1.Service{}}
	for _, o := range objs {
		switch o.Kind {
		case "Deployment":
			var d appsv1.Deployment
			decodeStrict(t, o, &d)
			m.deployments = append(m.deployments, d)
		case "Service":
			var s corev1.Service
			decodeStrict(t, o, &s)
			m.services[s.Name] = s
		case "ConfigMap":
			var c corev1.ConfigMap
			decodeStrict(t, o, &c)
			if strings.HasSuffix(c.Name, "-dashboard") {
				m.dashboards = append(m.dashboards, c)
			} else {
				m.configMaps = append(m.configMaps, c)
			}
		case "CronJob":
			var c batchv1.CronJob
			decodeStrict(t, o, &c)
			m.cronJobs = append(m.cronJobs, c)
		case "PrometheusRule":
			var r monitoringv1.PrometheusRule
			decodeStrict(t, o, &r)
			m.rules = append(m.rules, r)
		case "Secret":
			var s corev1.Secret
			decodeStrict(t, o, &s)
			m.secrets = append(m.secrets, s)
		case "PersistentVolumeClaim":
			var p corev1.PersistentVolumeClaim
			decodeStrict(t, o, &p)
			m.pvcs = append(m.pvcs, p)
		case "PodDisruptionBudget":
			var p policyv1.PodDisruptionBudget
			decodeStrict(t, o, &p)
			m.pdbs = append(m.pdbs, p)
		case "HorizontalPodAutoscaler":
			var h autoscalingv2.HorizontalPodAutoscaler
			decodeStrict(t, o, &h)
			m.hpas = append(m.hpas, h)
		case "NetworkPolicy":
			var p networkingv1.NetworkPolicy
			decodeStrict(t, o, &p)
			m.policies = append(m.policies, p)
		case "ServiceMonitor": // a CRD: no k8s.io/api type
			var sm map[string]any
			json.Unmarshal(o.JSON, &sm)
			m.monitors = append(m.monitors, sm)
		default:
			t.Fatalf("unexpected kind %s in %s", o.Kind, o.Source)
		}
	}
	return m
}

func TestChartLints(t *testing.T) {
	for name, values := range valueSets {
		t.Run(name, func(t *testing.T) {
			linter := lint.All(chartDir, values, "sync", false)
			for _, msg := range linter.Messages {
				if msg.Severity >= support.WarningSev {
					t.Errorf("lint: %s", msg)
				}
			}
		})
	}
}

func TestChartRendersValidObjects(t *testing.T) {
	for name, values := range valueSets {
		t.Run(name, func(t *testing.T) {
			objs, err := render(t, values)
			if err != nil {
				t.Fatal(err)
			}
			m := typed(t, objs)
			clustered := !strings.HasPrefix(name, "single node")
			if len(m.deployments) != 1 {
				t.Fatalf("%d deployments", len(m.deployments))
			}
			checkDeployment(t, m.deployments[0], clustered)
			checkServices(t, m, clustered)
			checkConfig(t, m, clustered)
			if clustered {
				if m.deployments[0].Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType {
					t.Error("a cluster should roll")
				}
				if len(m.pdbs) != 1 || m.pdbs[0].Spec.MaxUnavailable == nil {
					t.Error("no PodDisruptionBudget for a cluster")
				}
				if len(m.pvcs) != 0 || len(m.cronJobs) != 0 {
					t.Error("stateless nodes should not claim volumes nor be backed up by the chart")
				}
			} else {
				if m.deployments[0].Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
					t.Error("one process at a time may hold the bolt file: the strategy must be Recreate")
				}
				if len(m.pvcs) != 1+len(m.cronJobs) || len(m.pdbs) != 0 || len(m.hpas) != 0 {
					t.Errorf("single node: %d PVCs, %d PDBs, %d HPAs", len(m.pvcs), len(m.pdbs), len(m.hpas))
				}
			}
			checkBackup(t, m, values)
			checkNetworkPolicy(t, m, clustered)
			checkDashboards(t, m, values)
			checkRules(t, m, values)
			if name == "cluster on PostgreSQL" {
				checkAutoscaling(t, m)
				if len(m.monitors) != 1 {
					t.Error("no ServiceMonitor")
				}
			}
		})
	}
}

func checkDeployment(t *testing.T, d appsv1.Deployment, clustered bool) {
	t.Helper()
	pod := d.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Containers))
	}
	c := pod.Containers[0]
	ports := map[string]corev1.ContainerPort{}
	for _, p := range c.Ports {
		ports[p.Name] = p
	}
	if ports["client"].ContainerPort != 5000 || ports["admin"].ContainerPort != 9090 {
		t.Errorf("ports: %+v", c.Ports)
	}
	for probe, path := range map[*corev1.Probe]string{c.ReadinessProbe: "/readyz", c.LivenessProbe: "/healthz"} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != path || probe.HTTPGet.Port.String() != "admin" {
			t.Errorf("probe for %s not on the admin port: %+v", path, probe)
		}
	}
	pre := c.Lifecycle.PreStop
	if pre == nil || pre.Sleep == nil {
		t.Fatal("no preStop sleep")
	}
	grace := *pod.TerminationGracePeriodSeconds
	drain := int64(30) // values.yaml cluster.drainPeriodSeconds
	if grace <= drain+pre.Sleep.Seconds {
		t.Errorf("grace period %ds is not longer than preStop %ds + drain %ds", grace, pre.Sleep.Seconds, drain)
	}
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil ||
		*sc.AllowPrivilegeEscalation || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("container securityContext: %+v", sc)
	}
	if psc := pod.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Error("pod does not run as non-root")
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Error("no resources")
	}
	keys := map[string]bool{}
	for _, s := range pod.TopologySpreadConstraints {
		keys[s.TopologyKey] = true
	}
	if !keys["kubernetes.io/hostname"] || !keys["topology.kubernetes.io/zone"] {
		t.Errorf("topology spread: %v", keys)
	}
	if clustered && (ports["gossip-tcp"].ContainerPort != 7946 || ports["gossip-udp"].Protocol != corev1.ProtocolUDP) {
		t.Errorf("gossip ports: %+v", c.Ports)
	}
}

func checkServices(t *testing.T, m manifests, clustered bool) {
	t.Helper()
	client, ok := m.services["kronos"]
	if !ok {
		t.Fatal("no client Service")
	}
	if client.Spec.SessionAffinity != corev1.ServiceAffinityNone || client.Spec.Ports[0].TargetPort.String() != "client" {
		t.Errorf("client Service: %+v", client.Spec)
	}
	if client.Spec.Type == corev1.ServiceTypeClusterIP && client.Spec.ExternalTrafficPolicy != "" {
		t.Error("externalTrafficPolicy on a ClusterIP Service")
	}
	gossip, ok := m.services["kronos-gossip"]
	if !clustered {
		if ok {
			t.Error("a gossip Service for a single node")
		}
		return
	}
	if !ok || gossip.Spec.ClusterIP != corev1.ClusterIPNone || !gossip.Spec.PublishNotReadyAddresses {
		t.Fatalf("gossip Service must be headless and publish not-ready addresses: %+v", gossip.Spec)
	}
	protocols := map[corev1.Protocol]int32{}
	for _, p := range gossip.Spec.Ports {
		protocols[p.Protocol] = p.Port
	}
	if protocols[corev1.ProtocolTCP] != 7946 || protocols[corev1.ProtocolUDP] != 7946 {
		t.Errorf("gossip ports: %+v", gossip.Spec.Ports)
	}
}

func checkConfig(t *testing.T, m manifests, clustered bool) {
	t.Helper()
	if len(m.configMaps) != 1 {
		t.Fatalf("%d ConfigMaps", len(m.configMaps))
	}
	data := m.configMaps[0].Data
	for k, v := range data {
		if strings.Contains(v, "secret") || strings.Contains(v, testGossipKey) {
			t.Errorf("ConfigMap key %s holds a secret: %s", k, v)
		}
	}
	// Helm reads YAML numbers as floats: integers must not render as 1e+06.
	for _, k := range []string{"KRONOS_MAX_CONNS", "KRONOS_RATE_BURST", "KRONOS_REBALANCE_RATE", "KRONOS_CHANGELOG_MAX_ROWS"} {
		if v, ok := data[k]; ok {
			if _, err := strconv.Atoi(v); err != nil {
				t.Errorf("%s=%q is not an integer the binary accepts", k, v)
			}
		}
	}
	for _, k := range []string{"KRONOS_RATE_LIMIT", "KRONOS_REBALANCE_THRESHOLD"} {
		if v, ok := data[k]; ok {
			if _, err := strconv.ParseFloat(v, 64); err != nil {
				t.Errorf("%s=%q is not a number", k, v)
			}
		}
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range m.deployments[0].Spec.Template.Spec.Containers[0].Env {
		env[e.Name] = e
	}
	if !clustered {
		if data["KRONOS_STORE"] != "bolt:/data/kronos.db" || data["KRONOS_JOIN"] != "" {
			t.Errorf("single node config: %v", data)
		}
		return
	}
	if data["KRONOS_JOIN"] != "kronos-gossip.sync.svc:7946" || data["KRONOS_CLUSTER_BIND"] != ":7946" {
		t.Errorf("cluster config: %v", data)
	}
	if e := env["KRONOS_STORE"]; e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil || e.ValueFrom.SecretKeyRef.Key != "store-url" {
		t.Errorf("the store URL must come from a Secret: %+v", e)
	}
	if env["KRONOS_CLUSTER_ADVERTISE"].Value != "$(POD_IP):7946" {
		t.Errorf("advertise: %+v", env["KRONOS_CLUSTER_ADVERTISE"])
	}
	gossipKey(t, m)
}

// gossipKey checks that a cluster's nodes get a key from a Secret and, if
// the chart renders that Secret, that it holds a valid key; it returns it.
func gossipKey(t *testing.T, m manifests) []byte {
	t.Helper()
	var ref *corev1.SecretKeySelector
	for _, e := range m.deployments[0].Spec.Template.Spec.Containers[0].Env {
		if e.Name == "KRONOS_CLUSTER_KEY" && e.ValueFrom != nil {
			ref = e.ValueFrom.SecretKeyRef
		}
	}
	if ref == nil || ref.Key != "gossip-key" {
		t.Fatalf("the nodes get no gossip key from a Secret: %+v", ref)
	}
	for _, s := range m.secrets {
		if s.Name != ref.Name {
			continue
		}
		text, ok := s.StringData[ref.Key]
		if !ok {
			text = string(s.Data[ref.Key])
		}
		key, err := base64.StdEncoding.DecodeString(text)
		if err != nil || len(key) != 16 && len(key) != 24 && len(key) != 32 {
			t.Fatalf("Secret %s: gossip key %q is not base64 of 16, 24 or 32 bytes", s.Name, text)
		}
		return key
	}
	return nil // in a Secret the chart does not make (existingSecret)
}

// A cluster given no key gets a random one, generated once: an upgrade
// finds it in the cluster and keeps it.
func TestGossipKeyIsGeneratedAndKept(t *testing.T) {
	values := valueSets["cluster on RethinkDB"]
	objs, err := render(t, values)
	if err != nil {
		t.Fatal(err)
	}
	installed := typed(t, objs)
	first := gossipKey(t, installed)
	if len(first) != 32 {
		t.Fatalf("no key of 32 bytes generated: %d bytes", len(first))
	}
	again, err := render(t, values)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(gossipKey(t, typed(t, again)), first) {
		t.Fatal("two installs got the same key")
	}
	existing := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1",
		"kind":       "Secret",
		"metadata":   map[string]any{"name": "kronos-gossip-key", "namespace": "sync"},
		"data":       map[string]any{"gossip-key": base64.StdEncoding.EncodeToString([]byte(base64.StdEncoding.EncodeToString(first)))},
	}}
	objs, err = renderIn(t, values, []runtime.Object{existing})
	if err != nil {
		t.Fatal(err)
	}
	upgraded := typed(t, objs)
	if kept := gossipKey(t, upgraded); !bytes.Equal(kept, first) {
		t.Fatal("an upgrade changed the key")
	}
	// The pods need not roll for it: it never changes by itself.
	if a, b := installed.deployments[0].Spec.Template.Annotations, upgraded.deployments[0].Spec.Template.Annotations; a["checksum/secret"] != b["checksum/secret"] {
		t.Error("the generated key is part of the pods' checksum")
	}
}

// fakeCluster serves the chart's lookup calls from a fake API server.
type fakeCluster struct{ client *fake.FakeDynamicClient }

func (f fakeCluster) GetClientFor(apiVersion, kind string) (dynamic.NamespaceableResourceInterface, bool, error) {
	gvr, _ := meta.UnsafeGuessKindToResource(schema.FromAPIVersionAndKind(apiVersion, kind))
	return f.client.Resource(gvr), true, nil
}

func checkAutoscaling(t *testing.T, m manifests) {
	t.Helper()
	if len(m.hpas) != 1 {
		t.Fatal("no HorizontalPodAutoscaler")
	}
	var cpu, conns bool
	for _, metric := range m.hpas[0].Spec.Metrics {
		cpu = cpu || metric.Resource != nil && metric.Resource.Name == corev1.ResourceCPU
		conns = conns || metric.Pods != nil && metric.Pods.Metric.Name == "kronos_connections_open"
	}
	if !cpu || !conns {
		t.Errorf("autoscaling metrics: cpu %v, connections %v", cpu, conns)
	}
	if m.deployments[0].Spec.Replicas != nil {
		t.Error("replicas set although the HPA owns them")
	}
	if len(m.secrets) != 1 || m.secrets[0].StringData["store-url"] == "" || m.secrets[0].StringData["gossip-key"] != testGossipKey {
		t.Errorf("secret: %+v", m.secrets)
	}
}

// Value sets that cannot work are refused with a clear message.
func TestChartRefusesBadValues(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values map[string]any
		want   string
	}{
		{"embedded store with replicas", map[string]any{"replicaCount": 3}, "one replica only"},
		{"embedded store autoscaled", map[string]any{"autoscaling": map[string]any{"enabled": true}}, "cannot autoscale"},
		{"shared store without URL", map[string]any{"store": map[string]any{"type": "postgres"}}, "needs store.url"},
		{"grace period too short", map[string]any{"terminationGracePeriodSeconds": 20}, "must exceed"},
		{"unknown store", map[string]any{"store": map[string]any{"type": "mongodb"}}, "/store/type"},
		{"wrong URL scheme", map[string]any{"store": map[string]any{"type": "postgres", "url": "mysql://x"}}, "/store/url"},
		{"backup of a shared store", map[string]any{"store": map[string]any{"type": "postgres", "url": "postgres://db/k"},
			"backup": map[string]any{"enabled": true}}, "backup.enabled copies the embedded store"},
		{"alert delay not a duration", map[string]any{"prometheusRule": map[string]any{"enabled": true, "notReadyFor": "5 minutes"}},
			"/prometheusRule/notReadyFor"},
		{"unknown backup value", map[string]any{"backup": map[string]any{"enabled": true, "retention": 3}}, "/backup"},
		{"short gossip key", map[string]any{"cluster": map[string]any{"gossipKey": "c2hvcnQ="}}, "/cluster/gossipKey"},
		{"TLS without a Secret", map[string]any{"tls": map[string]any{"enabled": true}}, "tls.enabled needs tls.secretName"},
		{"TLS required but off", map[string]any{"tls": map[string]any{"required": true}}, "tls.required needs tls.enabled"},
		{"unknown TLS value", map[string]any{"tls": map[string]any{"enabled": true, "secretName": "s", "cert": "x"}}, "/tls"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(t, tc.values)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

// The plain manifests in deploy/kubernetes are the chart rendered; set
// KRONOS_UPDATE_MANIFESTS=1 to write them again after changing the chart.
// A committed manifest must hold no secret: the cluster's refers to a
// Secret the user creates.
var plainManifests = map[string]struct {
	values map[string]any
	note   string
}{
	"kronos-single.yaml": {values: map[string]any{}},
	"kronos-postgres.yaml": {
		values: map[string]any{
			"replicaCount": 3,
			"store":        map[string]any{"type": "postgres", "existingSecret": "kronos-store"},
			"cluster":      map[string]any{"existingSecret": "kronos-store"},
		},
		note: `# First create the Secret it refers to, with the store URL and a gossip key
# of your own (the nodes refuse to cluster without one):
#   kubectl create secret generic kronos-store -n sync \
#     --from-literal=store-url='postgres://…' \
#     --from-literal=gossip-key="$(head -c32 /dev/urandom | base64)"
`,
	},
}

func TestPlainManifestsMatchTheChart(t *testing.T) {
	for file, plain := range plainManifests {
		objs, err := render(t, plain.values)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range objs {
			if o.Kind == "Secret" {
				t.Errorf("%s would commit Secret %s", file, o.Name)
			}
		}
		var b strings.Builder
		fmt.Fprintf(&b, "# Rendered from helm/kronos by helm/chart_test.go; do not edit.\n")
		fmt.Fprintf(&b, "# Release \"kronos\" in namespace \"sync\"; values: %s\n", mustJSON(plain.values))
		b.WriteString(plain.note)
		for _, o := range objs {
			y, err := yaml.JSONToYAML(o.JSON)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "---\n# Source: %s\n%s", o.Source, y)
		}
		path := filepath.Join("..", "deploy", "kubernetes", file)
		if os.Getenv("KRONOS_UPDATE_MANIFESTS") != "" {
			if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (KRONOS_UPDATE_MANIFESTS=1 go test ./helm writes it)", err)
		}
		if string(got) != b.String() {
			t.Errorf("%s differs from the chart's rendering: KRONOS_UPDATE_MANIFESTS=1 go test ./helm", path)
		}
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// checkNetworkPolicy: on by default, it selects the nodes; the client port
// is open to all, the admin port only to named peers, gossip only to the
// release's own nodes.
func checkNetworkPolicy(t *testing.T, m manifests, clustered bool) {
	t.Helper()
	if len(m.policies) != 1 {
		t.Fatalf("%d NetworkPolicies, want 1 (on by default)", len(m.policies))
	}
	p := m.policies[0]
	pods := m.deployments[0].Spec.Template.Labels
	for k, v := range p.Spec.PodSelector.MatchLabels {
		if pods[k] != v {
			t.Errorf("the policy selects %s=%s, the pods have %q", k, v, pods[k])
		}
	}
	rules := map[string]networkingv1.NetworkPolicyIngressRule{}
	for _, r := range p.Spec.Ingress {
		for _, port := range r.Ports {
			rules[port.Port.String()] = r
		}
	}
	if r, ok := rules["client"]; !ok || len(r.From) != 0 {
		t.Errorf("the client port must be open to all: %+v", r)
	}
	if r, ok := rules["admin"]; !ok || len(r.From) == 0 {
		t.Errorf("the admin port must be limited to named peers: %+v", r)
	}
	r, ok := rules["gossip-tcp"]
	if clustered != ok {
		t.Errorf("gossip rule present %v, clustered %v", ok, clustered)
	}
	if ok && (len(r.From) != 1 || r.From[0].PodSelector == nil || r.From[0].NamespaceSelector != nil) {
		t.Errorf("gossip must come from the release's own pods only: %+v", r.From)
	}
	if _, udp := rules["gossip-udp"]; ok && !udp {
		t.Error("memberlist gossips over UDP too")
	}
}

// TLS: the node reads the certificate from the Secret's volume (not a
// subPath, which the kubelet would never update), at the paths its
// configuration names; PROXY protocol is passed on.
func TestChartTLSAndProxyProtocol(t *testing.T) {
	objs, err := render(t, map[string]any{
		"tls":           map[string]any{"enabled": true, "secretName": "kronos-tls", "required": true},
		"proxyProtocol": true,
	})
	if err != nil {
		t.Fatal(err)
	}
	m := typed(t, objs)
	data := m.configMaps[0].Data
	if data["KRONOS_TLS_REQUIRED"] != "true" || data["KRONOS_PROXY_PROTOCOL"] != "true" {
		t.Errorf("config: %v", data)
	}
	pod := m.deployments[0].Spec.Template.Spec
	var mountPath string
	for _, vm := range pod.Containers[0].VolumeMounts {
		if vm.Name == "tls" {
			if vm.SubPath != "" || !vm.ReadOnly {
				t.Errorf("TLS mount %+v: want read-only, no subPath", vm)
			}
			mountPath = vm.MountPath
		}
	}
	for _, v := range pod.Volumes {
		if v.Name == "tls" && (v.Secret == nil || v.Secret.SecretName != "kronos-tls") {
			t.Errorf("TLS volume %+v", v)
		}
	}
	if mountPath == "" || data["KRONOS_TLS_CERT"] != mountPath+"/tls.crt" || data["KRONOS_TLS_KEY"] != mountPath+"/tls.key" {
		t.Errorf("certificate %q and key %q not in the mounted Secret %q", data["KRONOS_TLS_CERT"], data["KRONOS_TLS_KEY"], mountPath)
	}

	objs, err = render(t, map[string]any{})
	if err != nil {
		t.Fatal(err)
	}
	for k := range typed(t, objs).configMaps[0].Data {
		if strings.HasPrefix(k, "KRONOS_TLS") || k == "KRONOS_PROXY_PROTOCOL" {
			t.Errorf("default config sets %s", k)
		}
	}
}
