package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"slices"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
	"github.com/borealis-db/borealis/internal/control"
	"github.com/borealis-db/borealis/internal/volume"
)

func benchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Built-in workloads that print latency percentiles and throughput",
	}
	cmd.AddCommand(benchCommitCmd(), benchSQLCmd(), benchReplicaCmd(), benchFailoverCmd(), benchRepairCmd())
	return cmd
}

type commitLevel struct {
	Committers        int     `json:"committers"`
	Commits           int     `json:"commits"`
	CommitsPerS       float64 `json:"commits_per_s"`
	P50Ms             float64 `json:"p50_ms"`
	P99Ms             float64 `json:"p99_ms"`
	NetBytesPerCommit float64 `json:"net_bytes_per_commit"`
	FsyncsPerCommit   float64 `json:"fsyncs_per_commit"`
	P50OverFloor      float64 `json:"p50_over_floor"`
	// P50OverQuorumFloor is p50 over the quorum floor (see diskFloor).
	P50OverQuorumFloor float64 `json:"p50_over_quorum_floor"`
	// What the level cost per commit (see costMeter); the benchmark is the
	// writer (it runs the volume client), so client is 0. A commit is one
	// record, so storage_per_node is also per record.
	CPUUsPerTxn              componentCPU       `json:"cpu_us_per_txn"`
	StorageCPUUsPerTxnByNode map[string]float64 `json:"storage_cpu_us_per_txn_by_node,omitempty"`
	DiskBytesPerTxnPerNode   float64            `json:"disk_bytes_per_txn_per_node"`
	DiskBytesPerTxnByNode    map[string]float64 `json:"disk_bytes_per_txn_by_node,omitempty"`
	// DeviceBytesPerTxn: the machine's disks, all processes (see levelCost).
	DeviceBytesPerTxn float64 `json:"device_bytes_per_txn"`
	// ContextSwitchesPerTxn: the machine's, all processes (see levelCost).
	ContextSwitchesPerTxn float64 `json:"context_switches_per_txn"`
}

type commitReport struct {
	FloorFsyncP50Ms  float64 `json:"floor_fsync_p50_ms"`
	FloorBeforeP50Ms float64 `json:"floor_before_p50_ms"`
	FloorAfterP50Ms  float64 `json:"floor_after_p50_ms"`
	// QuorumFloorP50Ms: the 4th of six concurrent fdatasync'd appends.
	QuorumFloorP50Ms float64       `json:"quorum_floor_p50_ms"`
	Nodes            int           `json:"nodes"`
	DurationS        float64       `json:"duration_s_per_level"`
	Levels           []commitLevel `json:"levels"`
	// Volumes are the volumes made in --cluster's catalog, one per level;
	// VolumesKept says they were left there (--keep), else they are deleted.
	Volumes     []string `json:"volumes,omitempty"`
	VolumesKept bool     `json:"volumes_kept,omitempty"`
	// VolumesLeft are those of Volumes that the benchmark failed to delete:
	// still in the catalog (and the command fails, saying why).
	VolumesLeft []string `json:"volumes_left,omitempty"`
	// Unmetered: components whose processes /proc could not read (on
	// another machine), left out of cpu_us_per_txn.
	Unmetered []string `json:"unmetered,omitempty"`
}

