package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/cluster"
	"github.com/borealis-db/borealis/internal/wait"
)

// TestUpStopsOnHangup: the terminal `borealis up` runs in closes, and up
// gets SIGHUP, as the shell's job (its process group) does. up stops every
// process in order, as on Ctrl-C, each of which stops cleanly on its own
// signal (not killed as up dies), and removes cluster.json and up.sock. A
// storage node given SIGHUP itself stops cleanly too.
func TestUpStopsOnHangup(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	outPath := filepath.Join(t.TempDir(), "up.out")
	out, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(binary, "up", "--dir", dir, "--base-port", fmt.Sprint(freeBasePort(t)))
	cmd.Stdout, cmd.Stderr = out, out
	// A session of its own, as `setsid sh -c 'borealis up ...'` or a
	// terminal's shell gives it: up leads its process group, and a signal
	// to the group is one to the job.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	ended := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(ended) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-ended
	})
	exited := func() bool {
		select {
		case <-ended:
			return true
		default:
			return false
		}
	}
	printed := func() string {
		b, _ := os.ReadFile(outPath)
		return string(b)
	}
	var f *cluster.File
	wait.For(t, 90*time.Second, "borealis up to write cluster.json", func() bool {
		if exited() {
			t.Fatalf("borealis up exited (%v):\n%s", waitErr, printed())
		}
		f, err = cluster.ReadFile(filepath.Join(dir, "cluster.json"))
		return err == nil
	})
	upPid := cmd.Process.Pid
	for _, c := range f.Components {
		// Outside up's process group, a hangup of the job does not reach
		// them: up stops them itself, in order.
		if pg, err := syscall.Getpgid(c.Pid); err != nil || pg == upPid {
			t.Fatalf("%s (pid %d) is in process group %d (%v), up's is %d", c.ID, c.Pid, pg, err, upPid)
		}
	}

	// A daemon stops cleanly on a hangup of its own: s6 exits 0, which
	// up reports.
	s6 := f.Storage()[5]
	if err := syscall.Kill(s6.Pid, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	exitLine := fmt.Sprintf("!! s6 (storage, AZ c, pid %d) exited. It is not restarted", s6.Pid)
	wait.For(t, 20*time.Second, "up to report s6's exit", func() bool { return strings.Contains(printed(), "!! s6 ") })
	if !strings.Contains(printed(), exitLine) {
		t.Fatalf("s6 after SIGHUP: up printed\n%s\nwant %q", printed(), exitLine)
	}

	if err := syscall.Kill(-upPid, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 40*time.Second, "borealis up to stop after SIGHUP", exited)
	if waitErr != nil {
		t.Fatalf("up after SIGHUP ended with %v, not a clean stop:\n%s", waitErr, printed())
	}
	if p := printed(); !strings.Contains(p, "stopping every process of the cluster") || !strings.HasSuffix(p, "stopped.\n") {
		t.Fatalf("up after SIGHUP printed:\n%s", p)
	}
	checkClusterGone(t, dir, f)
	for _, c := range f.Components {
		// Each process was told to stop and did, rather than dying with
		// up (their parent-death signal is SIGKILL).
		stop := map[string]string{"control": "control plane stopping", "storage": "stopping on signal", "writer": "stopping on signal"}[c.Role]
		b, err := os.ReadFile(c.Log)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), stop) {
			t.Errorf("%s's log has no %q: it did not stop cleanly:\n%s", c.ID, stop, b)
		}
		if c.Role == "writer" && !strings.Contains(string(b), `msg=stopped`) {
			t.Errorf("the writer's log does not say it stopped:\n%s", b)
		}
	}
}
