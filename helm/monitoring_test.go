package helm

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// enabled reports whether values turn on the section's "enabled".
func enabled(values map[string]any, section string) bool {
	m, _ := values[section].(map[string]any)
	on, _ := m["enabled"].(bool)
	return on
}

// The backup CronJob runs `kronos backup` against the admin Service into a
// volume of its own, never at the same time twice, and its pods are not
// taken for nodes by any Service or the Deployment.
func checkBackup(t *testing.T, m manifests, values map[string]any) {
	t.Helper()
	if !enabled(values, "backup") {
		if len(m.cronJobs) != 0 {
			t.Error("a backup CronJob although backup.enabled is false")
		}
		return
	}
	if len(m.cronJobs) != 1 {
		t.Fatalf("%d backup CronJobs", len(m.cronJobs))
	}
	cj := m.cronJobs[0]
	if cj.Spec.ConcurrencyPolicy != "Forbid" || cj.Spec.Schedule == "" {
		t.Errorf("backup schedule %q, concurrency %q", cj.Spec.Schedule, cj.Spec.ConcurrencyPolicy)
	}
	pod := cj.Spec.JobTemplate.Spec.Template
	c := pod.Spec.Containers[0]
	admin := m.services["kronos-admin"]
	if admin.Spec.Ports[0].Port != 9090 {
		t.Fatalf("admin Service: %+v", admin.Spec.Ports)
	}
	want := []string{"backup", "--admin", "kronos-admin.sync.svc:9090", "--out", "/backup/", "--keep", "5"}
	if !slices.Equal(c.Args, want) {
		t.Errorf("backup args %q, want %q", c.Args, want)
	}
	if c.Image != m.deployments[0].Spec.Template.Spec.Containers[0].Image {
		t.Errorf("backup image %s is not the node's", c.Image)
	}
	if len(c.VolumeMounts) != 1 || c.VolumeMounts[0].MountPath != "/backup" {
		t.Errorf("backup mounts %+v", c.VolumeMounts)
	}
	claim := pod.Spec.Volumes[0].PersistentVolumeClaim
	if claim == nil || !slices.ContainsFunc(m.pvcs, func(p corev1.PersistentVolumeClaim) bool { return p.Name == claim.ClaimName }) ||
		claim.ClaimName == "kronos-data" {
		t.Errorf("backup volume %+v: want a claim of its own, rendered", pod.Spec.Volumes)
	}
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || pod.Spec.SecurityContext.RunAsNonRoot == nil {
		t.Errorf("backup pod security: %+v %+v", sc, pod.Spec.SecurityContext)
	}
	podLabels := labels.Set(pod.Labels)
	for name, svc := range m.services {
		if labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) {
			t.Errorf("Service %s selects the backup pods: clients would be sent to them", name)
		}
	}
	if labels.SelectorFromSet(m.deployments[0].Spec.Selector.MatchLabels).Matches(podLabels) {
		t.Error("the Deployment's selector matches the backup pods")
	}
}

// The dashboard ConfigMap carries the sidecar's label and the dashboard
// file as it is in the chart, valid JSON with a query in every panel.
func checkDashboards(t *testing.T, m manifests, values map[string]any) {
	t.Helper()
	if !enabled(values, "grafanaDashboard") {
		if len(m.dashboards) != 0 {
			t.Error("a dashboard although grafanaDashboard.enabled is false")
		}
		return
	}
	if len(m.dashboards) != 1 {
		t.Fatalf("%d dashboard ConfigMaps", len(m.dashboards))
	}
	cm := m.dashboards[0]
	if cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("dashboard labels %v lack grafana_dashboard: \"1\"", cm.Labels)
	}
	if ns, _ := values["grafanaDashboard"].(map[string]any)["namespace"].(string); ns != "" && cm.Namespace != ns {
		t.Errorf("dashboard in namespace %q, want %q", cm.Namespace, ns)
	}
	file, err := os.ReadFile(filepath.Join(chartDir, "dashboards", "kronos.json"))
	if err != nil {
		t.Fatal(err)
	}
	if got := cm.Data["kronos.json"]; strings.TrimSpace(got) != strings.TrimSpace(string(file)) {
		t.Error("the ConfigMap's dashboard differs from dashboards/kronos.json")
	}
	d := loadDashboard(t, []byte(cm.Data["kronos.json"]))
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard uid %q title %q", d.UID, d.Title)
	}
	for _, p := range d.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
	}
}

// dashboard is what the tests read of a Grafana dashboard.
type dashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		Title   string `json:"title"`
		Type    string `json:"type"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

func loadDashboard(t *testing.T, b []byte) dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	return d
}

// wantAlerts are the alerts the rule must carry; the connection limit's
// only when config.maxConns is set.
var wantAlerts = []string{"KronosNodeNotReady", "KronosFeedDown", "KronosSlowConsumerDrops", "KronosResyncsRising",
	"KronosDescriptorsNearLimit", "KronosConnectionsRefused", "KronosStoreLatencyHigh", "KronosStoreErrors"}

// The PrometheusRule (decoded strictly into the operator's type) carries
// every alert, scoped to the release's nodes, with a severity and
// Prometheus's own templates kept literal in the annotations.
func checkRules(t *testing.T, m manifests, values map[string]any) {
	t.Helper()
	if !enabled(values, "prometheusRule") {
		if len(m.rules) != 0 {
			t.Error("a PrometheusRule although prometheusRule.enabled is false")
		}
		return
	}
	if len(m.rules) != 1 {
		t.Fatalf("%d PrometheusRules", len(m.rules))
	}
	want := slices.Clone(wantAlerts)
	if cfg, _ := values["config"].(map[string]any); cfg["maxConns"] != nil {
		want = append(want, "KronosConnectionsNearLimit")
	}
	got := map[string]bool{}
	for _, g := range m.rules[0].Spec.Groups {
		for _, r := range g.Rules {
			got[r.Alert] = true
			expr := r.Expr.String()
			if !strings.Contains(expr, `job="kronos-admin", namespace="sync"`) {
				t.Errorf("%s: %s does not pick the release's nodes", r.Alert, expr)
			}
			if r.Labels["severity"] == "" || !strings.Contains(r.Annotations["summary"], "{{ $labels.pod }}") ||
				r.Annotations["description"] == "" {
				t.Errorf("%s: labels %v, annotations %v", r.Alert, r.Labels, r.Annotations)
			}
		}
	}
	if names := slices.Sorted(maps.Keys(got)); !slices.Equal(names, slices.Sorted(slices.Values(want))) {
		t.Errorf("alerts %q, want %q", names, slices.Sorted(slices.Values(want)))
	}
}
