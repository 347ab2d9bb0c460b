package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// send-floor end to end, small: the reader process receives every byte
// written, and the figures are taken. What they are is the machine's
// business, not the test's.
func TestSendFloor(t *testing.T) {
	dir := t.TempDir()
	bench := build(t, dir, "kronos-bench", ".")
	out := filepath.Join(dir, "floor.json")
	if msg, err := exec.Command(bench, "send-floor", "--conns", "50", "--rate", "2000", "--duration", "300ms",
		"--bytes", "100", "--out", out).CombinedOutput(); err != nil {
		t.Fatalf("send-floor: %v\n%s", err, msg)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var r floorResult
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	if r.Conns != 50 || r.Bytes != 100 || r.Sent == 0 || r.WouldBlock != 0 {
		t.Fatalf("result: %+v", r)
	}
	if r.Received != r.Sent*100 {
		t.Fatalf("%d messages of 100 bytes sent, %d bytes received", r.Sent, r.Received)
	}
	if r.SenderUserUS+r.SenderSystemUS <= 0 || r.Probe == nil {
		t.Fatalf("no figures: %+v", r)
	}
}

func TestSendFloorRefusesBadFlags(t *testing.T) {
	for _, args := range [][]string{{"--conns", "0"}, {"--rate", "-1"}, {"--duration", "0s"}, {"--bytes", "0"}} {
		if err := runSendFloor(args); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}
