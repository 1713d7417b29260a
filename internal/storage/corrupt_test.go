package storage_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/storage"
)

const (
	corruptDirEnv = "BOREALIS_TEST_CORRUPT_DIR"
	childOpened   = "the node opened its store; reading every page"
)

// TestCorruptStoreStopsTheNode damages the middle of a node's table file
// (where the page images are; the segment metadata read at start sits at its
// beginning) and starts the node on it in a child process: the node opens,
// and reading the pages meets the damaged block, which stops the node (exit
// 1) with a message naming the file and the checksum mismatch, instead of
// serving, or acknowledging, from a store that no longer holds what it
// claimed.
func TestCorruptStoreStopsTheNode(t *testing.T) {
	if dir := os.Getenv(corruptDirEnv); dir != "" {
		readEveryPage(t, dir)
		return
	}
	dir := t.TempDir()
	n, c, addr := startNode(t, dir)
	w := newChainWriter(t, c, 1, 0, addr)
	for l := uint64(1); l <= 64; l++ {
		w.write(l, l, byte(l))
	}
	// Two more requests carry the read point and retain LSN past the 64
	// records; once they are materialized and collected, the child's
	// materializer has nothing to read, and only GetPage meets the damage.
	w.write(1, 65, 1)
	w.write(1, 66, 1)
	waitCollected(t, c, 65)
	if err := n.Compact(); err != nil {
		t.Fatal(err)
	}
	n.Close()
	tables, _ := filepath.Glob(filepath.Join(dir, "pebble", "*.sst"))
	if len(tables) == 0 {
		t.Fatal("no table file after compaction")
	}
	for _, table := range tables {
		f, err := os.OpenFile(table, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		// The index and footer are at the end, so the file still opens.
		st, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(bytes.Repeat([]byte{0x5a}, 64), st.Size()/2); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestCorruptStoreStopsTheNode$", "-test.v")
	cmd.Env = append(os.Environ(), corruptDirEnv+"="+dir)
	out, err := cmd.CombinedOutput()
	exit, ok := err.(*exec.ExitError)
	if !ok || exit.ExitCode() != 1 {
		t.Fatalf("the node on a damaged store ended with %v, want exit 1; output:\n%s", err, out)
	}
	for _, want := range []string{childOpened, "on-disk corruption in " + filepath.Join(dir, "pebble"), "checksum mismatch"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "stack trace") {
		t.Fatalf("the corruption report carries stack traces:\n%s", out)
	}
	if strings.Contains(string(out), "--- PASS") {
		t.Fatalf("every page was served from the damaged store:\n%s", out)
	}
}

// readEveryPage runs in the child process: it opens the node on dir and
// reads every page written by the parent.
func readEveryPage(t *testing.T, dir string) {
	_, c, _ := startNode(t, dir)
	fmt.Println(childOpened)
	for p := uint64(1); p <= 64; p++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c.GetPage(ctx, &pb.GetPageRequest{Volume: 1, Pg: 0, Page: p, ReadLsn: 66, Epoch: 1})
		cancel()
	}
}

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
