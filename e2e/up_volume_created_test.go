package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/wait"
)

// TestUpSaysItCreatedTheVolume: `up` says when it creates the volume
// main, new and empty: on a new cluster, and on a resumed one after `volume
// delete main`, where it also says that the deleted data is not back. A
// resumed cluster with its volume says nothing of the kind.
func TestUpSaysItCreatedTheVolume(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	stop := func(u *upProcess) {
		t.Helper()
		u.cmd.Process.Signal(syscall.SIGINT)
		wait.For(t, 30*time.Second, "borealis up to stop", func() bool {
			select {
			case <-u.end:
				return true
			default:
				return false
			}
		})
	}
	// No replica: one would be promoted once the writer's lease is gone,
	// and hold the volume.
	u := startUp(t, dir, "--base-port", fmt.Sprint(freeBasePort(t)), "--replicas", "0")
	f := u.waitReady()
	if out := u.output(); !strings.Contains(out, "created volume main (id 1): it is new and empty") || strings.Contains(out, "note:") {
		t.Fatalf("up on a new cluster printed:\n%s", out)
	}
	cliOK(t, "sql", "--dir", dir, "-e", "CREATE TABLE t(k); INSERT INTO t VALUES (1)")

	// The writer stops holding the volume, and main is deleted. up starts
	// a database instance that exits again at once (it would take the
	// lease back), so the writer is paused instead: up does not restart a
	// process that still runs, and the paused writer's lease runs out its
	// TTL. up's stop below resumes it and ends it with the rest.
	w, _ := f.Find("writer")
	if err := syscall.Kill(w.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var deleted string
	wait.For(t, 20*time.Second, "volume delete main to succeed", func() bool {
		out, _, code := runCLI(t, "", "volume", "delete", "main", "--dir", dir)
		deleted = out
		return code == 0
	})
	if !strings.Contains(deleted, "volume main deleted (id 1") {
		t.Fatalf("volume delete main printed %q", deleted)
	}
	if strings.Contains(u.output(), "!! writer (writer") {
		t.Fatalf("up restarted the paused writer:\n%s", u.output())
	}
	stop(u)

	u2 := startUp(t, dir)
	u2.waitReady()
	out := u2.output()
	for _, want := range []string{"resuming the cluster", "created volume main (id 2): it is new and empty", "had no volume main: it was deleted", "A deleted volume's data is not brought back"} {
		if !strings.Contains(out, want) {
			t.Fatalf("up after volume delete main printed no %q:\n%s", want, out)
		}
	}
	if _, errOut, code := runCLI(t, "", "sql", "--dir", dir, "-e", "SELECT * FROM t"); code == 0 || !strings.Contains(errOut, "no such table") {
		t.Fatalf("the new main has the deleted one's table t: exit %d, %q", code, errOut)
	}
	stop(u2)

	u3 := startUp(t, dir)
	u3.waitReady()
	if out := u3.output(); !strings.Contains(out, "  volume main: id 2, ") || strings.Contains(out, "created volume") || strings.Contains(out, "note:") {
		t.Fatalf("up resuming a cluster with its volume printed:\n%s", out)
	}
}
