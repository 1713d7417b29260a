package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sync"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
	"github.com/borealis-db/borealis/internal/procstat"
)

// costMeter samples the CPU time and disk writes of the processes a
// benchmark drives, and of the benchmark itself, so that a level's cost can
// be given per transaction and per component. On a machine whose cores
// every process shares, throughput is CPU per transaction: this says whose.
type costMeter struct {
	procs []cluster.Component // with a pid on this machine
	// writerIsClient: the benchmark process is itself the writer (bench
	// commit runs the volume client in-process).
	writerIsClient bool
	// nodes: each storage node's Stats, for the bytes its store wrote to
	// its files (the node counts them; /proc's per-process count of disk
	// writes overstates them, see procstat).
	nodes map[string]pb.StorageClient
	conns []*grpc.ClientConn
}

// newCostMeter meters the components with a pid that /proc can read.
// Components on other machines (or gone) are left out, and named in the
// returned error-free list of skipped ids.
func newCostMeter(comps []cluster.Component, writerIsClient bool) (*costMeter, []string) {
	m := &costMeter{writerIsClient: writerIsClient, nodes: map[string]pb.StorageClient{}}
	var skipped []string
	for _, c := range comps {
		if c.Role == "storage" {
			if conn, err := grpc.NewClient(c.Addr, grpc.WithTransportCredentials(insecure.NewCredentials())); err == nil {
				m.conns = append(m.conns, conn)
				m.nodes[c.ID] = pb.NewStorageClient(conn)
			}
		}
		if c.Pid <= 0 {
			skipped = append(skipped, c.ID)
			continue
		}
		if _, err := procstat.Read(c.Pid); err != nil {
			skipped = append(skipped, c.ID)
			continue
		}
		m.procs = append(m.procs, c)
	}
	return m, skipped
}

// close releases the meter's connections.
func (m *costMeter) close() {
	for _, c := range m.conns {
		c.Close()
	}
}

// costSample is every metered process's usage at one moment, and every
// storage node's file bytes written.
type costSample struct {
	self      procstat.Usage
	procs     map[string]procstat.Usage
	fileBytes map[string]uint64
	// device is the machine's block devices' bytes written (0: unknown);
	// ctxt, its context switches (0: unknown).
	device, ctxt uint64
}

func (m *costMeter) sample(ctx context.Context) costSample {
	s := costSample{procs: map[string]procstat.Usage{}, fileBytes: map[string]uint64{}}
	s.self, _ = procstat.Read(0)
	s.device, _ = procstat.DeviceWritten()
	s.ctxt, _ = procstat.ContextSwitches()
	for _, c := range m.procs {
		// A process that died mid-level is left out of the level's figures.
		if u, err := procstat.Read(c.Pid); err == nil {
			s.procs[c.ID] = u
		}
	}
	for id, st := range m.nodes {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if r, err := st.Stats(sctx, &pb.StatsRequest{}); err == nil {
			s.fileBytes[id] = r.FileBytesWritten
		}
		cancel()
	}
	return s
}

// componentCPU is CPU microseconds per transaction, by component.
type componentCPU struct {
	Writer float64 `json:"writer"`
	// StoragePerNode is the mean over the storage nodes; Storage their sum.
	StoragePerNode float64 `json:"storage_per_node"`
	Storage        float64 `json:"storage"`
	// Control sums the control planes.
	Control  float64 `json:"control"`
	Replicas float64 `json:"replicas,omitempty"`
	Router   float64 `json:"router,omitempty"`
	// Client is the benchmark process; with bench commit it is the writer
	// too, and counted as the writer only.
	Client float64 `json:"client"`
	Total  float64 `json:"total"`
}

