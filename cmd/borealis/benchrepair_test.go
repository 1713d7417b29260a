package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// A short real run on its own cluster (`up --nodes-per-az 3`, real
// processes, SIGKILL): the JSON has the shape, the repair started
// and ended, it copied bytes, and no commit of the load failed. No timing is
// checked.
func TestBenchRepairRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a whole cluster and kills a storage node")
	}
	bin := filepath.Join(t.TempDir(), "borealis")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	dir, err := os.MkdirTemp("", "brp-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "bench", "repair", "--json", "--size", "4MiB", "--pg-size", "1MiB",
		"--before", "2s", "--repair-after", "2s", "--base-port", "7560", "--dir", dir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bench repair: %v\n%s\n%s", err, stdout.String(), stderr.String())
	}
	var got map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("%v: %s", err, stdout.String())
	}
	for _, k := range []string{"size_bytes", "repair_start_s", "repair_done_s", "hydration_mb_per_s", "raw_copy_mb_per_s",
		"commit_p50_before_ms", "commit_p99_before_ms", "commit_p50_during_ms", "commit_p99_during_ms"} {
		if _, ok := got[k].(float64); !ok {
			t.Errorf("%s is %v, want a number", k, got[k])
		}
	}
	var rep repairBenchReport
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	switch {
	case rep.SizeBytes != 4<<20:
		t.Errorf("size_bytes %d, want %d", rep.SizeBytes, 4<<20)
	case rep.PGs < 2:
		t.Errorf("the victim held %d PGs of 1 MiB in a 4 MiB volume", rep.PGs)
	case rep.RepairStartS <= 0 || rep.RepairDoneS < rep.RepairStartS || rep.VerifiedS < rep.RepairDoneS:
		t.Errorf("repair started %.2f s, done %.2f s, verified %.2f s after the kill", rep.RepairStartS, rep.RepairDoneS, rep.VerifiedS)
	case rep.HydratedBytes == 0 || rep.RawCopyMBPerS <= 0:
		t.Errorf("hydrated %d bytes, raw copy %.1f MB/s", rep.HydratedBytes, rep.RawCopyMBPerS)
	case rep.FailedCommits != 0:
		t.Errorf("%d commits of the load failed during the repair", rep.FailedCommits)
	case rep.CommitsBefore == 0:
		t.Errorf("no commit of the load before the kill")
	}
}
