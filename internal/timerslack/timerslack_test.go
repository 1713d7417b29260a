//go:build linux

package timerslack

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// helperEnv makes the test binary, run again by TestEnsureReexecutes, call
// Ensure and print what it got instead of running the tests.
const helperEnv = "TIMERSLACK_TEST_HELPER"

func TestMain(m *testing.M) {
	if want := os.Getenv(helperEnv); want != "" {
		d, err := time.ParseDuration(want)
		if err == nil {
			err = Ensure(d)
		}
		if err != nil {
			os.Stdout.WriteString("error " + err.Error() + "\n")
			os.Exit(1)
		}
		cur, err := Current()
		if err != nil {
			os.Exit(1)
		}
		os.Stdout.WriteString("pid " + strconv.Itoa(os.Getpid()) + " reexec " + os.Getenv(reexecEnv) + " slack " + strconv.FormatInt(cur.Nanoseconds(), 10) + "\n")
		// A thread started after Ensure has the slack too.
		done := make(chan time.Duration)
		go func() {
			c, _ := Current()
			done <- c
		}()
		os.Stdout.WriteString("thread " + strconv.FormatInt((<-done).Nanoseconds(), 10) + "\n")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runHelper(t *testing.T, want string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+want)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	return string(out)
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
	out := runHelper(t, want.String())
	f := strings.Fields(out)
	if len(f) != 8 || f[0] != "pid" || f[2] != "reexec" || f[4] != "slack" || f[6] != "thread" {
		t.Fatalf("helper printed %q", out)
	}
	if f[3] != f[1] {
		t.Errorf("the helper did not re-execute itself in place: pid %s, marker %q", f[1], f[3])
	}
	for _, v := range []string{f[5], f[7]} {
		if v != strconv.FormatInt(want.Nanoseconds(), 10) {
			t.Errorf("slack after Ensure(%s) is %s ns", want, v)
		}
	}
}

// A process that already has the slack is left alone: no re-execution.
func TestEnsureKeepsEnoughSlack(t *testing.T) {
	cur, err := Current()
	if err != nil {
		t.Fatal(err)
	}
	out := runHelper(t, cur.String())
	if !strings.Contains(out, "reexec  slack") {
		t.Errorf("Ensure(%s) with the slack already %s re-executed: %q", cur, cur, out)
	}
	if err := Ensure(0); err != nil {
		t.Errorf("Ensure(0): %v", err)
	}
}
