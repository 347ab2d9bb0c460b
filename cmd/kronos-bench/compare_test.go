package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeRun is one run's results as kronos-bench writes them; round moves
// every figure so that the medians are known.
func fakeRun(server string, rate float64, round int) Results {
	k := float64(round) // rounds 1, 2, 3: the median is round 2's
	r := Results{
		Server: server, Rate: rate, Users: 10, Devices: 5, Conns: 50, WSShare: 1,
		WritesSent: int64(rate) * 10, Notifications: int64(rate) * 10 * 5,
		NotificationsPS: rate*5 - k, LatencyP50MS: k, LatencyP99MS: 10 * k,
		BytesPerConn: 1000 * k, NotificationBytes: 150, StormSeconds: k / 10,
		LoadSeconds: 10, ServerCPUSeconds: 5 * k, ServerCPUPerNotifUS: 10 * k, ToolCPUSeconds: 2 * k, ToolCPUPerNotifUS: 4 * k,
	}
	if server == serverKronos {
		r.WSShare = 0.5
	}
	if server == serverCentrifugo && rate == 400 && round == 3 {
		r.Notifications -= 7 // a round that lost some
		r.Errors = 1
	}
	return r
}

func TestCompareReport(t *testing.T) {
	in := t.TempDir()
	for _, server := range []string{serverCentrifugo, serverKronos} {
		for _, rate := range []float64{400, 200} {
			for _, round := range []int{3, 1, 2} { // any order
				r := fakeRun(server, rate, round)
				k := float64(round)
				r.Probe = &machineProbe{SyscallNS: 1000 + k, WakeRTTBusyUS: 20 * k, WakeRTTIdleUS: 100 * k, FdatasyncUS: 200 + k}
				data, _ := json.Marshal(r)
				name := fmt.Sprintf("%s-%.0f-r%d.json", server, rate, round)
				if err := os.WriteFile(filepath.Join(in, name), data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	out := filepath.Join(t.TempDir(), "compare")
	if err := runCompareReport([]string{"--in", in, "--out", out}); err != nil {
		t.Fatal(err)
	}
	table, err := os.ReadFile(out + ".md")
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, line := range strings.Split(string(table), "\n") {
		if strings.HasPrefix(line, "| ") && line[2] >= '0' && line[2] <= '9' && strings.Count(line, "|") == 13 { // the main table's rows
			rows = append(rows, line)
		}
	}
	// By rate, Kronos first; medians of the rounds, totals of the losses.
	want := []string{
		"| 200 | kronos | 50% | 1,000 | 998 | 2.00 | 20.00 | 2,000 B | 150 | 0.20 | 0 | 0 |",
		"| 200 | centrifugo | 100% | 1,000 | 998 | 2.00 | 20.00 | 2,000 B | 150 | 0.20 | 0 | 0 |",
		"| 400 | kronos | 50% | 2,000 | 1,998 | 2.00 | 20.00 | 2,000 B | 150 | 0.20 | 0 | 0 |",
		"| 400 | centrifugo | 100% | 2,000 | 1,998 | 2.00 | 20.00 | 2,000 B | 150 | 0.20 | 7 | 1 |",
	}
	if strings.Join(rows, "\n") != strings.Join(want, "\n") {
		t.Fatalf("table:\n%s\nwant rows:\n%s", table, strings.Join(want, "\n"))
	}
	if !strings.HasPrefix(string(table), "Medians of 3 round(s); 50 connections (5 devices per user).") {
		t.Fatalf("table header:\n%s", table)
	}
	// CPU in the load: the median round's, per notification and in cores.
	for _, row := range []string{"| 200 | kronos | 20.0 | 1.00 | 8.0 | 0.40 |", "| 400 | centrifugo | 20.0 | 1.00 | 8.0 | 0.40 |"} {
		if !strings.Contains(string(table), row) {
			t.Fatalf("table:\n%s\nwant the CPU row %s", table, row)
		}
	}
	// The probe's line per server: the median round's figures, then the range.
	for _, server := range []string{serverKronos, serverCentrifugo} {
		row := fmt.Sprintf("| %s | 6 | 1002.0 (1001.0–1003.0) | 40.0 (20.0–60.0) | 200.0 (100.0–300.0) | 202.0 (201.0–203.0) |", server)
		if !strings.Contains(string(table), row) {
			t.Fatalf("table:\n%s\nwant the probe row %s", table, row)
		}
	}
	png, err := os.ReadFile(out + ".png")
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) || len(png) < 10_000 {
		t.Fatalf("chart: %d bytes, %v", len(png), err)
	}
}

func TestCompareReportNoRuns(t *testing.T) {
	err := runCompareReport([]string{"--in", t.TempDir(), "--out", filepath.Join(t.TempDir(), "c")})
	if err == nil || !strings.Contains(err.Error(), "no results") {
		t.Fatalf("empty directory: %v", err)
	}
}

func TestMedianAndThousands(t *testing.T) {
	for _, c := range []struct {
		v    []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(c.v); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.v, got, c.want)
		}
	}
	for v, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 27300.4: "27,300", 1234567: "1,234,567", -4500: "-4,500"} {
		if got := thousands(v); got != want {
			t.Errorf("thousands(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestRedactSecret(t *testing.T) {
	got := strings.Join(redactSecret([]string{"--centrifugo-secret", "s1", "--rate", "5", "-centrifugo-secret=s2"}), " ")
	if got != "--centrifugo-secret REDACTED --rate 5 -centrifugo-secret=REDACTED" {
		t.Fatalf("redacted: %s", got)
	}
}

// compare.sh is not run by the tests (it installs Centrifugo and takes
// minutes even at small scale); bash at least parses it.
func TestCompareScriptParses(t *testing.T) {
	if out, err := exec.Command("bash", "-n", "compare.sh").CombinedOutput(); err != nil {
		t.Fatalf("bash -n compare.sh: %v\n%s", err, out)
	}
}
