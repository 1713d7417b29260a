package e2e

import (
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBenchCommitJSON runs `borealis bench commit --json` end to end (it
// starts its own six node processes) and checks the figures it reports.
func TestBenchCommitJSON(t *testing.T) {
	cmd := exec.Command(binary, "bench", "commit", "--json", "--duration", "300ms", "--committers", "1,4", "--dir", t.TempDir())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bench commit: %v\n%s", err, out)
	}
	var rep struct {
		Floor       float64 `json:"floor_fsync_p50_ms"`
		QuorumFloor float64 `json:"quorum_floor_p50_ms"`
		Levels      []struct {
			Committers  int     `json:"committers"`
			CommitsPerS float64 `json:"commits_per_s"`
			P50         float64 `json:"p50_ms"`
			P99         float64 `json:"p99_ms"`
			NetBytes    float64 `json:"net_bytes_per_commit"`
			Fsyncs      float64 `json:"fsyncs_per_commit"`
			CPU         struct {
				Writer         float64 `json:"writer"`
				StoragePerNode float64 `json:"storage_per_node"`
				Storage        float64 `json:"storage"`
				Client         float64 `json:"client"`
				Total          float64 `json:"total"`
			} `json:"cpu_us_per_txn"`
			StorageByNode map[string]float64 `json:"storage_cpu_us_per_txn_by_node"`
			Disk          float64            `json:"disk_bytes_per_txn_per_node"`
			CtxSwitches   float64            `json:"context_switches_per_txn"`
		} `json:"levels"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("bench output is not the JSON object: %v\n%s", err, out)
	}
	if rep.Floor <= 0 || rep.QuorumFloor <= 0 || len(rep.Levels) != 2 {
		t.Fatalf("report: %s", out)
	}
	for i, l := range rep.Levels {
		if l.Committers != []int{1, 4}[i] || l.CommitsPerS <= 0 || l.P50 <= 0 || l.P99 < l.P50 || l.NetBytes < 200*4 || l.Fsyncs <= 0 {
			t.Fatalf("level %d is implausible: %+v", i, l)
		}
		// The benchmark is the writer; six node processes did the storing,
		// and a synced commit writes to every node's disk.
		c := l.CPU
		if c.Writer <= 0 || c.StoragePerNode <= 0 || len(l.StorageByNode) != 6 || c.Client != 0 ||
			math.Abs(c.Storage-6*c.StoragePerNode) > 1e-6*c.Storage || math.Abs(c.Total-(c.Writer+c.Storage)) > 1e-6*c.Total || l.Disk <= 0 || l.CtxSwitches <= 0 {
			t.Fatalf("level %d's costs are implausible: %+v\n%s", i, l, out)
		}
	}
}

// TestStorageCommandRefusesBadSetups checks the storage command's errors.
func TestStorageCommandRefusesBadSetups(t *testing.T) {
	dir := t.TempDir()
	run := func(args ...string) string {
		out, err := exec.Command(binary, append([]string{"storage"}, args...)...).CombinedOutput()
		if err == nil {
			t.Fatalf("storage %v succeeded; want an error", args)
		}
		return string(out)
	}
	if out := run("--id", "s1"); !strings.Contains(out, "needs --id, --az, --listen and --dir") {
		t.Fatalf("missing flags: %s", out)
	}
	// A directory that belongs to another node is refused.
	if err := os.WriteFile(filepath.Join(dir, "node.json"), []byte(`{"id":"s2","az":"b"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := run("--id", "s1", "--az", "a", "--listen", "127.0.0.1:0", "--dir", dir); !strings.Contains(out, "belongs to node s2 in AZ b") {
		t.Fatalf("foreign directory: %s", out)
	}
	// A port that is taken is refused.
	addr, err := freeListener(t)
	if err != nil {
		t.Fatal(err)
	}
	if out := run("--id", "s9", "--az", "a", "--listen", addr, "--dir", t.TempDir()); !strings.Contains(out, "listen on "+addr) {
		t.Fatalf("taken port: %s", out)
	}
}

// TestCorruptFilesAreRefusedClearly: a corrupt identity file of a storage
// node, or a corrupt addresses file of an `up` directory, stops the command
// with an error that names the file, and the file is left as it was.
func TestCorruptFilesAreRefusedClearly(t *testing.T) {
	dir := t.TempDir()
	garbage := []byte("{not json")
	if err := os.WriteFile(filepath.Join(dir, "node.json"), garbage, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(binary, "storage", "--id", "s1", "--az", "a", "--listen", "127.0.0.1:0", "--dir", dir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "node.json is corrupt") {
		t.Fatalf("storage on a corrupt node.json: %v\n%s", err, out)
	}
	upDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(upDir, "addresses.json"), garbage, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(binary, "up", "--dir", upDir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "addresses.json is corrupt") {
		t.Fatalf("up on a corrupt addresses.json: %v\n%s", err, out)
	}
	for _, p := range []string{filepath.Join(dir, "node.json"), filepath.Join(upDir, "addresses.json")} {
		if b, _ := os.ReadFile(p); string(b) != string(garbage) {
			t.Fatalf("%s was changed", p)
		}
	}
}
