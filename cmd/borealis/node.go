package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

func nodeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Drain or remove storage nodes",
		Long: `Take storage nodes out of service. The control plane's leader moves each
segment of a drained or removed node to another live node of its AZ (the least
loaded one that does not hold that PG): the PG goes from ABCDEF to the pair
{ABCDEF, ABCDEG} under a new membership epoch, G copies the PG from its peers,
and once G is complete the PG is ABCDEG. borealis status shows each change and
its progress, and the PGs that wait for a node in their AZ.

To retire a healthy node with nothing degraded at any moment, drain it, wait
until status shows it holds no segment, then remove it.`,
	}
	cmd.AddCommand(nodeDrainCmd(), nodeRemoveCmd())
	return cmd
}

func nodeDrainCmd() *cobra.Command {
	var where controlAddrFlags
	cmd := &cobra.Command{
		Use:   "drain ID",
		Short: "Move every segment off a node, which serves its segments until each move completes",
		Long: `Move every segment off a storage node. The node keeps serving each of its
segments until the node that replaces it is complete, so no PG is degraded by
the drain. Nothing new is placed on it meanwhile. Once status shows it holds
no segment, node remove takes it out for good.`,
		Args: oneArg(`the storage node's id, such as s3 (borealis status lists them)`),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, ctl, done, err := where.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			r, err := ctl.DrainNode(ctx, &pb.DrainNodeRequest{Id: args[0]})
			if err != nil {
				return fmt.Errorf("drain node %s: %s", args[0], status.Convert(err).Message())
			}
			fmt.Fprintln(cmd.OutOrStdout(), describeNodeAdmin(args[0], r))
			return nil
		},
	}
	where.register(cmd)
	return cmd
}

func nodeRemoveCmd() *cobra.Command {
	var where controlAddrFlags
	cmd := &cobra.Command{
		Use:   "remove ID",
		Short: "Take a node out for good: nothing is placed on it again, and its segments move to other nodes of its AZ",
		Long: `Take a storage node out of service for good. Nothing is placed on it again,
and each segment it still holds moves to another node of its AZ at once, up or
not: until each move completes its PG counts that segment as lost (degraded).
Drain the node first to move its segments while it still serves them.`,
		Args: oneArg(`the storage node's id, such as s3 (borealis status lists them)`),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, ctl, done, err := where.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			r, err := ctl.RemoveNode(ctx, &pb.RemoveNodeRequest{Id: args[0]})
			if err != nil {
				return fmt.Errorf("remove node %s: %s", args[0], status.Convert(err).Message())
			}
			fmt.Fprintln(cmd.OutOrStdout(), describeNodeAdmin(args[0], r))
			return nil
		},
	}
	where.register(cmd)
	return cmd
}

// describeNodeAdmin says what a drain or remove did.
func describeNodeAdmin(id string, r *pb.NodeAdminResponse) string {
	verb := "draining"
	if r.Admin == "removed" {
		verb = "removed"
	}
	if r.Previous == r.Admin {
		verb = "already " + verb
	}
	switch {
	case r.Segments == 0:
		return fmt.Sprintf("node %s %s (%s); it holds no segment", id, verb, r.State)
	case r.Admin == "removed":
		return fmt.Sprintf("node %s %s (%s); its %d segment(s) move to other nodes of its AZ (borealis status shows the moves)", id, verb, r.State, r.Segments)
	default:
		return fmt.Sprintf("node %s %s (%s); its %d segment(s) move to other nodes of its AZ while it serves them (borealis status shows the moves; remove it once it holds none)", id, verb, r.State, r.Segments)
	}
}
