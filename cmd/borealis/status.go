package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/storage"
)

// statusReport is what `borealis status --json` prints.
type statusReport struct {
	Nodes   []nodeReport   `json:"nodes"`
	Volumes []volumeReport `json:"volumes"`
	Writers []writerReport `json:"writers"`
	// HeartbeatTimeoutMs is how long a node may miss heartbeats before it is
	// shown down.
	HeartbeatTimeoutMs uint32 `json:"heartbeat_timeout_ms"`
}

type nodeReport struct {
	ID    string `json:"id"`
	AZ    string `json:"az"`
	Addr  string `json:"addr"`
	State string `json:"state"`
	// HeartbeatAgeMs is the time since the last heartbeat; -1 if none.
	HeartbeatAgeMs int64 `json:"heartbeat_age_ms"`
}

type volumeReport struct {
	Name          string `json:"name"`
	ID            uint64 `json:"id"`
	VolumeEpoch   uint64 `json:"volume_epoch"`
	GeometryEpoch uint64 `json:"geometry_epoch"`
	// VDL is the writer's own (exact, on a consistency point) when a
	// writer listed in cluster.json answers; else the durable LSN as the
	// segments show it: the highest PG complete LSN (a PG's 4th highest
	// SCL), a lower bound when a PG has fewer than 4 segments answering.
	VDL uint64 `json:"vdl"`
	// VDLSource says which: "writer", "segments" (every segment answered),
	// "segments, lower bound" (some did not, but every PG had 4 that did),
	// or "unknown" (some PG had fewer than 4 answering, and no writer).
	VDLSource   string     `json:"vdl_source"`
	PageSize    uint32     `json:"page_size"`
	PGSizeBytes uint64     `json:"pg_size_bytes"`
	SizeBytes   uint64     `json:"size_bytes"`
	PGs         []pgReport `json:"pgs"`
}

type pgReport struct {
	ID              uint32 `json:"id"`
	MembershipEpoch uint64 `json:"membership_epoch"`
	PGCL            uint64 `json:"pgcl"`
	// PGCLBound says what pgcl is: "exact" (every segment answered),
	// "at_least" (4 or 5 did: their 4th highest SCL, which the others can
	// only raise), or "unknown" (fewer than 4 did; pgcl is 0).
	PGCLBound string          `json:"pgcl_bound"`
	Segments  []segmentReport `json:"segments"`
}

type segmentReport struct {
	Node string `json:"node"`
	AZ   string `json:"az"`
	Addr string `json:"addr"`
	SCL  uint64 `json:"scl"`
	// Empty: the node holds nothing of this PG yet (nothing was written).
	Empty bool   `json:"empty,omitempty"`
	Error string `json:"error,omitempty"`
}

type writerReport struct {
	Volume string `json:"volume"`
	Holder string `json:"holder"`
	Epoch  uint64 `json:"epoch"`
	// From the writer's own /v1/health, when the cluster.json of --dir
	// lists it: its SQL endpoint, its VDL (the exact one, on a consistency
	// point), and whether it serves.
	Endpoint string `json:"endpoint,omitempty"`
	VDL      uint64 `json:"vdl,omitempty"`
	Ready    *bool  `json:"ready,omitempty"`
	State    string `json:"state,omitempty"`
	// Unreachable: cluster.json lists the holder, but its endpoint does
	// not answer (why); the lease lasts until its TTL runs out.
	Unreachable string `json:"unreachable,omitempty"`
}

func statusCmd() *cobra.Command {
	var where controlAddrFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [--dir D | --control ADDR] [--json]",
		Short: "Show the cluster: nodes and their state, volumes, PGs with each segment's SCL, writers",
		Args:  noArgs(""),
		RunE: func(cmd *cobra.Command, args []string) error {
			control, err := where.addr()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			rep, err := gatherStatus(ctx, control)
			if err != nil {
				return err
			}
			if where.control == "" {
				addWriterHealth(ctx, rep, filepath.Join(where.dir, clusterFileName))
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			printStatus(cmd.OutOrStdout(), rep)
			return nil
		},
	}
	where.register(cmd)
	f := cmd.Flags()
	f.BoolVar(&asJSON, "json", false, "print one JSON object")
	return cmd
}

