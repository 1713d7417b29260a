// Command borealis runs every part of Borealis: the control plane, storage
// nodes, database instances, a whole local cluster (up), the SQL shell and
// the benchmarks.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// noArgs refuses positional arguments, with hint on what to do instead.
func noArgs(hint string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return fmt.Errorf("%s takes no arguments, got %q%s", cmd.CommandPath(), args, hint)
		}
		return nil
	}
}

// oneArg refuses a command line without exactly one argument, naming
// what it is (what, such as "the storage node's id").
func oneArg(what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != 1 {
			return fmt.Errorf("%s takes one argument, %s; got %d (%q)", cmd.CommandPath(), what, len(args), args)
		}
		return nil
	}
}

// rootCmd is the borealis command, with every subcommand.
func rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "borealis",
		Short:         "Borealis: an Aurora-style log-structured storage service",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(storageCmd(), benchCmd(), controlCmd())
	root.AddCommand(upCmd(), restartCmd(), statusCmd(), volumeCmd(), dbCmd())
	root.AddCommand(sqlCmd(), routerCmd(), failoverCmd())
	root.AddCommand(nodeCmd())
	addTimerSlack(root)
	return root
}

func main() {
	root := rootCmd()
	// Ctrl-C or SIGTERM (and for some commands SIGHUP) cancels the
	// command's context, so that commands that start processes or make
	// temporary directories clean up on the way out.
	ctx, stop := signal.NotifyContext(context.Background(), stopSignals(root, os.Args[1:])...)
	err := root.ExecuteContext(ctx)
	interrupted := ctx.Err() != nil
	stop()
	if err != nil && interrupted && errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "borealis: interrupted")
		os.Exit(130)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "borealis:", err)
		os.Exit(1)
	}
}

// hangupStops are the commands that a hangup (SIGHUP: the terminal they run
// in closed) stops as Ctrl-C does: the daemons, as a clean stop, and the
// commands that start processes or make volumes and temporary directories,
// which they remove on the way out. `up` killed by a hangup would leave
// cluster.json and up.sock behind, and its processes would die with it
// (their parent-death signal) instead of stopping in order. The others keep
// the default and end at once: the sql shell, say, has nothing to clean up
// once its terminal is gone.
var hangupStops = map[string]bool{"up": true, "storage": true, "control": true, "db": true, "bench": true}

// stopSignals are the signals that cancel the context of the command that
// args name.
func stopSignals(root *cobra.Command, args []string) []os.Signal {
	sigs := []os.Signal{os.Interrupt, syscall.SIGTERM}
	cmd, _, err := root.Find(args)
	if err != nil {
		return sigs
	}
	for cmd.HasParent() && cmd.Parent() != root {
		cmd = cmd.Parent()
	}
	// Under nohup SIGHUP is ignored, and should stay so: Notify would
	// install a handler instead.
	if hangupStops[cmd.Name()] && !signal.Ignored(syscall.SIGHUP) {
		sigs = append(sigs, syscall.SIGHUP)
	}
	return sigs
}