func benchCommitCmd() *cobra.Command {
	var clusterFile, dir, cpuProfile string
	var asJSON, keep bool
	var levels []int
	var duration time.Duration
	cmd := &cobra.Command{
		Use:   "commit",
		Short: "Commit one-record MTRs (a 200-byte diff) at several concurrency levels",
		Long: `Commit MTRs of one redo record carrying a 200-byte diff, at each
concurrency level in turn, against 6 storage nodes. Without --cluster it starts
its own 6 nodes as separate processes in a temporary directory.

For each level it prints commits/s, p50 and p99 commit latency, the gRPC wire
bytes per commit (both directions, all 6 nodes), the fsyncs per commit summed
over the nodes, and p50 as a multiple of the floor: the median of one
fdatasync'd 4 KiB append on the same disk, measured in the same run. It also
prints p50 over the quorum floor: six such appends at once on six files, up
to the 4th one done, which is what a commit waits for when all six nodes
share one disk.

With --cluster naming a control plane, each level gets its own volume
bench-<time>-c<N> in the catalog; they are deleted when the benchmark ends
(their segments with them), unless --keep is given. A cluster of its own is
removed with its temporary directory, unless --keep is given.`,
		Args: noArgs(""),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			out := cmd.OutOrStdout()
			progress := cmd.ErrOrStderr()
			if asJSON {
				progress = io.Discard
			}
			var members []volume.Member
			var comps []cluster.Component
			var ctl pb.ControlClient // set when the cluster has a control plane
			floorDir, tmp, removeTmp, err := benchDirs(dir, clusterFile, "borealis-bench-")
			if err != nil {
				return err
			}
			defer keepOrRemove(keep, tmp, removeTmp, progress)
			vols := &benchVolumes{keep: keep}
			if clusterFile != "" {
				f, err := cluster.ReadFile(clusterFile)
				if err != nil {
					return err
				}
				for _, c := range f.Storage() {
					members = append(members, volume.Member{NodeID: c.ID, AZ: c.AZ, Addr: c.Addr})
				}
				comps = f.Components
				if addrs := f.ControlAddrs(); addrs != "" {
					conn, err := control.Dial(addrs)
					if err != nil {
						return err
					}
					defer conn.Close()
					ctl = pb.NewControlClient(conn)
					vols.ctl = ctl
					// For a level that fails, or Ctrl-C (before conn
					// closes); after the levels it runs before the report
					// instead, whose exit status then tells of a failure.
					defer func() {
						if _, err := vols.cleanup(progress); err != nil {
							fmt.Fprintln(cmd.ErrOrStderr(), "borealis:", err)
						}
					}()
				}
				if len(members) != 6 {
					return fmt.Errorf("%s lists %d storage nodes; the benchmark needs 6", clusterFile, len(members))
				}
			} else {
				bin, err := os.Executable()
				if err != nil {
					return err
				}
				cl := cluster.New(bin, tmp)
				defer cl.Stop(5 * time.Second)
				fmt.Fprintf(progress, "starting 6 storage nodes in %s\n", tmp)
				if err := cl.StartStorageNodes(ctx, 6); err != nil {
					return err
				}
				comps = cl.Components()
				for _, c := range comps {
					members = append(members, volume.Member{NodeID: c.ID, AZ: c.AZ, Addr: c.Addr})
				}
			}
			var floor diskFloor
			if err := floor.sample(floorDir); err != nil {
				return err
			}
			rep := commitReport{Nodes: len(members), DurationS: duration.Seconds()}
			meter, unmetered := newCostMeter(comps, true)
			defer meter.close()
			rep.Unmetered = unmetered
			for _, n := range levels {
				fmt.Fprintf(progress, "running %d committers for %s\n", n, duration)
				lvl, err := runBenchLevel(ctx, ctl, vols, members, n, duration, meter)
				if err != nil {
					return err
				}
				rep.Levels = append(rep.Levels, lvl)
			}
			if err := floor.sample(floorDir); err != nil {
				return err
			}
			cleanupErr := vols.finish(&rep, progress)
			rep.FloorFsyncP50Ms = ms(floor.singleP50())
			rep.FloorBeforeP50Ms, rep.FloorAfterP50Ms = ms(median(floor.singleBefore)), ms(median(floor.singleAfter))
			rep.QuorumFloorP50Ms = ms(floor.quorumP50())
			for i := range rep.Levels {
				rep.Levels[i].P50OverFloor = rep.Levels[i].P50Ms / rep.FloorFsyncP50Ms
				rep.Levels[i].P50OverQuorumFloor = rep.Levels[i].P50Ms / rep.QuorumFloorP50Ms
			}
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
				return cleanupErr
			}
			fmt.Fprintf(out, "floor: fdatasync of a 4 KiB append, p50 %.3f ms (same disk, same run; %.3f ms before the levels, %.3f ms after)\n",
				rep.FloorFsyncP50Ms, rep.FloorBeforeP50Ms, rep.FloorAfterP50Ms)
			printQuorumFloor(out, rep.QuorumFloorP50Ms, rep.FloorFsyncP50Ms)
			tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "committers\tcommits/s\tp50 ms\tp99 ms\tp50/floor\tp50/quorum floor\tnet B/commit\tfsyncs/commit\t")
			for _, l := range rep.Levels {
				fmt.Fprintf(tw, "%d\t%.0f\t%.3f\t%.3f\t%.2fx\t%.2fx\t%.0f\t%.3f\t\n", l.Committers, l.CommitsPerS, l.P50Ms, l.P99Ms, l.P50OverFloor, l.P50OverQuorumFloor, l.NetBytesPerCommit, l.FsyncsPerCommit)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			var ls []int
			var costs []componentCPU
			var disk, device, ctxt, perRecord []float64
			for _, l := range rep.Levels {
				ls, costs = append(ls, l.Committers), append(costs, l.CPUUsPerTxn)
				disk, perRecord = append(disk, l.DiskBytesPerTxnPerNode), append(perRecord, l.CPUUsPerTxn.StoragePerNode)
				device = append(device, l.DeviceBytesPerTxn)
				ctxt = append(ctxt, l.ContextSwitchesPerTxn)
			}
			printCosts(out, "commit", ls, costs, disk, device, ctxt, perRecord)
			return cleanupErr
		},
	}
	f := cmd.Flags()
	f.StringVar(&clusterFile, "cluster", "", "cluster.json of a running cluster to use instead of starting one")
	f.StringVar(&dir, "dir", "", "parent directory for the temporary cluster (default: the system temp dir)")
	f.BoolVar(&asJSON, "json", false, "print the figures as one JSON object")
	f.IntSliceVar(&levels, "committers", []int{1, 8, 32, 64}, "concurrency levels to run")
	f.DurationVar(&duration, "duration", 5*time.Second, "how long each level runs")
	f.StringVar(&cpuProfile, "cpuprofile", "", "write the benchmark client's CPU profile to this file")
	f.BoolVar(&keep, "keep", false, "keep what the benchmark made: its volumes in --cluster's catalog, or its own cluster's directory")
	return cmd
}

