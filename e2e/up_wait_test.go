package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
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

// writerHealth is what a writer's /v1/health says, or ok false if it does
// not answer.
func writerHealth(addr string) (ready bool, status string, ok bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/health", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, "", false
	}
	defer resp.Body.Close()
	var h struct {
		Ready  bool   `json:"ready"`
		Status string `json:"status"`
	}
	if json.NewDecoder(resp.Body).Decode(&h) != nil {
		return false, "", false
	}
	return h.Ready, h.Status, true
}

func componentOf(t *testing.T, dir, id string) cluster.Component {
	t.Helper()
	f, err := cluster.ReadFile(filepath.Join(dir, "cluster.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range f.Components {
		if c.ID == id {
			return c
		}
	}
	t.Fatalf("cluster.json lists no %s", id)
	return cluster.Component{}
}

// restartedByUp waits until up, which supervises the database instances,
// has started the writer again after the death of the one of pid dead,
// and cluster.json names the new process; it returns it.
func restartedByUp(t *testing.T, u *upProcess, dir string, dead int) cluster.Component {
	t.Helper()
	var w cluster.Component
	wait.For(t, 20*time.Second, fmt.Sprintf("up to report the death of the writer of pid %d and start it again", dead), func() bool {
		if !strings.Contains(u.output(), fmt.Sprintf("!! writer (writer, AZ a, pid %d) ", dead)) {
			return false
		}
		w = componentOf(t, dir, "writer")
		return w.Pid != dead && alive(w.Pid)
	})
	return w
}

// TestRestartWriterThatWaitsForStorage: with three storage nodes down, a
// restarted writer's recovery finds a read quorum but must wait for a write
// quorum to acknowledge its truncation. `borealis restart writer` is not a
// failure then: cluster.json names the new process at once, and restart
// says what the writer waits for (the PG, and each missing segment with its
// address), exits 0, and the writer becomes ready by itself once a node
// returns. A restarted writer that dies before it is ready is a failure,
// quoted with the whole lines it wrote to its log. up supervises the
// writer, and starts it again itself each time it is killed; restart then
// reports on the writer up started. The cluster has no replica, so that
// none is promoted: this is the writer's own recovery.
func TestRestartWriterThatWaitsForStorage(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	u := startUp(t, dir, "--base-port", fmt.Sprint(freeBasePort(t)), "--pg-size", "1MiB", "--replicas", "0")
	u.waitReady()
	if out, err := exec.Command(binary, "sql", "--dir", dir, "-e", "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT); INSERT INTO t(v) VALUES('before')").CombinedOutput(); err != nil {
		t.Fatalf("sql: %v\n%s", err, out)
	}
	old := componentOf(t, dir, "writer")
	for _, id := range []string{"s3", "s4", "s5", "writer"} {
		if err := syscall.Kill(componentOf(t, dir, id).Pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	// So that restart's wait goes to the recovery, not to the old lease's
	// TTL: the writer up started again has taken the lease, and waits for
	// storage.
	w := restartedByUp(t, u, dir, old.Pid)
	wait.For(t, 20*time.Second, "the writer up started again to wait for storage", func() bool {
		_, status, _ := writerHealth(w.Addr)
		return strings.Contains(status, "waiting for a write quorum of PG 0")
	})

	out, err := exec.Command(binary, "restart", "writer", "--dir", dir, "--wait", "5s").CombinedOutput()
	if err != nil {
		t.Fatalf("restart writer with three nodes down: %v\n%s", err, out)
	}
	if got := componentOf(t, dir, "writer"); got.Pid != w.Pid || !alive(w.Pid) {
		t.Fatalf("cluster.json lists the writer with pid %d; up started pid %d (the killed one was %d)", got.Pid, w.Pid, old.Pid)
	}
	msg := string(out)
	for _, want := range []string{
		fmt.Sprintf("writer started (pid %d), and is not ready after 5s: ", w.Pid),
		"waiting for a write quorum of PG 0 to acknowledge the truncation: 3 of its 6 segments did, 4 must: ",
		"Not running: s3, s4, s5; ",
	} {
		if !strings.Contains(msg, want) {
			t.Fatalf("restart writer said:\n%s\nIt lacks %q", msg, want)
		}
	}
	for _, id := range []string{"s3", "s4", "s5"} {
		c := componentOf(t, dir, id)
		if !strings.Contains(msg, fmt.Sprintf("%s (%s): unreachable", id, c.Addr)) {
			t.Fatalf("restart writer said:\n%s\nIt does not name %s at %s as unreachable", msg, id, c.Addr)
		}
	}
	t.Logf("restart writer said:\n%s", msg)
	// /v1/health and `borealis status` say the same.
	if ready, status, _ := writerHealth(w.Addr); ready || !strings.Contains(status, "waiting for a write quorum of PG 0") {
		t.Fatalf("the waiting writer's health: ready %v, status %q", ready, status)
	}
	var st struct {
		Writers []struct {
			Holder string `json:"holder"`
			State  string `json:"state"`
		} `json:"writers"`
	}
	sout, err := exec.Command(binary, "status", "--dir", dir, "--json").Output()
	if err != nil || json.Unmarshal(sout, &st) != nil {
		t.Fatalf("status --json: %v\n%s", err, sout)
	}
	if len(st.Writers) != 1 || !strings.Contains(st.Writers[0].State, "waiting for a write quorum of PG 0") {
		t.Fatalf("status shows writers %+v while the writer waits for storage", st.Writers)
	}

	// A writer that dies while it waits is a failure, with its log quoted
	// line by line.
	if err := syscall.Kill(w.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	restartedByUp(t, u, dir, w.Pid)
	restart := exec.Command(binary, "restart", "writer", "--dir", dir, "--wait", "60s")
	var rout strings.Builder
	restart.Stdout, restart.Stderr = &rout, &rout
	if err := restart.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- restart.Wait() }()
	var third cluster.Component
	wait.For(t, 20*time.Second, "the third writer to wait for storage", func() bool {
		third = componentOf(t, dir, "writer")
		_, status, _ := writerHealth(third.Addr)
		return third.Pid != w.Pid && strings.Contains(status, "waiting for a write quorum")
	})
	if err := syscall.Kill(third.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var rerr error
	select {
	case rerr = <-exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("restart did not end when the writer it waited for died:\n%s", rout.String())
	}
	var ee *exec.ExitError
	if !errors.As(rerr, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("restart of a writer that died: %v\n%s", rerr, rout.String())
	}
	fail := rout.String()
	head, tail, ok := strings.Cut(fail, "the last lines it wrote to its log "+third.Log+":\n")
	if !ok || !strings.Contains(head, fmt.Sprintf("writer (pid %d) exited before it became ready (signal: killed)", third.Pid)) {
		t.Fatalf("restart of a writer that died said:\n%s", fail)
	}
	lines := strings.Split(strings.TrimRight(tail, "\n"), "\n")
	if len(lines) < 3 {
		t.Fatalf("restart quoted %d log lines:\n%s", len(lines), fail)
	}
	for _, l := range lines {
		// slog's records each start with their time.
		if !strings.HasPrefix(l, "  time=") {
			t.Fatalf("restart quoted a log line that is not a whole record: %q\n%s", l, fail)
		}
	}

	// Restarted once more, it waits; a node back, it is ready by itself.
	fourth := restartedByUp(t, u, dir, third.Pid)
	out, err = exec.Command(binary, "restart", "writer", "--dir", dir, "--wait", "0s").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "is not ready after") {
		t.Fatalf("restart writer --wait 0s: %v\n%s", err, out)
	}
	if got := componentOf(t, dir, "writer"); got.Pid != fourth.Pid {
		t.Fatalf("cluster.json lists the writer with pid %d; up started pid %d", got.Pid, fourth.Pid)
	}
	if out, err := exec.Command(binary, "restart", "s3", "--dir", dir).CombinedOutput(); err != nil {
		t.Fatalf("restart s3: %v\n%s", err, out)
	}
	wait.For(t, 15*time.Second, "the writer to finish its recovery once s3 is back", func() bool {
		ready, _, _ := writerHealth(fourth.Addr)
		return ready
	})
	wait.For(t, 5*time.Second, "up to report the writer ready", func() bool {
		return strings.Contains(u.output(), fmt.Sprintf("writer (pid %d) is ready", fourth.Pid))
	})
	if got := componentOf(t, dir, "writer"); got.Pid != fourth.Pid || !alive(got.Pid) {
		t.Fatalf("cluster.json lists the writer as pid %d; the one that runs is %d", got.Pid, fourth.Pid)
	}
	sout, err = exec.Command(binary, "sql", "--dir", dir, "-e", "SELECT v FROM t").CombinedOutput()
	if err != nil || !strings.Contains(string(sout), "before") {
		t.Fatalf("sql after the writer recovered: %v\n%s", err, sout)
	}
}

// TestUpCleansUpWithoutStdout: `borealis up | tee log`, then Ctrl-C: tee
// gets the SIGINT too, so up's next line goes to a closed pipe. up must
// still stop every process and remove cluster.json and up.sock.
func TestUpCleansUpWithoutStdout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "up", "--dir", dir, "--base-port", fmt.Sprint(freeBasePort(t)))
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	var waitErr error
	ended := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(ended) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-ended
	})
	// Read what up prints until it idles (its last line is the Ctrl-C
	// hint), as tee would.
	var printed strings.Builder
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		printed.WriteString(sc.Text() + "\n")
		if strings.HasPrefix(sc.Text(), "Ctrl-C stops the cluster") {
			break
		}
	}
	if !strings.Contains(printed.String(), "Borealis is up") {
		t.Fatalf("up did not come up:\n%s", printed.String())
	}
	f, err := cluster.ReadFile(filepath.Join(dir, "cluster.json"))
	if err != nil {
		t.Fatal(err)
	}
	// tee is gone.
	r.Close()
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ended:
	case <-time.After(30 * time.Second):
		t.Fatal("up did not end after SIGINT")
	}
	if waitErr != nil {
		t.Fatalf("up with its output gone ended with %v, not a clean stop", waitErr)
	}
	checkClusterGone(t, dir, f)
}
