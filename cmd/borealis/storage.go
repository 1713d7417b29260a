package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/control"
	"github.com/borealis-db/borealis/internal/storage"
)

func storageCmd() *cobra.Command {
	var cfg storage.Config
	var listen, metrics, controlAddr, repairRate string
	var procs int
	cmd := &cobra.Command{
		Use:   "storage --id ID --az AZ --listen ADDR --dir DIR [--control ADDR]",
		Short: "Run one storage node",
		Long: `Run one storage node. It serves the Storage gRPC service on --listen and
hosts segments of any number of volumes in --dir. Segments are created when a
writer first declares them.`,
		Args: noArgs(""),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfg.ID == "" || cfg.AZ == "" || listen == "" || cfg.Dir == "" {
				return errors.New("storage needs --id, --az, --listen and --dir")
			}
			rate, err := parseRepairRate(repairRate)
			if err != nil {
				return err
			}
			cfg.RepairRate = rate
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
			cfg.Logger = log
			if procs > 0 {
				runtime.GOMAXPROCS(procs)
			}
			lis, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("listen on %s: %w", listen, err)
			}
			var mlis net.Listener
			if metrics != "" {
				if mlis, err = net.Listen("tcp", metrics); err != nil {
					lis.Close()
					return fmt.Errorf("metrics listen on %s: %w", metrics, err)
				}
			}
			node, err := storage.Open(cfg)
			if err != nil {
				return err
			}
			defer node.Close()
			if mlis != nil {
				mux := http.NewServeMux()
				mux.Handle("/metrics", node.MetricsHandler())
				mux.HandleFunc("/debug/pprof/", pprof.Index)
				mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
				go http.Serve(mlis, mux)
			}
			ctx := cmd.Context()
			go func() {
				<-ctx.Done()
				log.Info("stopping on signal")
				node.Close()
			}()
			if controlAddr != "" {
				var st syscall.Statfs_t
				var capacity uint64
				if err := syscall.Statfs(cfg.Dir, &st); err == nil {
					capacity = uint64(st.Blocks) * uint64(st.Bsize)
				}
				go control.RunNodeAgent(ctx, controlAddr, control.AgentNode{
					ID: cfg.ID, AZ: cfg.AZ, Addr: lis.Addr().String(), CapacityBytes: capacity,
					OnEpochs: func(epochs map[uint64]uint64) {
						if err := node.ObserveEpochs(epochs); err != nil {
							log.Error("cannot record volume epochs from the control plane", "err", err)
						}
					},
					Hosted: node.HostedVolumes,
					OnDeleted: func(vols []*pb.VolumeIncarnation) {
						if err := node.DropVolumes(vols); err != nil {
							log.Error("cannot drop the segments of deleted volumes; once the node restarts, its first heartbeat drops them", "volumes", vols, "err", err)
						}
					},
				}, log)
			}
			log.Info("storage node serving", "id", cfg.ID, "az", cfg.AZ, "addr", lis.Addr().String(), "dir", cfg.Dir)
			return node.Serve(lis)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.ID, "id", "", "node id, unique in the cluster (e.g. s1)")
	f.StringVar(&cfg.AZ, "az", "", "availability zone of the node (e.g. a)")
	f.StringVar(&listen, "listen", "", "gRPC listen address (e.g. 127.0.0.1:7101)")
	f.StringVar(&cfg.Dir, "dir", "", "data directory")
	f.StringVar(&controlAddr, "control", "", "control plane address, host:port: one address, or several separated by commas; register with them and heartbeat (optional)")
	f.StringVar(&metrics, "metrics", "", "serve Prometheus metrics (/metrics) and pprof (/debug/pprof/) on this address (optional)")
	f.Uint64Var(&cfg.MinFreeBytes, "min-free-bytes", 64<<20, "refuse appends with DISK_FULL when the data directory's file system has less free space than this")
	// A node alone on a machine wants Go's default. Several nodes sharing a
	// few cores (a local cluster) do better with one P each: the append path
	// is a chain of goroutine hand-offs around an fsync, and with one P each
	// hand-off is a run-queue push instead of waking another thread. Measured
	// with six nodes on two cores: single-committer p50 0.80 -> 0.67 ms,
	// 64-committer throughput +10%.
	f.IntVar(&procs, "procs", 0, "Go scheduler Ps (GOMAXPROCS) for the node; 0 leaves Go's default (one per CPU, or the GOMAXPROCS environment variable). Local clusters use 1")
	f.DurationVar(&cfg.GossipInterval, "gossip-interval", 200*time.Millisecond, "how often a segment compares notes with a peer")
	f.StringVar(&repairRate, "repair-rate", "100MiB", "bytes per second that the node's hydrations (segments copying their PG from a peer) copy, all together, such as 64MiB; 0 for no limit")
	return cmd
}

// parseRepairRate reads --repair-rate: a size per second, or 0 for none.
func parseRepairRate(s string) (uint64, error) {
	if strings.TrimSpace(s) == "0" {
		return 0, nil
	}
	n, err := parseSize(s)
	if err != nil {
		return 0, fmt.Errorf("--repair-rate: %w (bytes per second, or 0 for no limit)", err)
	}
	return n, nil
}
