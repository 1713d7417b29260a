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
	if os.Getenv(reexecEnv) == pid {
		return fmt.Errorf("timer slack is %s after re-executing with %s", cur, want)
	}
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(want.Nanoseconds()), 0, 0, 0); err != nil {
		return fmt.Errorf("set timer slack: %w", err)
	}
	env := append(os.Environ(), reexecEnv+"="+pid)
	err = syscall.Exec("/proc/self/exe", os.Args, env)
	// Still here: exec failed. Leave the thread as the others are.
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(cur.Nanoseconds()), 0, 0, 0)
	return fmt.Errorf("re-execute with timer slack %s: %w", want, err)
}
