package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
)

// TestGoAPIExample builds the README's database/sql example and runs it
// twice against a control plane and six storage nodes (no writer process):
// each run takes the writer lease, recovers the volume and commits three
// rows, and the second run sees the first one's.
func TestGoAPIExample(t *testing.T) {
	src, err := os.ReadFile("../examples/gosql/main.go")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), string(src)) {
		t.Fatal("README.md does not show examples/gosql/main.go as it is")
	}
	exe := filepath.Join(t.TempDir(), "gosql")
	if out, err := exec.Command("go", "build", "-o", exe, "../examples/gosql").CombinedOutput(); err != nil {
		t.Fatalf("build the example: %v\n%s", err, out)
	}

	cl := cluster.New(binary, t.TempDir())
	t.Cleanup(func() { cl.Stop(5 * time.Second) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl.ControlAddr = cpFreeAddr(t)
	if err := cl.StartControl(ctx, cl.ControlAddr); err != nil {
		t.Fatal(err)
	}
	if err := cl.StartStorageNodes(ctx, 6); err != nil {
		t.Fatal(err)
	}
	ctl := cpDial(t, cl.ControlAddr)
	cpWaitNodes(t, ctl, 10*time.Second, "all six up", func(m map[string]string) bool { return cpUp(m) == 6 })
	if _, err := ctl.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "main", PageSize: 4096, PgSizeBytes: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"greetings: 3 rows", "greetings: 6 rows"} {
		out, err := exec.Command(exe, "--control", cl.ControlAddr).CombinedOutput()
		if err != nil || !strings.Contains(string(out), want) {
			t.Fatalf("run %d of the example: %v\n%s", i+1, err, out)
		}
	}
	w, err := ctl.GetVolume(ctx, &pb.GetVolumeRequest{Name: "main"})
	if err != nil {
		t.Fatal(err)
	}
	if w.VolumeEpoch != 2 {
		t.Fatalf("volume epoch %d after two writers, want 2", w.VolumeEpoch)
	}
}
