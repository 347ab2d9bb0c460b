package helm

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kronos-sync/kronos-server/internal/pgtest"
	"github.com/kronos-sync/kronos-server/internal/rethinktest"
	"github.com/kronos-sync/kronos-server/node/client"
)

// A query's use of a metric: the metric and the labels it matches on.
type use struct {
	metric string
	labels []string
	where  string // the panel or alert, for the failure message
}

var (
	// Grafana's variables ($pod, ${datasource}, $__rate_interval).
	grafanaVar = regexp.MustCompile(`\$\{[^}]*\}|\$\w+`)
	// String literals, range and subquery brackets, numbers.
	stringLit = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	brackets  = regexp.MustCompile(`\[[^\]]*\]`)
	number    = regexp.MustCompile(`\b(?:\d*\.\d+|\d+)(?:[eE][+-]?\d+)?\b`)
	// Label lists of aggregations and vector matching: label names.
	labelList = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	selector  = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}`)
	matcher   = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
	ident     = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	keywords  = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true,
		"group_left": true, "group_right": true}
)

// metricsOf returns the metrics a PromQL expression reads, with the labels
// its selectors match on. It is a small lexer, enough for the queries
// here: names followed by "(" are functions, label lists and label
// matchers are not metrics.
func metricsOf(expr, where string) []use {
	e := grafanaVar.ReplaceAllString(expr, "1m")
	e = stringLit.ReplaceAllString(e, `""`) // a matcher's value may hold braces
	var uses []use
	e = selector.ReplaceAllStringFunc(e, func(s string) string {
		m := selector.FindStringSubmatch(s)
		u := use{metric: m[1], where: where}
		for _, lm := range matcher.FindAllStringSubmatch(m[2], -1) {
			u.labels = append(u.labels, lm[1])
		}
		if u.metric != "" {
			uses = append(uses, u)
		}
		return " "
	})
	e = brackets.ReplaceAllString(e, " ")
	e = labelList.ReplaceAllString(e, " ")
	e = number.ReplaceAllString(e, " ")
	for _, loc := range ident.FindAllStringIndex(e, -1) {
		name := e[loc[0]:loc[1]]
		if rest := strings.TrimLeft(e[loc[1]:], " \t\n"); strings.HasPrefix(rest, "(") || keywords[name] {
			continue // a function, an aggregation, an operator
		}
		uses = append(uses, use{metric: name, where: where})
	}
	return uses
}

// queryUses collects every metric use of the dashboard and the alerts
// (the rule rendered with every alert on).
func queryUses(t *testing.T) []use {
	t.Helper()
	var uses []use
	b, err := os.ReadFile(filepath.Join(chartDir, "dashboards", "kronos.json"))
	if err != nil {
		t.Fatal(err)
	}
	d := loadDashboard(t, b)
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			uses = append(uses, metricsOf(tg.Expr, "panel "+p.Title)...)
		}
	}
	labelValues := regexp.MustCompile(`^label_values\((.*),\s*(\w+)\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(map[string]any)["query"].(string)
		m := labelValues.FindStringSubmatch(q)
		if m == nil {
			t.Fatalf("variable %s: query %q is not label_values(metric, label)", v.Name, q)
		}
		for _, u := range metricsOf(m[1], "variable "+v.Name) {
			u.labels = append(u.labels, m[2])
			uses = append(uses, u)
		}
	}
	objs, err := render(t, map[string]any{"prometheusRule": map[string]any{"enabled": true}, "config": map[string]any{"maxConns": 100}})
	if err != nil {
		t.Fatal(err)
	}
	rules := typed(t, objs).rules
	if len(rules) != 1 {
		t.Fatal("no PrometheusRule rendered")
	}
	for _, g := range rules[0].Spec.Groups {
		for _, r := range g.Rules {
			uses = append(uses, metricsOf(r.Expr.String(), "alert "+r.Alert)...)
		}
	}
	return uses
}

// Labels Prometheus adds to every series it scrapes.
var targetLabels = []string{"job", "namespace", "pod", "instance"}

func TestMetricsOfLexer(t *testing.T) {
	got := metricsOf(`histogram_quantile(0.99, sum by (le, pod) (rate(kronos_x_bucket{namespace="$namespace", pod=~"a|b", op!="{x}"}[$__rate_interval]))) / on (pod) group_left max(process_max_fds) > 1e3 and kronos_y`, "t")
	var names []string
	for _, u := range got {
		names = append(names, u.metric+fmt.Sprint(u.labels))
	}
	if want := []string{"kronos_x_bucket[namespace pod op]", "process_max_fds[]", "kronos_y[]"}; !slices.Equal(names, want) {
		t.Fatalf("lexed %q, want %q", names, want)
	}
}

