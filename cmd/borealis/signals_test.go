package main

import (
	"os"
	"os/signal"
	"slices"
	"syscall"
	"testing"
)

// A hangup stops the daemons and the commands that clean up after
// themselves as Ctrl-C does; the others keep its default, and so does every
// command under nohup.
func TestStopSignals(t *testing.T) {
	root := rootCmd()
	hangup := func(args ...string) bool {
		sigs := stopSignals(root, args)
		if !slices.Contains(sigs, os.Interrupt) || !slices.Contains(sigs, os.Signal(syscall.SIGTERM)) {
			t.Errorf("%q: stop signals %v lack SIGINT or SIGTERM", args, sigs)
		}
		return slices.Contains(sigs, os.Signal(syscall.SIGHUP))
	}
	for _, args := range [][]string{
		{"up", "--dir", "d"}, {"storage", "--id", "s1"}, {"control"}, {"db", "--volume", "main"},
		{"bench", "commit"}, {"bench", "sql", "--cluster", "c.json"},
	} {
		if !hangup(args...) {
			t.Errorf("%q does not stop on SIGHUP", args)
		}
	}
	for _, args := range [][]string{{"sql"}, {"sql", "-e", "SELECT 1"}, {"status"}, {"volume", "list"}, {"restart", "s1"}, {}, {"nope"}} {
		if hangup(args...) {
			t.Errorf("%q catches SIGHUP; it should end on it as by default", args)
		}
	}
	signal.Ignore(syscall.SIGHUP)
	defer signal.Reset(syscall.SIGHUP)
	if hangup("up") {
		t.Error("up under nohup (SIGHUP ignored) catches SIGHUP")
	}
}