func gatherStatus(ctx context.Context, control string) (*statusReport, error) {
	conn, err := grpc.NewClient(control, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	st, err := pb.NewControlClient(conn).Status(ctx, &pb.StatusRequest{})
	if err != nil {
		return nil, fmt.Errorf("control plane at %s: %w", control, err)
	}
	rep := &statusReport{HeartbeatTimeoutMs: st.HeartbeatTimeoutMs, Nodes: []nodeReport{}, Volumes: []volumeReport{}, Writers: []writerReport{}}
	for _, n := range st.Nodes {
		rep.Nodes = append(rep.Nodes, nodeReport{ID: n.Id, AZ: n.Az, Addr: n.Addr, State: n.State, HeartbeatAgeMs: n.HeartbeatAgeMs})
	}
	sort.Slice(rep.Nodes, func(i, j int) bool { return rep.Nodes[i].ID < rep.Nodes[j].ID })
	for _, w := range st.Writers {
		rep.Writers = append(rep.Writers, writerReport{Volume: w.Volume, Holder: w.Holder, Epoch: w.Epoch})
	}
	addrOf, stateOf := map[string]string{}, map[string]string{}
	for _, n := range st.Nodes {
		addrOf[n.Id], stateOf[n.Id] = n.Addr, n.State
	}
	// Build the report with every segment, then ask each node for all of
	// its segments' SCLs at once, over one connection, all nodes in
	// parallel: a hung node costs one timeout, not one per segment.
	type ask struct {
		vol uint64
		pg  uint32
		seg *segmentReport
	}
	perNode := map[string][]ask{}
	for _, v := range st.Volumes {
		vr := volumeReport{Name: v.Name, ID: v.Id, VolumeEpoch: v.VolumeEpoch, GeometryEpoch: v.GeometryEpoch,
			PageSize: v.PageSize, PGSizeBytes: v.PgSizeBytes, SizeBytes: v.SizeBytes}
		for _, pg := range v.PgList {
			pr := pgReport{ID: pg.Pg, MembershipEpoch: pg.MembershipEpoch}
			for _, s := range pg.Segments {
				addr := addrOf[s.Node]
				if addr == "" {
					addr = s.Addr
				}
				pr.Segments = append(pr.Segments, segmentReport{Node: s.Node, AZ: s.Az, Addr: addr})
			}
			vr.PGs = append(vr.PGs, pr)
		}
		rep.Volumes = append(rep.Volumes, vr)
	}
	for vi := range rep.Volumes {
		vr := &rep.Volumes[vi]
		for pi := range vr.PGs {
			pr := &vr.PGs[pi]
			for si := range pr.Segments {
				sr := &pr.Segments[si]
				if stateOf[sr.Node] == "down" {
					sr.Error = nodeDown
					continue
				}
				perNode[sr.Node] = append(perNode[sr.Node], ask{vr.ID, pr.ID, sr})
			}
		}
	}
	var wg sync.WaitGroup
	for node, asks := range perNode {
		wg.Add(1)
		go func(addr string, asks []ask) {
			defer wg.Done()
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				for _, a := range asks {
					a.seg.Error = shortErr(err)
				}
				return
			}
			defer conn.Close()
			client := pb.NewStorageClient(conn)
			for i, a := range asks {
				cctx, cancel := context.WithTimeout(ctx, time.Second)
				info, err := client.SegmentInfo(cctx, &pb.SegmentInfoRequest{Volume: a.vol, Pg: a.pg})
				cancel()
				switch {
				case err == nil:
					a.seg.SCL = info.Scl
				case storage.ReasonOf(err) == pb.Reason_PG_NOT_HOSTED:
					// The node creates the segment with its first records.
					a.seg.Empty = true
				default:
					// A node that does not answer one question will not
					// answer the next ones either.
					for _, rest := range asks[i:] {
						rest.seg.Error = shortErr(err)
					}
					return
				}
			}
		}(addrOf[node], asks)
	}
	wg.Wait()
	for vi := range rep.Volumes {
		vr := &rep.Volumes[vi]
		for pi := range vr.PGs {
			pr := &vr.PGs[pi]
			scls := make([]uint64, 0, len(pr.Segments))
			for _, sr := range pr.Segments {
				if sr.Error == "" {
					scls = append(scls, sr.SCL)
				}
			}
			sort.Slice(scls, func(i, j int) bool { return scls[i] > scls[j] })
			switch {
			case len(scls) < 4:
				pr.PGCLBound = "unknown"
				vr.VDLSource = "unknown"
			case len(scls) < len(pr.Segments):
				pr.PGCL, pr.PGCLBound = scls[3], "at_least"
				if vr.VDLSource == "" {
					vr.VDLSource = "segments, lower bound"
				}
			default:
				pr.PGCL, pr.PGCLBound = scls[3], "exact"
			}
			vr.VDL = max(vr.VDL, pr.PGCL)
		}
		switch vr.VDLSource {
		case "":
			vr.VDLSource = "segments"
		case "unknown":
			vr.VDL = 0
		}
	}
	return rep, nil
}

// nodeDown is a segment's error when the control plane has its node down.
const nodeDown = "node is down"