// Every metric the dashboard and the alerts name is one a node exports,
// with the labels they match on: scraped from real nodes on each store
// (the feed metrics exist on shared stores only, the cluster metrics with
// --join), after traffic that makes every labelled series appear.
func TestDashboardAndAlertsNameExportedMetrics(t *testing.T) {
	uses := queryUses(t)
	if len(uses) < 40 {
		t.Fatalf("only %d metric uses found: the lexer lost some", len(uses))
	}
	bin := buildKronos(t)
	exported := map[string]map[string]bool{} // metric → its labels
	nodes := []struct {
		name string
		args func(t *testing.T) []string
		// wait for these: series a node exports a moment after it starts
		wait []string
	}{
		{"bolt", func(t *testing.T) []string { return []string{"--store", "bolt:" + filepath.Join(t.TempDir(), "k.db")} }, nil},
		{"postgres cluster", func(t *testing.T) []string { return clusterArgs(t, pgtest.URL(t)) }, []string{"kronos_cluster_members"}},
		{"rethinkdb cluster", func(t *testing.T) []string { return clusterArgs(t, rethinktest.URL(t)) }, []string{"kronos_cluster_members"}},
	}
	for _, n := range nodes {
		t.Run(n.name, func(t *testing.T) {
			admin, addr := startNode(t, bin, n.args(t)...)
			exercise(t, addr)
			for metric, labels := range scrape(t, admin, append(n.wait, "kronos_connections_closed_total")...) {
				if exported[metric] == nil {
					exported[metric] = map[string]bool{}
				}
				for _, l := range labels {
					exported[metric][l] = true
				}
			}
		})
	}
	if t.Failed() {
		return
	}
	for _, u := range uses {
		labels, ok := exported[u.metric]
		if !ok {
			t.Errorf("%s names %s, which no node exports", u.where, u.metric)
			continue
		}
		for _, l := range u.labels {
			if !labels[l] && !slices.Contains(targetLabels, l) {
				t.Errorf("%s matches %s on label %q, which it does not have", u.where, u.metric, l)
			}
		}
	}
}

// clusterArgs runs a node on a shared store in a cluster of its own (it
// joins itself), so that the cluster metrics exist.
func clusterArgs(t *testing.T, store string) []string {
	t.Helper()
	gossip := freeGossipPort(t)
	return []string{"--store", store, "--cluster-bind", gossip, "--join", gossip, "--cluster-insecure"}
}

// freeGossipPort finds a loopback port free for both TCP and UDP.
func freeGossipPort(t *testing.T) string {
	t.Helper()
	for range 50 {
		tl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := tl.Addr().String()
		ul, err := net.ListenPacket("udp", addr)
		tl.Close()
		if err == nil {
			ul.Close()
			return addr
		}
	}
	t.Fatal("no port free for both TCP and UDP")
	return ""
}

func buildKronos(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kronos")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/kronos-sync/kronos-server/cmd/kronos").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startNode runs `kronos serve` on loopback ports and returns its admin and
// client addresses once it accepts clients.
func startNode(t *testing.T, bin string, args ...string) (admin, addr string) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	started := make(chan [2]string, 1)
	var logMu sync.Mutex
	var log strings.Builder
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		var clientAddr string
		for sc.Scan() {
			logMu.Lock()
			log.WriteString(sc.Text() + "\n")
			logMu.Unlock()
			var ev map[string]any
			if json.Unmarshal(sc.Bytes(), &ev) != nil {
				continue
			}
			switch ev["message"] {
			case "accepting clients":
				clientAddr, _ = ev["addr"].(string)
			case "kronos started":
				a, _ := ev["admin"].(string)
				started <- [2]string{a, clientAddr}
			}
		}
		io.Copy(io.Discard, stderr)
		cmd.Wait()
	}()
	select {
	case a := <-started:
		return a[0], a[1]
	case <-done:
	case <-time.After(30 * time.Second):
	}
	logMu.Lock()
	defer logMu.Unlock()
	t.Fatalf("the node did not start:\n%s", log.String())
	return "", ""
}

// exercise makes every labelled series appear: logins (new user, new
// device, existing, refused), each request kind, refusals and a protocol
// error that closes the connection.
func exercise(t *testing.T, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.TCP, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	login, err := c.Login("", "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range []string{
		`{"type":"write-all","tasks":[{"id":1},{"id":2}],"version":1}`,
		`{"type":"create","task":{"id":3},"version":2}`,
		`{"type":"update","task":{"id":3,"done":true},"version":3}`,
		`{"type":"delete","task_id":1,"version":4}`,
		`{"type":"create","task":{"id":3},"version":5}`, // refused: exists
		`{"type":"read-all"}`,
	} {
		if err := c.SendRaw([]byte(req)); err != nil {
			t.Fatal(err)
		}
	}
	for {
		m, err := c.Next(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if m.Type() == "read-all" {
			break
		}
	}
	other, err := client.Dial(ctx, client.WebSocket, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Login("no-such-user", "", 5*time.Second); err == nil {
		t.Fatal("an unknown user logged in")
	}
	if _, err := other.Login(login.Str("user_id"), "", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	bad, err := client.Dial(ctx, client.TCP, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	bad.SendRaw([]byte("not json"))
	if _, err := bad.Next(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := bad.NextRaw(5 * time.Second); err == nil {
		t.Fatal("a broken raw stream was not closed")
	}
}

// scrape reads /metrics once it has the wanted metrics (the node counts a
// close, or publishes its members, a moment after the fact), and returns
// every metric with its label names.
func scrape(t *testing.T, admin string, want ...string) map[string][]string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		out := map[string][]string{}
		for _, line := range strings.Split(string(body), "\n") {
			if line == "" || line[0] == '#' {
				continue
			}
			name, rest, _ := strings.Cut(line, "{")
			if i := strings.IndexByte(name, ' '); i >= 0 {
				name, rest = name[:i], ""
			}
			for _, m := range regexp.MustCompile(`(\w+)="`).FindAllStringSubmatch(rest, -1) {
				out[name] = append(out[name], m[1])
			}
			if _, ok := out[name]; !ok {
				out[name] = nil
			}
		}
		missing := slices.ContainsFunc(want, func(m string) bool { _, ok := out[m]; return !ok })
		if !missing || time.Now().After(deadline) {
			return out
		}
		time.Sleep(50 * time.Millisecond) // polling /metrics until the close is counted
	}
}
