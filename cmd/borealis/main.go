// Command borealis runs every part of Borealis: storage nodes, benchmarks
// and, later, the control plane and database instances.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "borealis",
		Short:         "Borealis: an Aurora-style log-structured storage service",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(storageCmd(), benchCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "borealis:", err)
		os.Exit(1)
	}
}
