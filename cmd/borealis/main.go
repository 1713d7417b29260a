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

func main() {
	root := &cobra.Command{
		Use:           "borealis",
		Short:         "Borealis: an Aurora-style log-structured storage service",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(storageCmd(), benchCmd(), controlCmd())
	root.AddCommand(upCmd(), restartCmd(), statusCmd(), volumeCmd(), dbCmd())
	root.AddCommand(sqlCmd())
	// Ctrl-C or SIGTERM cancels the command's context, so that commands that
	// start processes or make temporary directories clean up on the way out.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
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
