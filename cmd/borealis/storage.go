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
	var listen, metrics, controlAddr, repairRate, scrubRate string
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
			if cfg.ScrubRate, err = parseSize(scrubRate); err != nil || cfg.ScrubRate == 0 {
				return fmt.Errorf("--scrub-rate %q: want a size per second above 0, such as 4MiB", scrubRate)
			}
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
			// A damaged record or page version is repaired from peers while
			// the node serves; a damaged store is not: the process ends, and
			// its next start moves the store aside and copies the node's
			// segments again (see storage.CorruptionInfo).
			damaged := make(chan storage.CorruptionInfo, 1)
			cfg.OnCorruption = func(info storage.CorruptionInfo) {
				if info.StoreDamaged {
					select {
					case damaged <- info:
					default:
					}
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
			served := make(chan error, 1)
			go func() { served <- node.Serve(lis) }()
			for {
				select {
				case err := <-served:
					return err
				case info := <-damaged:
					// Told while Open moved a damaged store aside: the
					// store in use is the new one.
					if !node.StoreDamaged() {
						continue
					}
					log.Error("the store is damaged; the node stops, and when started again it moves the store aside and copies its segments again from peers", "item", info.Item.String(), "file", info.Path, "err", info.Err)
					if info.Item == storage.StoreStopped {
						// Pebble gave up inside a call that does not
						// return; closing the store could wait for it.
						os.Exit(1)
					}
					return fmt.Errorf("storage node %s: store in %s is damaged (%v); start the node again to rebuild it from its peers", cfg.ID, cfg.Dir, info.Err)
				}
			}
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
	f.StringVar(&scrubRate, "scrub-rate", "4MiB", "bytes per second that the background scrub reads to check stored records and page versions against their CRC32C, such as 16MiB")
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
