package main

import (
	"io"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// Mistyped command lines are refused before anything starts, saying what
// to do instead.
func TestCommandLinesRefused(t *testing.T) {
	for _, tc := range []struct {
		cmd  func() *cobra.Command
		args []string
		want string
	}{
		{upCmd, []string{"/some/dir"}, "the cluster's directory is --dir DIR"},
		{upCmd, []string{"--write-timeout", "0s"}, "--write-timeout 0s: want a positive duration"},
		{upCmd, []string{"--write-timeout", "-1s"}, "want a positive duration"},
		{upCmd, []string{"--heartbeat-timeout", "500ms"}, "use at least 1s"},
		{upCmd, []string{"--nodes-per-az", "1"}, "--nodes-per-az 1: want 2 to 6 storage nodes per AZ"},
		{upCmd, []string{"--nodes-per-az", "7"}, "--nodes-per-az 7: want 2 to 6"},
		{upCmd, []string{"--lease-ttl", "1500ms"}, "--lease-ttl 1.5s: want whole seconds"},
		{upCmd, []string{"--repair-after", "0s"}, "--repair-after 0s: want a positive duration"},
		{upCmd, []string{"--repair-rate", "fast"}, "--repair-rate"},
		{benchRepairCmd, []string{"--size", "10KiB"}, "--size 10KiB: want at least 1MiB"},
		{benchRepairCmd, []string{"--clients", "0"}, "--clients 0: want at least 1"},
		{benchRepairCmd, []string{"--repair-after", "0s"}, "--repair-after 0s: want a positive duration"},
		{nodeDrainCmd, nil, "takes one argument, the storage node's id"},
		{nodeRemoveCmd, []string{"s1", "s2"}, "takes one argument, the storage node's id"},
		{sqlCmd, []string{"SELECT 1"}, `give SQL with -e "..."`},
		{sqlCmd, []string{"--dir", "d", "--endpoint", "http://127.0.0.1:1"}, "not both"},
		{sqlCmd, []string{"--timeout", "-1s", "-e", "SELECT 1"}, "--timeout -1s"},
		{statusCmd, []string{"x"}, "takes no arguments"},
		{dbCmd, []string{"--write-timeout", "0s"}, "want a positive duration"},
	} {
		c := tc.cmd()
		c.SetArgs(tc.args)
		c.SetOut(io.Discard)
		c.SetErr(io.Discard)
		c.SilenceUsage = true
		err := c.Execute()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %q: %v, want an error saying %q", c.Name(), tc.args, err, tc.want)
		}
	}
}
