package storage_test

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/borealis-db/borealis/internal/storage"
)

// The damaged-store cases (a node that met on-disk corruption goes on
// serving what it can, refuses writes, and moves its store aside when
// opened again) are in scrub_test.go: the node no longer stops the
// process, so they run in process.

const inUseDirEnv = "BOREALIS_TEST_IN_USE_DIR"

// A second node (another process) on a directory in use is refused, saying
// so.
func TestDirectoryInUseIsRefused(t *testing.T) {
	if dir := os.Getenv(inUseDirEnv); dir != "" {
		_, err := storage.Open(storage.Config{ID: "s1", AZ: "a", Dir: dir})
		fmt.Println("open:", err)
		return
	}
	dir := t.TempDir()
	startNode(t, dir)
	cmd := exec.Command(os.Args[0], "-test.run=^TestDirectoryInUseIsRefused$")
	cmd.Env = append(os.Environ(), inUseDirEnv+"="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "open: storage: "+dir+" is in use by another running storage node") {
		t.Fatalf("second node on %s: %v\n%s", dir, err, out)
	}
}