// levelCost is what a level cost, per transaction.
type levelCost struct {
	CPU componentCPU
	// StorageCPUByNode and DiskBytesByNode: per storage node, per
	// transaction.
	StorageCPUByNode map[string]float64
	DiskBytesByNode  map[string]float64
	// DiskBytesPerNode is the mean of DiskBytesByNode.
	DiskBytesPerNode float64
	// DeviceBytes is what the machine's disks took per transaction, from
	// every process and the file system: an upper bound of the cluster's
	// own writes, the 4 KiB blocks each sync writes whole included.
	DeviceBytes float64
	// ContextSwitches is the machine's, every process's, per transaction.
	ContextSwitches float64
	// StorageCPUPerRecord is the mean storage node's CPU per redo record it
	// received (records: the writer's, each sent to every node of its PG).
	StorageCPUPerRecord float64
}

// cost turns two samples around a level of txns transactions (and records
// redo records, 0 if unknown) into per-transaction figures.
func (m *costMeter) cost(a, b costSample, txns, records float64) levelCost {
	us := func(u procstat.Usage) float64 { return float64(u.CPU.Microseconds()) / txns }
	lc := levelCost{StorageCPUByNode: map[string]float64{}, DiskBytesByNode: map[string]float64{}}
	for _, c := range m.procs {
		ua, okA := a.procs[c.ID]
		ub, okB := b.procs[c.ID]
		if !okA || !okB {
			continue
		}
		d := ub.Sub(ua)
		switch c.Role {
		case "storage":
			lc.StorageCPUByNode[c.ID] = us(d)
			lc.CPU.Storage += us(d)
		case "writer":
			lc.CPU.Writer += us(d)
		case "replica":
			lc.CPU.Replicas += us(d)
		case "router":
			lc.CPU.Router += us(d)
		case "control":
			lc.CPU.Control += us(d)
		}
	}
	if b.ctxt >= a.ctxt && a.ctxt > 0 {
		lc.ContextSwitches = float64(b.ctxt-a.ctxt) / txns
	}
	if b.device >= a.device && a.device > 0 {
		lc.DeviceBytes = float64(b.device-a.device) / txns
	}
	for id, fb := range b.fileBytes {
		if fa, ok := a.fileBytes[id]; ok && fb >= fa {
			lc.DiskBytesByNode[id] = float64(fb-fa) / txns
		}
	}
	self := us(b.self.Sub(a.self))
	if m.writerIsClient {
		lc.CPU.Writer += self
	} else {
		lc.CPU.Client = self
	}
	if n := len(lc.DiskBytesByNode); n > 0 {
		var disk float64
		for _, v := range lc.DiskBytesByNode {
			disk += v
		}
		lc.DiskBytesPerNode = disk / float64(n)
	}
	if n := len(lc.StorageCPUByNode); n > 0 {
		lc.CPU.StoragePerNode = lc.CPU.Storage / float64(n)
		if records > 0 {
			lc.StorageCPUPerRecord = lc.CPU.StoragePerNode * txns / records
		}
	}
	c := lc.CPU
	lc.CPU.Total = c.Writer + c.Storage + c.Control + c.Replicas + c.Router + c.Client
	return lc
}

// spaceReport is each storage node's disk footprint against the live
// database size, taken when the benchmark ends.
type spaceReport struct {
	LiveBytes int64 `json:"live_bytes"`
	// FootprintBytes: per node, the blocks its directory takes.
	FootprintBytes map[string]int64 `json:"footprint_bytes_by_node"`
	// FootprintOverLive is the largest node's footprint over LiveBytes.
	FootprintOverLive float64 `json:"footprint_over_live"`
}

// space measures the storage nodes' directories against live bytes.
func space(comps []cluster.Component, live int64) (*spaceReport, error) {
	r := &spaceReport{LiveBytes: live, FootprintBytes: map[string]int64{}}
	var largest int64
	for _, c := range comps {
		if c.Role != "storage" || c.Dir == "" {
			continue
		}
		n, err := procstat.DirBytes(c.Dir)
		if err != nil {
			return nil, fmt.Errorf("%s's directory %s: %w", c.ID, c.Dir, err)
		}
		r.FootprintBytes[c.ID] = n
		largest = max(largest, n)
	}
	if len(r.FootprintBytes) == 0 {
		return nil, nil
	}
	if live > 0 {
		r.FootprintOverLive = float64(largest) / float64(live)
	}
	return r, nil
}