// runBenchLevel runs one level on a fresh volume. The volume's catalog
// watch ends with the level, before the volume may be deleted.
func runBenchLevel(ctx context.Context, ctl pb.ControlClient, vols *benchVolumes, members []volume.Member, committers int, d time.Duration, meter *costMeter) (commitLevel, error) {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cfg, err := benchVolume(lctx, ctl, vols, members, committers)
	if err != nil {
		return commitLevel{}, err
	}
	return runCommitLevel(lctx, cfg, members, committers, d, meter)
}

// benchVolumes are the volumes a benchmark made in a cluster's catalog, to
// delete when it ends unless it is to keep them: a benchmark's volumes
// would otherwise stay in every later status for good.
type benchVolumes struct {
	ctl   pb.ControlClient
	keep  bool
	names []string
	done  bool
}

// finish deletes the volumes unless they are kept, and says in rep what
// became of them: made, kept, or left behind by a delete that failed.
func (b *benchVolumes) finish(rep *commitReport, progress io.Writer) error {
	left, err := b.cleanup(progress)
	rep.Volumes, rep.VolumesKept, rep.VolumesLeft = b.names, b.keep && len(b.names) > 0, left
	return err
}

// cleanup deletes the volumes (once), or says they are kept. It returns
// those it failed to delete. It has its own deadline: it also runs after
// Ctrl-C has cancelled the command.
func (b *benchVolumes) cleanup(progress io.Writer) ([]string, error) {
	if b.done || len(b.names) == 0 {
		return nil, nil
	}
	b.done = true
	if b.keep {
		fmt.Fprintf(progress, "kept the benchmark's volumes (--keep): %s; delete each with `%s volume delete NAME`\n", strings.Join(b.names, " "), invocation())
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var left []string
	var firstErr error
	for _, name := range b.names {
		_, err := b.ctl.DeleteVolume(ctx, &pb.DeleteVolumeRequest{Name: name})
		if err != nil && status.Code(err) != codes.NotFound {
			left = append(left, name)
			if firstErr == nil {
				firstErr = errors.New(status.Convert(err).Message())
			}
		}
	}
	if firstErr != nil {
		return left, fmt.Errorf("the benchmark could not delete its volumes %s: %w; delete each with `%s volume delete NAME`", strings.Join(left, " "), firstErr, invocation())
	}
	fmt.Fprintf(progress, "deleted the benchmark's volumes: %s\n", strings.Join(b.names, " "))
	return nil, nil
}

// keepOrRemove removes a benchmark's own temporary cluster directory, or
// says where it is kept.
func keepOrRemove(keep bool, dir string, remove func(), progress io.Writer) {
	if keep && dir != "" {
		fmt.Fprintf(progress, "kept the benchmark's cluster directory (--keep): %s\n", dir)
		return
	}
	remove()
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func nodeFsyncs(ctx context.Context, members []volume.Member) (uint64, error) {
	var total uint64
	for _, m := range members {
		conn, err := grpc.NewClient(m.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return 0, err
		}
		st, err := pb.NewStorageClient(conn).Stats(ctx, &pb.StatsRequest{})
		conn.Close()
		if err != nil {
			return 0, fmt.Errorf("stats from %s: %w", m.NodeID, err)
		}
		total += st.Fsyncs
	}
	return total, nil
}

// benchVolume gives each level a fresh volume: one the control plane
// creates (so that status shows it while the benchmark runs) when the
// cluster has one, noted in vols, else a random id placed on the six nodes
// directly.
func benchVolume(ctx context.Context, ctl pb.ControlClient, vols *benchVolumes, members []volume.Member, committers int) (volume.Config, error) {
	cfg := volume.Config{Epoch: 1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if ctl == nil {
		cfg.VolumeID, cfg.Incarnation, cfg.PageSize, cfg.PagesPerPG = rand.Uint64()|1, rand.Uint64()|1, 4096, 1<<20
		cfg.Placement = func(uint32) (volume.Membership, error) { return volume.OneSet(members), nil }
		return cfg, nil
	}
	name := fmt.Sprintf("bench-%s-c%d", time.Now().Format("20060102-150405"), committers)
	if _, err := ctl.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: name, PageSize: 4096}); err != nil {
		return cfg, fmt.Errorf("create benchmark volume %s: %w", name, err)
	}
	vols.names = append(vols.names, name)
	return cfg, volume.NewFromControl(ctl, name).Configure(ctx, &cfg)
}

func runCommitLevel(ctx context.Context, cfg volume.Config, members []volume.Member, committers int, d time.Duration, meter *costMeter) (commitLevel, error) {
	pageSize := cfg.PageSize
	vol, err := volume.Open(ctx, cfg)
	if err != nil {
		return commitLevel{}, err
	}
	defer vol.Close()
	pages := make([][]byte, committers)
	// Warm up: every committer's page exists, so the measured commits are
	// 200-byte diffs, not first images.
	for i := range pages {
		pages[i] = make([]byte, pageSize)
		if _, err := vol.Commit(ctx, []volume.PageWrite{{Page: uint64(i + 1), New: pages[i]}}); err != nil {
			return commitLevel{}, err
		}
	}
	fs0, err := nodeFsyncs(ctx, members)
	if err != nil {
		return commitLevel{}, err
	}
	st0 := vol.Stats()
	c0 := meter.sample(ctx)
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	stopAt := start.Add(d)
	for i := 0; i < committers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			old := pages[i]
			mine := make([]time.Duration, 0, 1024)
			for time.Now().Before(stopAt) {
				next := slices.Clone(old)
				off := rng.IntN(pageSize - 200)
				for j := off; j < off+200; j++ {
					next[j] = byte(rng.Uint32()) | 1
				}
				t0 := time.Now()
				_, err := vol.Commit(ctx, []volume.PageWrite{{Page: uint64(i + 1), Old: old, New: next}})
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				mine = append(mine, time.Since(t0))
				old = next
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(start)
	c1 := meter.sample(ctx)
	if firstErr != nil {
		return commitLevel{}, firstErr
	}
	if len(lat) == 0 {
		return commitLevel{}, errors.New("no commit completed")
	}
	st1 := vol.Stats()
	fs1, err := nodeFsyncs(ctx, members)
	if err != nil {
		return commitLevel{}, err
	}
	sort.Slice(lat, func(a, b int) bool { return lat[a] < lat[b] })
	n := float64(len(lat))
	cost := meter.cost(c0, c1, n, n)
	return commitLevel{
		CPUUsPerTxn:              cost.CPU,
		StorageCPUUsPerTxnByNode: cost.StorageCPUByNode,
		DiskBytesPerTxnPerNode:   cost.DiskBytesPerNode,
		DiskBytesPerTxnByNode:    cost.DiskBytesByNode,
		DeviceBytesPerTxn:        cost.DeviceBytes,
		ContextSwitchesPerTxn:    cost.ContextSwitches,

		Committers:        committers,
		Commits:           len(lat),
		CommitsPerS:       n / elapsed.Seconds(),
		P50Ms:             ms(lat[len(lat)/2]),
		P99Ms:             ms(lat[min(len(lat)-1, len(lat)*99/100)]),
		NetBytesPerCommit: float64((st1.BytesSent+st1.BytesReceived)-(st0.BytesSent+st0.BytesReceived)) / n,
		FsyncsPerCommit:   float64(fs1-fs0) / n,
	}, nil
}
