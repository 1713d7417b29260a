package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/borealis-db/borealis/internal/control"
)

func controlCmd() *cobra.Command {
	var cfg control.Config
	var clusterState string
	cmd := &cobra.Command{
		Use:   "control --listen ADDR --dir DIR [--name c1 --az a --client-listen ADDR --peer-listen ADDR --initial-cluster c1=URL,c2=URL,c3=URL] [--etcd URL,URL] [--heartbeat-timeout 3s]",
		Short: "Run the control plane",
		Long: `Run the control plane: the Control gRPC service on --listen, over the
catalog of storage nodes, volumes, PG membership, epochs and writer leases kept
in etcd. By default it embeds a single-node etcd with its data in --dir;
--etcd uses an external etcd cluster (its client URLs) instead.

Several control planes make the control plane survive the loss of one (of an
AZ): run three, each embedding one member of a three-member etcd. Give each
its --name, the --client-listen and --peer-listen addresses of its member, and
the same --initial-cluster, which lists every member's peer URL:

  borealis control --name c1 --az a --listen 10.0.0.1:7100 --dir /var/c1 \
    --client-listen 10.0.0.1:2379 --peer-listen 10.0.0.1:2380 \
    --initial-cluster c1=http://10.0.0.1:2380,c2=http://10.0.0.2:2380,c3=http://10.0.0.3:2380

Start all three together: a member is ready only once a majority of them run.
A member restarted on its data directory rejoins from it. The catalog's etcd
client is given every member's client URL, so a control plane goes on
through the others while its own member cannot serve. With --etcd, any
number of control planes can share one external etcd.

Every control plane serves every call. One of them, elected in etcd
(a session of 2s TTL), leads: it watches node health and runs failovers; if
it dies, another leads within about that TTL. Clients (storage --control, db
--control, router --control, the CLI) take all the control planes'
addresses separated by commas, and use those that answer.

The embedded etcd runs with a raft heartbeat of 100ms and an election timeout
of 500ms. etcd grants no lease shorter than 1.5 x the election timeout,
rounded up to a second: 1s here, so a writer lease of 1s (db --lease-ttl) is
granted as asked (with etcd's default election timeout it would be 2s). An
external etcd (--etcd) must be configured likewise for short leases.

Storage nodes started with --control ADDR register and heartbeat; a node that
misses heartbeats for --heartbeat-timeout is down until it heartbeats again.

Repair: the leader moves each segment of a node down for --repair-after (or
removed, or drained: borealis node) to a live node of the same AZ that does
not hold that PG, least loaded first: the PG goes from ABCDEF to {ABCDEF,
ABCDEG} under a new membership epoch, G hydrates from its peers, and once G is
complete the PG is ABCDEG; if F heartbeats again first, the PG goes back to
ABCDEF. With no such node in the AZ, the PG stays degraded (writes go on) and
status says it waits for capacity there; a storage node started later with
--control joins, and the waiting repairs use it. A node that comes back
without segments its peers hold is told to copy them.`,
		Args: noArgs(""),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfg.Listen == "" {
				return errors.New("control needs --listen (and --dir, or --etcd)")
			}
			if cfg.RepairAfter <= 0 {
				return fmt.Errorf("--repair-after %s: give a positive duration, such as 60s", cfg.RepairAfter)
			}
			if cfg.Dir == "" && len(cfg.Etcd) == 0 {
				return errors.New("control needs --dir for its embedded etcd's data, or --etcd with the client URLs of an external etcd")
			}
			switch clusterState {
			case "new":
			case "existing":
				cfg.JoinExisting = true
			default:
				return fmt.Errorf("--initial-cluster-state %q: want new (bootstrap the cluster with the others) or existing (join a running cluster)", clusterState)
			}
			member := cmd.Flags().Changed("initial-cluster") || cmd.Flags().Changed("peer-listen") || cmd.Flags().Changed("client-listen")
			if len(cfg.Etcd) > 0 && member {
				return errors.New("--etcd uses an external etcd: --initial-cluster, --client-listen and --peer-listen are for the embedded one; give one or the other")
			}
			if cfg.InitialCluster != "" {
				if cfg.Name == "" {
					return errors.New("--initial-cluster needs --name: this member's name, as the initial cluster lists it (e.g. --name c1)")
				}
				if cfg.ClientListen == "" || cfg.PeerListen == "" {
					return errors.New("--initial-cluster needs --client-listen and --peer-listen: the addresses of this member's etcd (the peer one as the initial cluster gives it)")
				}
				if _, err := control.ParseInitialCluster(cfg.InitialCluster, cfg.Name, cfg.PeerListen); err != nil {
					return fmt.Errorf("--initial-cluster: %w", err)
				}
			} else if cfg.JoinExisting {
				return errors.New("--initial-cluster-state existing needs --initial-cluster")
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
	f.DurationVar(&cfg.RepairAfter, "repair-after", control.DefaultRepairAfter, "a storage node down this long has each of its segments moved to a spare node of its AZ (the leader repairs)")
	f.StringVar(&cfg.Metrics, "metrics", "", "serve Prometheus metrics (/metrics: the repairs) on this address (optional)")
	f.StringVar(&cfg.Name, "name", "", "this control plane's name: its etcd member's (as --initial-cluster lists it) and what status shows (default \"control\")")
	f.StringVar(&cfg.AZ, "az", "", "the AZ this control plane runs in, shown by status")
	f.StringVar(&cfg.ClientListen, "client-listen", "", "the embedded etcd's client address, host:port (default: a free loopback port; needed with --initial-cluster)")
	f.StringVar(&cfg.PeerListen, "peer-listen", "", "the embedded etcd's peer address, host:port, as --initial-cluster gives it (default: a free loopback port)")
	f.StringVar(&cfg.InitialCluster, "initial-cluster", "", "every member of a multi-member embedded etcd with its peer URL, e.g. c1=http://10.0.0.1:2380,c2=http://10.0.0.2:2380,c3=http://10.0.0.3:2380 (default: a single-member etcd)")
	f.StringVar(&clusterState, "initial-cluster-state", "new", "new: bootstrap the cluster with the other members; existing: join a running cluster this member was added to (etcdctl member add). A member with data in --dir restarts from it either way")
	return cmd
}