// printCosts prints each level's CPU per transaction by component, and disk
// bytes written per transaction per node.
func printCosts(out io.Writer, unit string, levels []int, costs []componentCPU, disk, device, ctxt, perRecord []float64) {
	if len(costs) == 0 {
		return
	}
	fmt.Fprintf(out, "\nCPU µs per %s, from /proc of each process over the level; file B/node: bytes each storage node's store wrote to its files per %s; device B: what the machine's disks took per %s, from every process; ctx sw: the machine's context switches per %s\n", unit, unit, unit, unit)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "clients\twriter\tstorage/node\tstorage µs/record/node\tstorage (all)\tcontrol\treplicas\trouter\tclient\ttotal\tfile B/node\tdevice B\tctx sw\t")
	for i, c := range costs {
		fmt.Fprintf(tw, "%d\t%.0f\t%.1f\t%.1f\t%.0f\t%.1f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.1f\t\n", levels[i], c.Writer, c.StoragePerNode, perRecord[i], c.Storage, c.Control, c.Replicas, c.Router, c.Client, c.Total, disk[i], device[i], ctxt[i])
	}
	tw.Flush()
}

// printSpace prints a space report.
func printSpace(out io.Writer, r *spaceReport) {
	if r == nil {
		return
	}
	ids := sortedIDs(r.FootprintBytes)
	fmt.Fprintf(out, "\nspace: live database %s; storage footprint per node:", formatSize(uint64(r.LiveBytes)))
	for _, id := range ids {
		fmt.Fprintf(out, " %s %s", id, formatSize(uint64(r.FootprintBytes[id])))
	}
	fmt.Fprintf(out, "; largest/live %.2fx\n", r.FootprintOverLive)
}

// sortedIDs is the keys of m, sorted.
func sortedIDs[V any](m map[string]V) []string {
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// fetchCPUProfiles fetches a CPU profile of each target (id: its --metrics
// address; empty ones are skipped) over about d, into dir/name-id.pprof,
// and returns what waits for them. Failures are reported on progress.
func fetchCPUProfiles(ctx context.Context, targets map[string]string, dir, name string, d time.Duration, progress io.Writer) func() {
	secs := max(1, int(d.Seconds())-1)
	var wg sync.WaitGroup
	for id, addr := range targets {
		if addr == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := filepath.Join(dir, name+"-"+id+".pprof")
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, secs), nil)
			if err != nil {
				return
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				fmt.Fprintf(progress, "profile of %s: %v\n", id, err)
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("%s: %s", resp.Status, b)
			}
			if err == nil {
				err = os.WriteFile(path, b, 0o644)
			}
			if err != nil {
				fmt.Fprintf(progress, "profile of %s: %v\n", id, err)
			}
		}()
	}
	// The benchmark's own process, the load client, profiled over the
	// same seconds.
	path := filepath.Join(dir, name+"-client.pprof")
	f, err := os.Create(path)
	if err == nil {
		if err = pprof.StartCPUProfile(f); err != nil {
			f.Close()
		}
	}
	if err != nil {
		fmt.Fprintf(progress, "profile of the client: %v\n", err)
		return wg.Wait
	}
	stopped := make(chan struct{})
	stop := time.AfterFunc(time.Duration(secs)*time.Second, func() {
		pprof.StopCPUProfile()
		close(stopped)
	})
	return func() {
		wg.Wait()
		if stop.Stop() {
			pprof.StopCPUProfile()
		} else {
			<-stopped
		}
		if err := f.Close(); err != nil {
			fmt.Fprintf(progress, "profile of the client: %v\n", err)
		}
	}
}
