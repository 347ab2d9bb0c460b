package main

import (
	"bytes"
	"testing"
)

// TestMachineProbe runs the probe on this machine: every figure it could
// take is there (the wake round trips need two CPUs this process may use).
// What the figures are is the machine's business, not the test's.
func TestMachineProbe(t *testing.T) {
	p, err := probeMachine()
	if err != nil {
		t.Fatal(err)
	}
	t.Log(p)
	if p.SyscallNS <= 0 || p.FdatasyncUS <= 0 {
		t.Fatalf("probe: %+v", p)
	}
	cpus, err := allowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	if got := p.WakeRTTBusyUS > 0 && p.WakeRTTIdleUS > 0; got != (len(cpus) >= 2) {
		t.Fatalf("%d CPUs allowed, wake round trips %v and %v", len(cpus), p.WakeRTTBusyUS, p.WakeRTTIdleUS)
	}
}

// Results from before the probe existed add no probe section.
func TestProbeSummaryWithoutProbes(t *testing.T) {
	var b bytes.Buffer
	if err := writeProbeSummary(&b, []Results{fakeRun(serverKronos, 200, 1)}); err != nil {
		t.Fatal(err)
	}
	if b.Len() != 0 {
		t.Fatalf("no run has a probe, yet: %q", b.String())
	}
}
