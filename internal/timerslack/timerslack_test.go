//go:build linux

package timerslack

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// helperEnv makes the test binary, run again by TestEnsureReexecutes, call
// Ensure and print what it got instead of running the tests.
const helperEnv = "TIMERSLACK_TEST_HELPER"

// childEnv has a helper whose Ensure failed start one more helper.
const childEnv = "TIMERSLACK_TEST_CHILD"

func TestMain(m *testing.M) {
	if want := os.Getenv(helperEnv); want != "" {
		// In the re-executed process the marker is there at the start;
		// Ensure takes it out of the environment the process passes on.
		marker := os.Getenv(reexecEnv)
		d, err := time.ParseDuration(want)
		if err == nil {
			err = Ensure(d)
		}
		if err != nil {
			os.Stdout.WriteString("error=" + strings.ReplaceAll(err.Error(), " ", "_") + "\n")
			if os.Getenv(childEnv) != "" {
				// Start one more helper, as a daemon starts its children:
				// it must end too, not re-execute itself forever.
				os.Unsetenv(childEnv)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				out, _ := exec.CommandContext(ctx, os.Args[0], "-test.run=^$").CombinedOutput()
				if ctx.Err() != nil {
					os.Stdout.WriteString("child=looped\n")
				} else {
					os.Stdout.WriteString("child=" + strings.Fields(string(out) + " none")[0] + "\n")
				}
			}
			os.Exit(1)
		}
		cur, err := Current()
		if err != nil {
			os.Exit(1)
		}
		// A thread started after Ensure has the slack too.
		done := make(chan time.Duration)
		go func() {
			c, _ := Current()
			done <- c
		}()
		comm, _ := os.ReadFile("/proc/self/comm")
		os.Stdout.WriteString("comm=" + strings.TrimSpace(string(comm)) + " pid=" + strconv.Itoa(os.Getpid()) + " marker=" + marker + " left=" + os.Getenv(reexecEnv) +
			" slack=" + strconv.FormatInt(cur.Nanoseconds(), 10) + " thread=" + strconv.FormatInt((<-done).Nanoseconds(), 10) + "\n")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runHelper(t *testing.T, want string) map[string]string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+want)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, f := range strings.Fields(string(out)) {
		k, v, _ := strings.Cut(f, "=")
		got[k] = v
	}
	return got
}

// The helper starts with the default slack it inherits (50 µs unless this
// test runs under a larger one), re-executes itself in place with the new
// slack, and then every thread has it.
func TestEnsureReexecutes(t *testing.T) {
	cur, err := Current()
	if err != nil {
		t.Fatal(err)
	}
	want := 2 * time.Millisecond
	if cur >= want {
		t.Skipf("this test already runs with a slack of %s", cur)
	}
	got := runHelper(t, want.String())
	if got["pid"] == "" || got["marker"] != got["pid"] {
		t.Errorf("the helper did not re-execute itself in place: %v", got)
	}
	// The process keeps its name (exec through /proc/self/exe would make it
	// "exe" in ps, top and pkill).
	if name := filepath.Base(os.Args[0]); got["comm"] != name[:min(len(name), 15)] {
		t.Errorf("the re-executed process is named %q, not %q", got["comm"], name)
	}
	if got["left"] != "" {
		t.Errorf("the re-execution marker is left for the processes it starts: %v", got)
	}
	for _, k := range []string{"slack", "thread"} {
		if got[k] != strconv.FormatInt(want.Nanoseconds(), 10) {
			t.Errorf("%s after Ensure(%s): %v", k, want, got)
		}
	}
}

// A process that already has the slack is left alone: no re-execution.
func TestEnsureKeepsEnoughSlack(t *testing.T) {
	cur, err := Current()
	if err != nil {
		t.Fatal(err)
	}
	if got := runHelper(t, cur.String()); got["marker"] != "" || got["slack"] != strconv.FormatInt(cur.Nanoseconds(), 10) {
		t.Errorf("Ensure(%s) with the slack already %s: %v", cur, cur, got)
	}
	if err := Ensure(0); err != nil {
		t.Errorf("Ensure(0): %v", err)
	}
}

// A real-time process keeps a timer slack of 0 whatever it asks for. Ensure
// then re-executes once, says so, and runs on; the processes it starts do
// the same, once each (an inherited re-execution marker once had them
// re-execute forever).
func TestEnsureGivesUpUnderRealTime(t *testing.T) {
	chrt, err := exec.LookPath("chrt")
	if err != nil {
		t.Skip("no chrt")
	}
	if err := exec.Command(chrt, "-f", "1", "true").Run(); err != nil {
		t.Skipf("cannot run a real-time process here: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, chrt, "-f", "1", os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=2ms", childEnv+"=1")
	out, _ := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("the real-time helper did not end: %s", out)
	}
	got := map[string]string{}
	for _, f := range strings.Fields(string(out)) {
		k, v, _ := strings.Cut(f, "=")
		got[k] = v
	}
	if !strings.Contains(got["error"], "after_re-executing") {
		t.Errorf("the real-time helper said %q", out)
	}
	if got["child"] == "looped" || !strings.HasPrefix(got["child"], "error") {
		t.Errorf("the real-time helper's child: %q", got["child"])
	}
}
