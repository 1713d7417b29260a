package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
	"github.com/borealis-db/borealis/internal/control"
)

// controlAddrFlags are the two ways a command finds the control plane.
type controlAddrFlags struct{ dir, control string }

func (f *controlAddrFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.dir, "dir", defaultDir, "directory of a cluster that borealis up runs (its cluster.json names the control plane)")
	cmd.Flags().StringVar(&f.control, "control", "", "control plane address, host:port: one address, or several separated by commas (instead of --dir)")
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
	if addrs := cf.ControlAddrs(); addrs != "" {
		return addrs, nil
	}
	return "", fmt.Errorf("%s lists no control plane", path)
}

// dial connects to the control plane for one command, bounded by
// controlCallTimeout; done closes the connection.
func (f *controlAddrFlags) dial(parent context.Context) (context.Context, pb.ControlClient, func(), error) {
	addr, err := f.addr()
	if err != nil {
		return nil, nil, nil, err
	}
	conn, err := control.Dial(addr)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(parent, controlCallTimeout)
	return ctx, pb.NewControlClient(conn), func() { cancel(); conn.Close() }, nil
}

// controlCallTimeout bounds a volume command's call to the control plane.
const controlCallTimeout = 15 * time.Second

func volumeCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "volume", Short: "Create, list and delete volumes"}
	cmd.AddCommand(volumeCreateCmd(), volumeListCmd(), volumeDeleteCmd())
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
			ctx, ctl, done, err := where.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			v, err := ctl.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: args[0], PageSize: pageSize, PgSizeBytes: size})
			if err != nil {
				return fmt.Errorf("create volume %s: %s", args[0], status.Convert(err).Message())
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

// volumeListEntry is one volume of `volume list --json`.
type volumeListEntry struct {
	Name          string `json:"name"`
	ID            uint64 `json:"id"`
	PageSize      uint32 `json:"page_size"`
	PGSizeBytes   uint64 `json:"pg_size_bytes"`
	PGCount       uint32 `json:"pg_count"`
	SizeBytes     uint64 `json:"size_bytes"`
	VolumeEpoch   uint64 `json:"volume_epoch"`
	GeometryEpoch uint64 `json:"geometry_epoch"`
}

func volumeListCmd() *cobra.Command {
	var where controlAddrFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list [--json]",
		Short: "List the volumes",
		Args:  noArgs(""),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, ctl, done, err := where.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			resp, err := ctl.ListVolumes(ctx, &pb.ListVolumesRequest{})
			if err != nil {
				return fmt.Errorf("list volumes: %s", status.Convert(err).Message())
			}
			if asJSON {
				out := struct {
					Volumes []volumeListEntry `json:"volumes"`
				}{Volumes: []volumeListEntry{}}
				for _, v := range resp.Volumes {
					out.Volumes = append(out.Volumes, volumeListEntry{
						Name: v.Name, ID: v.Id, PageSize: v.PageSize, PGSizeBytes: v.PgSizeBytes, PGCount: v.Pgs,
						SizeBytes: v.SizeBytes, VolumeEpoch: v.VolumeEpoch, GeometryEpoch: v.GeometryEpoch,
					})
				}
				return json.NewEncoder(cmd.OutOrStdout()).Encode(out)
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
	cmd.Flags().BoolVar(&asJSON, "json", false, `print {"volumes": [{"name", "id", "page_size", "pg_size_bytes", "pg_count", "size_bytes", "volume_epoch", "geometry_epoch"}]}`)
	return cmd
}

func volumeDeleteCmd() *cobra.Command {
	var where controlAddrFlags
	cmd := &cobra.Command{
		Use:   "delete NAME [--dir D | --control ADDR]",
		Short: "Delete a volume and its data; refused while a writer holds it",
		Long: `Delete a volume: the catalog forgets it (its PGs and recovery
records with it) in one transaction, and each storage node drops the volume's
segments when its next heartbeat tells it to (a node that is down, once it is
back). It is refused while a writer holds the volume's writer lease: stop the
writer first (a writer that died keeps its lease until the lease's TTL runs
out). The data cannot be recovered.

A node drops only the segments of the deleted volume's incarnation, a random
number drawn when the volume was created: another volume with the same id
(from a control plane whose etcd was lost and replaced, or another cluster's)
is never dropped. A volume created before incarnations has none, and its
segments stay on the nodes.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("%s takes the name of one volume, got %q; borealis volume list shows the volumes", cmd.CommandPath(), args)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, ctl, done, err := where.dial(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			resp, err := ctl.DeleteVolume(ctx, &pb.DeleteVolumeRequest{Name: args[0]})
			if err != nil {
				return fmt.Errorf("delete volume %s: %s", args[0], status.Convert(err).Message())
			}
			v := resp.GetVolume()
			pgs := "PGs"
			if v.GetPgs() == 1 {
				pgs = "PG"
			}
			then := "the storage nodes drop its segments at their next heartbeat"
			if v.GetIncarnation() == 0 {
				then = "it was created before volumes had incarnations, so the storage nodes keep its segments: nothing tells them from another cluster's volume of the same id"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "volume %s deleted (id %d, %d %s of %s); %s\n", v.GetName(), v.GetId(), v.GetPgs(), pgs, formatSize(v.GetPgSizeBytes()), then)
			return nil
		},
	}
	where.register(cmd)
	return cmd
}
