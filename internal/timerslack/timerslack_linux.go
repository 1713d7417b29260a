package timerslack

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Current is the calling thread's timer slack.
func Current() (time.Duration, error) {
	ns, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
	if err != nil {
		return 0, fmt.Errorf("timer slack: %w", err)
	}
	return time.Duration(ns), nil
}

// Ensure makes sure every thread of the process has a timer slack of at
// least want. If the process's threads have less, it sets want on the
// calling thread and re-executes the program in place (same PID, arguments
// and environment), so it returns only when the process already has the
// slack, when want is not positive, or with the reason it could not. The
// caller must not have started anything it would lose: exec ends the
// process image.
func Ensure(want time.Duration) error {
	// The marker is this process's alone: the processes it starts must not
	// inherit it (with another PID in it, they would re-execute forever).
	marker := os.Getenv(reexecEnv)
	os.Unsetenv(reexecEnv)
	if want <= 0 {
		return nil
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cur, err := Current()
	if err != nil || cur >= want {
		return err
	}
	pid := strconv.Itoa(os.Getpid())
	if marker == pid {
		// The kernel did not keep it (it ignores the slack of a real-time
		// process).
		return fmt.Errorf("timer slack is %s after re-executing with %s", cur, want)
	}
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(want.Nanoseconds()), 0, 0, 0); err != nil {
		return fmt.Errorf("set timer slack: %w", err)
	}
	err = syscall.Exec(executable(), os.Args, append(os.Environ(), reexecEnv+"="+pid))
	// Still here: exec failed. Leave the thread as the others are.
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(cur.Nanoseconds()), 0, 0, 0)
	return fmt.Errorf("re-execute with timer slack %s: %w", want, err)
}

// executable is the program's own file, by the path it has (exec through
// /proc/self/exe would name the process "exe" in ps, top and pkill), or
// /proc/self/exe when that path no longer leads to it (the binary was
// replaced or removed since it started).
func executable() string {
	const self = "/proc/self/exe"
	path, err := os.Executable()
	if err != nil {
		return self
	}
	want, err1 := os.Stat(self)
	got, err2 := os.Stat(path)
	if err1 != nil || err2 != nil || !os.SameFile(want, got) {
		return self
	}
	return path
}
