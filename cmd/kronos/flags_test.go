package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestFlagsFallBackToEnvironment(t *testing.T) {
	t.Setenv("KRONOS_LISTEN", "127.0.0.1:7000")
	t.Setenv("KRONOS_MAX_TASKS_PER_USER", "5")
	t.Setenv("KRONOS_READ_TIMEOUT", "3s")
	cfg, err := parseServeFlags([]string{"--max-tasks-per-user", "6"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.node.Conn.Listen != "127.0.0.1:7000" || cfg.node.Conn.ReadTimeout != 3*time.Second {
		t.Fatalf("environment not applied: %+v", cfg.node.Conn)
	}
	if cfg.node.Limits.MaxTasksPerUser != 6 {
		t.Fatalf("a flag must win over the environment: %d", cfg.node.Limits.MaxTasksPerUser)
	}
	if cfg.node.DeviceTouchInterval != 10*time.Minute || cfg.storeOpts.DeviceIdleAfter != 30*time.Minute {
		t.Fatalf("device refresh %v, idle after %v; want 10m and 3 times that", cfg.node.DeviceTouchInterval, cfg.storeOpts.DeviceIdleAfter)
	}
	if cfg.store != "bolt:kronos-data/kronos.db" || cfg.adminListen != "127.0.0.1:9090" {
		t.Fatalf("defaults: %q %q", cfg.store, cfg.adminListen)
	}
}

func TestBadConfigurationListsEveryProblem(t *testing.T) {
	t.Setenv("KRONOS_WORKERS", "many")
	_, err := parseServeFlags([]string{"--rate-limit", "-1", "--max-message-bytes", "-1", "--engine", "frob", "--device-touch-interval", "-1s",
		"--cluster-key", "c2hvcnQ=", "--tls-required", "--memory-limit", "lots", "--fanout-shards", "-2"}, &bytes.Buffer{})
	if err == nil {
		t.Fatal("bad configuration accepted")
	}
	for _, want := range []string{"KRONOS_WORKERS", "--rate-limit -1", "--max-message-bytes -1", "--engine frob",
		"--cluster-key (5 bytes)", "--device-touch-interval -1s", "--tls-required true: needs a certificate", "--memory-limit: ", "--fanout-shards -2"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestVersionCommand(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"version"}, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "kronos ") {
		t.Fatalf("version: %d %q %q", code, out.String(), errOut.String())
	}
	if code := run([]string{"frob"}, &out, &errOut); code != 2 {
		t.Fatalf("unknown command exit %d", code)
	}
}

// Clustering without a key is refused, naming both ways out.
func TestClusteringNeedsAKey(t *testing.T) {
	var stderr bytes.Buffer
	if code := run([]string{"serve", "--join", "127.0.0.1:7946"}, &bytes.Buffer{}, &stderr); code != 2 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"--cluster-key", "KRONOS_CLUSTER_KEY", "--cluster-insecure", "KRONOS_CLUSTER_INSECURE"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("the error does not mention %s: %s", want, stderr.String())
		}
	}
	if _, err := parseServeFlags([]string{"--join", "127.0.0.1:7946", "--cluster-key", "c2l4dGVlbi1ieXRlLWtleS1mb3ItdGVzdHMtb25seSE="}, &bytes.Buffer{}); err != nil {
		t.Errorf("with a key: %v", err)
	}
	t.Setenv("KRONOS_CLUSTER_INSECURE", "true")
	cfg, err := parseServeFlags([]string{"--join", "127.0.0.1:7946"}, &bytes.Buffer{})
	if err != nil || !cfg.cluster.Insecure {
		t.Errorf("insecure: %v", err)
	}
	if _, err := parseServeFlags(nil, &bytes.Buffer{}); err != nil {
		t.Errorf("a single node needs no key: %v", err)
	}
}

// The memory budgets: from the environment, and a budget below what one
// message or one queue needs is refused in flag names.
func TestBudgetFlags(t *testing.T) {
	t.Setenv("KRONOS_INPUT_BUDGET_BYTES", "-1")
	cfg, err := parseServeFlags([]string{"--output-budget-bytes", "104857600"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.node.Conn.InputBudgetBytes != -1 || cfg.node.Conn.OutputBudgetBytes != 100<<20 {
		t.Fatalf("budgets %d, %d", cfg.node.Conn.InputBudgetBytes, cfg.node.Conn.OutputBudgetBytes)
	}
	_, err = parseServeFlags([]string{"--input-budget-bytes", "1024", "--output-budget-bytes", "1024"}, &bytes.Buffer{})
	for _, want := range []string{"--input-budget-bytes 1024", "--output-budget-bytes 1024"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %s", err, want)
		}
	}
}
