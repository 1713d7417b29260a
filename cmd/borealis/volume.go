package main

import (
	"context"
	"fmt"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
)

// controlAddrFlags are the two ways a command finds the control plane.
type controlAddrFlags struct{ dir, control string }

func (f *controlAddrFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.dir, "dir", defaultDir, "directory of a cluster that borealis up runs (its cluster.json names the control plane)")
	cmd.Flags().StringVar(&f.control, "control", "", "control plane address (instead of --dir)")
}

func (f *controlAddrFlags) addr() (string, error) {
	if f.control != "" {
		return f.control, nil
	}
	path := filepath.Join(f.dir, clusterFileName)
	cf, err := cluster.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("no running cluster in %s (%v); give --dir of a `borealis up`, or --control ADDR", f.dir, err)
	}
	if err := upGone(f.dir); err != nil {
		return "", err
	}
	if c, ok := cf.Find("control"); ok {
		return c.Addr, nil
	}
	return "", fmt.Errorf("%s lists no control plane", path)
}

func (f *controlAddrFlags) client() (pb.ControlClient, func(), error) {
	addr, err := f.addr()
	if err != nil {
		return nil, nil, err
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return pb.NewControlClient(conn), func() { conn.Close() }, nil
}

func volumeCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "volume", Short: "Create and list volumes"}
	cmd.AddCommand(volumeCreateCmd(), volumeListCmd())
	return cmd
}

func volumeCreateCmd() *cobra.Command {
	var where controlAddrFlags
	var pgSize string
	var pageSize uint32
	cmd := &cobra.Command{
		Use:   "create NAME [--pg-size S] [--page-size B]",
		Short: "Create a volume; its first PG is placed 2 per AZ on the least-loaded live nodes",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			size, err := parseSize(pgSize)
			if err != nil {
				return fmt.Errorf("--pg-size: %w", err)
			}
			ctl, done, err := where.client()
			if err != nil {
				return err
			}
			defer done()
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			defer cancel()
			v, err := ctl.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: args[0], PageSize: pageSize, PgSizeBytes: size})
			if err != nil {
				return fmt.Errorf("create volume %s: %w", args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "volume %s created: id %d, %d-byte pages, %s PGs\n", v.Name, v.Id, v.PageSize, formatSize(v.PgSizeBytes))
			return nil
		},
	}
	where.register(cmd)
	cmd.Flags().StringVar(&pgSize, "pg-size", "10GiB", "protection group size, such as 1MiB, 64MiB or 10GiB (a multiple of the page size)")
	cmd.Flags().Uint32Var(&pageSize, "page-size", 4096, "page size in bytes (a power of two from 512 to 65536)")
	return cmd
}

func volumeListCmd() *cobra.Command {
	var where controlAddrFlags
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the volumes",
		Args:  noArgs(""),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctl, done, err := where.client()
			if err != nil {
				return err
			}
			defer done()
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			defer cancel()
			resp, err := ctl.ListVolumes(ctx, &pb.ListVolumesRequest{})
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tID\tPAGE SIZE\tPG SIZE\tPGS\tSIZE\tVOLUME EPOCH\tGEOMETRY EPOCH")
			for _, v := range resp.Volumes {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%d\t%s\t%d\t%d\n", v.Name, v.Id, v.PageSize, formatSize(v.PgSizeBytes), v.Pgs, formatSize(v.SizeBytes), v.VolumeEpoch, v.GeometryEpoch)
			}
			return tw.Flush()
		},
	}
	where.register(cmd)
	return cmd
}
