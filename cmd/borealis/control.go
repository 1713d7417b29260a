package main

import (
	"errors"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/borealis-db/borealis/internal/control"
)

func controlCmd() *cobra.Command {
	var cfg control.Config
	cmd := &cobra.Command{
		Use:   "control --listen ADDR --dir DIR [--etcd URL,URL] [--heartbeat-timeout 3s]",
		Short: "Run the control plane",
		Long: `Run the control plane: the Control gRPC service on --listen, over the
catalog of storage nodes, volumes, PG membership, epochs and writer leases kept
in etcd. By default it embeds a single-node etcd with its data in --dir;
--etcd uses an external etcd cluster (its client URLs) instead.

Storage nodes started with --control ADDR register and heartbeat; a node that
misses heartbeats for --heartbeat-timeout is down until it heartbeats again.`,
		Args: noArgs(""),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfg.Listen == "" {
				return errors.New("control needs --listen (and --dir, or --etcd)")
			}
			if cfg.Dir == "" && len(cfg.Etcd) == 0 {
				return errors.New("control needs --dir for its embedded etcd's data, or --etcd with the client URLs of an external etcd")
			}
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
			return control.Run(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Listen, "listen", "", "gRPC listen address of the Control service (e.g. 127.0.0.1:7100)")
	f.StringVar(&cfg.Dir, "dir", "", "data directory of the embedded etcd")
	f.StringSliceVar(&cfg.Etcd, "etcd", nil, "client URLs of an external etcd cluster (e.g. http://10.0.0.1:2379,http://10.0.0.2:2379) instead of the embedded one")
	f.DurationVar(&cfg.HeartbeatTimeout, "heartbeat-timeout", 3*time.Second, "a storage node that has not heartbeat for this long is down (whole seconds; at least 1s)")
	return cmd
}