func shortErr(err error) string {
	s := err.Error()
	if i := strings.Index(s, "desc = "); i >= 0 {
		s = s[i+len("desc = "):]
	}
	return s
}

func printStatus(out io.Writer, rep *statusReport) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "NODE\tAZ\tADDRESS\tSTATE\tHEARTBEAT\n")
	for _, n := range rep.Nodes {
		state := n.State
		if state != "up" {
			state = "DOWN  <--"
		}
		age := "never"
		if n.HeartbeatAgeMs >= 0 {
			age = (time.Duration(n.HeartbeatAgeMs) * time.Millisecond).Round(100*time.Millisecond).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.ID, n.AZ, n.Addr, state, age)
	}
	tw.Flush()
	for _, v := range rep.Volumes {
		vdl := fmt.Sprintf("VDL %d (the writer's)", v.VDL)
		switch v.VDLSource {
		case "segments":
			vdl = fmt.Sprintf("VDL %d (from segments)", v.VDL)
		case "segments, lower bound":
			vdl = fmt.Sprintf("VDL at least %d (from segments; not all of them answer)", v.VDL)
		case "unknown":
			vdl = "VDL unknown (a PG has fewer than 4 segments answering, and no writer answers)"
		}
		fmt.Fprintf(out, "\nVOLUME %s (id %d): volume epoch %d, geometry epoch %d, %s, %d PG(s) of %s, %s\n",
			v.Name, v.ID, v.VolumeEpoch, v.GeometryEpoch, vdl, len(v.PGs), formatSize(v.PGSizeBytes), formatSize(v.SizeBytes))
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "  PG\tEPOCH\tPGCL\tSEGMENTS (node/AZ: SCL)\n")
		for _, pg := range v.PGs {
			var segs []string
			for _, s := range pg.Segments {
				scl := fmt.Sprint(s.SCL)
				if s.Empty {
					scl = "empty"
				}
				switch {
				case s.Error == nodeDown:
					scl = "DOWN"
				case s.Error != "":
					scl = "UNREACHABLE"
				}
				segs = append(segs, fmt.Sprintf("%s/%s: %s", s.Node, s.AZ, scl))
			}
			pgcl := fmt.Sprint(pg.PGCL)
			switch pg.PGCLBound {
			case "unknown":
				pgcl = "?"
			case "at_least":
				pgcl = fmt.Sprintf(">=%d", pg.PGCL)
			}
			fmt.Fprintf(tw, "  %d\t%d\t%s\t%s\n", pg.ID, pg.MembershipEpoch, pgcl, strings.Join(segs, "  "))
		}
		tw.Flush()
	}
	if len(rep.Writers) == 0 {
		fmt.Fprintln(out, "\nWRITERS: none")
	}
	for _, w := range rep.Writers {
		fmt.Fprintf(out, "\nWRITER of %s: %s, epoch %d", w.Volume, w.Holder, w.Epoch)
		switch {
		case w.Unreachable != "":
			fmt.Fprintf(out, ", SQL at %s, UNREACHABLE  <-- (%s)", w.Endpoint, w.Unreachable)
		case w.Endpoint != "":
			fmt.Fprintf(out, ", SQL at %s, VDL %d, %s", w.Endpoint, w.VDL, w.State)
		}
		fmt.Fprintln(out)
	}
}

// addWriterHealth adds what the writers listed in a cluster.json say of
// themselves on /v1/health. A writer that does not answer is left as the
// catalog shows it.
func addWriterHealth(ctx context.Context, rep *statusReport, clusterFile string) {
	cf, err := cluster.ReadFile(clusterFile)
	if err != nil {
		return
	}
	for _, c := range cf.Components {
		if c.Role != "writer" {
			continue
		}
		h, err := (&sqlclient.Client{Endpoint: "http://" + c.Addr}).Health(ctx)
		if err != nil {
			for i := range rep.Writers {
				if w := &rep.Writers[i]; w.Holder == c.ID {
					notReady := false
					w.Endpoint, w.Ready, w.Unreachable = "http://"+c.Addr, &notReady, shortErr(err)
				}
			}
			continue
		}
		for i := range rep.Writers {
			if w := &rep.Writers[i]; w.Volume == h.Volume && w.Epoch == h.Epoch {
				ready := h.Ready
				w.Endpoint, w.VDL, w.Ready, w.State = "http://"+c.Addr, h.VDL, &ready, h.Status
				for j := range rep.Volumes {
					if v := &rep.Volumes[j]; v.Name == h.Volume && h.VDL > 0 {
						v.VDL, v.VDLSource = h.VDL, "writer"
					}
				}
			}
		}
	}
}
