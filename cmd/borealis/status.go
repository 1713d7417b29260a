package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
	ctlplane "github.com/borealis-db/borealis/internal/control"
	"github.com/borealis-db/borealis/internal/router"
	"github.com/borealis-db/borealis/internal/sqlclient"
)

// statusReport is what `borealis status --json` prints.
type statusReport struct {
	Nodes   []nodeReport   `json:"nodes"`
	Volumes []volumeReport `json:"volumes"`
	Writers []writerReport `json:"writers"`
	// HeartbeatTimeoutMs is how long a node may miss heartbeats before it is
	// shown down.
	HeartbeatTimeoutMs uint32 `json:"heartbeat_timeout_ms"`
	// RepairAfterMs is how long a node may be down before repair replaces
	// its segments (0 from a control plane that does not say).
	RepairAfterMs uint32 `json:"repair_after_ms"`
	// Instances are the database instances, writers and replicas, of every
	// volume: the catalog's records (Control.ListInstances) with what each
	// says of itself on /v1/health, and those cluster.json lists that have
	// no record (starting, or stopped).
	Instances []instanceReport `json:"instances"`
	// InstancesError says why the catalog could not list the instances.
	InstancesError string `json:"instances_error,omitempty"`
	// Routers are the routers cluster.json lists.
	Routers []routerReport `json:"routers,omitempty"`
	// ControlPlanes are the control-plane processes, each asked in turn
	// (status_controlplanes.go); ControlLeader names the one that leads,
	// or ControlLeaderError says why none does.
	ControlPlanes      []controlPlaneReport `json:"control_planes"`
	ControlLeader      string               `json:"control_leader,omitempty"`
	ControlLeaderError string               `json:"control_leader_error,omitempty"`
}

// instanceReport is one database instance.
type instanceReport struct {
	Volume string `json:"volume"`
	ID     string `json:"id"`
	// Role is "writer" or "replica".
	Role string `json:"role"`
	AZ   string `json:"az"`
	// Endpoint is its SQL API, as an URL.
	Endpoint string `json:"endpoint"`
	// Epoch is the writer's; a replica's is the epoch of the stream it
	// follows.
	Epoch uint64 `json:"epoch"`
	// VDL is the writer's; a replica's is the VDL it has applied.
	VDL uint64 `json:"vdl"`
	// LagLSN is how far a replica's applied VDL is behind the writer's VDL
	// as the replica knows it, and LagMS for how long it has been behind
	// (0 when caught up); 0 on a writer. An instance that does not answer
	// has LagLSN from the catalog's records (the writer's VDL minus its
	// own, each up to a lease renewal old), and LagMS -1 (unknown).
	LagLSN uint64  `json:"lag_lsn"`
	LagMS  float64 `json:"lag_ms"`
	// ReadPoint is the oldest read point the instance pins; the writer's
	// is the volume's PGMRPL.
	ReadPoint uint64 `json:"read_point"`
	// State is what it does: a writer "ready", or what it waits for; a
	// replica its stream, "streaming", "connecting" or "stale"; "not
	// registered" for an instance cluster.json lists that neither is in
	// the catalog nor answers.
	State string `json:"state"`
	// Ready says whether it serves, from its /v1/health.
	Ready *bool `json:"ready,omitempty"`
	// WriterVDL (a replica) is the writer's VDL as the replica knows it;
	// Resyncs how often it dropped its cache to catch up past a gap.
	WriterVDL uint64 `json:"writer_vdl,omitempty"`
	Resyncs   uint64 `json:"resyncs,omitempty"`
	// Registered: the catalog has a record of it.
	Registered bool `json:"registered"`
	// Source says where the figures come from: "health" (the instance
	// answered) or "catalog" (its record; it did not answer).
	Source string `json:"source"`
	// Unreachable says why its /v1/health did not answer.
	Unreachable string `json:"unreachable,omitempty"`
}

// routerReport is a router that cluster.json lists.
type routerReport struct {
	ID              string `json:"id"`
	ClusterEndpoint string `json:"cluster_endpoint"`
	ReaderEndpoint  string `json:"reader_endpoint"`
	// Writer is where its cluster endpoint sends requests; Candidates the
	// replicas its reader endpoint balances queries over now.
	Writer     string   `json:"writer,omitempty"`
	Candidates []string `json:"candidates"`
	// Unreachable says why its /v1/health did not answer.
	Unreachable string `json:"unreachable,omitempty"`
}

type nodeReport struct {
	ID    string `json:"id"`
	AZ    string `json:"az"`
	Addr  string `json:"addr"`
	State string `json:"state"`
	// HeartbeatAgeMs is the time since the last heartbeat; -1 if none.
	HeartbeatAgeMs int64 `json:"heartbeat_age_ms"`
	// Admin is "draining" (node drain) or "removed" (node remove); absent
	// for a node in service.
	Admin string `json:"admin,omitempty"`
	// Segments is how many segments the node holds, a joining one counted
	// from the start of its change.
	Segments uint32 `json:"segments"`
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
	VDLSource string `json:"vdl_source"`
	// PGMRPL is the lowest read point of any of the volume's instances,
	// below which storage may collect page versions: the writer's
	// read_point (0 without a writer).
	PGMRPL      uint64 `json:"pgmrpl"`
	PageSize    uint32 `json:"page_size"`
	PGSizeBytes uint64 `json:"pg_size_bytes"`
	SizeBytes   uint64 `json:"size_bytes"`
	// PGCounts counts the PGs by state: "healthy" (every segment
	// answered, none hydrating), "degraded" (4 or 5 did, not hydrating:
	// writes go on), "no_quorum" (fewer than 4 did: writes to the PG wait).
	PGCounts map[string]int `json:"pg_counts"`
	// PGsListed says which PGs PGs lists: "not_healthy" (the default, so a
	// volume of thousands of PGs prints what needs attention: those not
	// healthy, and those in a membership change or waiting for capacity)
	// or "all" (--pgs).
	PGsListed string     `json:"pgs_listed"`
	PGs       []pgReport `json:"pgs"`
	// PGsInChange counts the PGs in a membership change (repair, drain);
	// PGsWaiting those degraded with no spare node in a failed member's AZ.
	PGsInChange int `json:"pgs_in_change"`
	PGsWaiting  int `json:"pgs_waiting_for_capacity"`
	// WriterLease is the volume's writer lease now (absent when nobody
	// holds it); LastFailover the volume's current or last failover.
	WriterLease  *writerLeaseReport `json:"writer_lease,omitempty"`
	LastFailover *failoverJSON      `json:"last_failover,omitempty"`
}

type writerLeaseReport struct {
	Holder string `json:"holder"`
	Epoch  uint64 `json:"epoch"`
	// AgeMS is how long the holder has held it (the control plane's clock).
	AgeMS int64  `json:"age_ms"`
	TTLMS uint32 `json:"ttl_ms"`
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
	// Change is the membership change under way, if any; the PG's state
	// and PGCL are its current set's (segments), which the change leaves
	// until the joining segment is complete.
	Change *changeReport `json:"change,omitempty"`
	// WaitingForCapacityAZ: a member failed (WaitingMember) and no live
	// node of this AZ can take its segment; the PG stays degraded, writes
	// go on, until a node joins the AZ. Waiting says so in words.
	WaitingForCapacityAZ string `json:"waiting_for_capacity_az,omitempty"`
	WaitingMember        string `json:"waiting_member,omitempty"`
	Waiting              string `json:"waiting,omitempty"`
}

// changeReport is a PG's membership change: Leaving's segment moves to
// Joining, which hydrates from the PG's other members.
type changeReport struct {
	Leaving string `json:"leaving"`
	Joining string `json:"joining"`
	// Reason: "down", "removed" or "drain".
	Reason          string `json:"reason"`
	StartedAtUnixMs int64  `json:"started_at_unix_ms"`
	// NextSegments is the set the PG moves to.
	NextSegments []segmentReport `json:"next_segments"`
	// JoiningSCL is the joining segment's SCL, and OfSCL the highest SCL
	// among the current set's segments that answered: its progress (it is
	// complete once it holds what the old set held when the change began,
	// and stops hydrating): its progress in LSNs, beside the bytes below.
	JoiningSCL   uint64 `json:"joining_scl"`
	OfSCL        uint64 `json:"of_scl"`
	JoiningEmpty bool   `json:"joining_empty,omitempty"`
	JoiningError string `json:"joining_error,omitempty"`
	// Hydrating: the joining segment still copies the PG from a peer (its
	// SegmentInfo); its progress is hydrationReport's.
	Hydrating bool `json:"hydrating"`
	hydrationReport
}

// hydrationReport is a copy's progress as the hydrating segment's node
// reports it: BytesCopied of BytesTotal page bytes (the total is 0 until
// the source has said), at the node's RateBytesPerS since the copy began
// or resumed, with ETAS seconds left at that rate (both omitted while they
// cannot be told).
type hydrationReport struct {
	BytesCopied   uint64  `json:"bytes_copied"`
	BytesTotal    uint64  `json:"bytes_total"`
	RateBytesPerS float64 `json:"rate_bytes_per_s,omitempty"`
	ETAS          float64 `json:"eta_s,omitempty"`
}

func hydrationOf(info *pb.SegmentInfoResponse) hydrationReport {
	h := hydrationReport{BytesCopied: info.GetHydrateBytesCopied(), BytesTotal: info.GetHydrateBytesTotal()}
	if rate := info.GetHydrateRateBytesPerSecond(); rate > 0 {
		h.RateBytesPerS = rate
		if left := float64(h.BytesTotal) - float64(h.BytesCopied); h.BytesTotal > 0 && left >= 0 {
			h.ETAS = left / rate
		}
	}
	return h
}

// String is the progress in words: "3MiB of 8MiB copied, 1MiB/s, about 5s
// left".
func (h hydrationReport) String() string {
	out := formatSize(h.BytesCopied) + " copied"
	if h.BytesTotal > 0 {
		out = fmt.Sprintf("%s of %s copied", formatSize(h.BytesCopied), formatSize(h.BytesTotal))
	}
	if h.RateBytesPerS > 0 {
		out += fmt.Sprintf(", %s/s", formatSize(uint64(h.RateBytesPerS)))
		if h.BytesTotal > 0 {
			out += fmt.Sprintf(", about %s left", time.Duration(h.ETAS*float64(time.Second)).Round(time.Second))
		}
	}
	return out
}

type segmentReport struct {
	Node string `json:"node"`
	AZ   string `json:"az"`
	Addr string `json:"addr"`
	SCL  uint64 `json:"scl"`
	// Empty: the node holds nothing of this PG yet (nothing was written).
	Empty bool `json:"empty,omitempty"`
	// Hydrating: the segment copies its PG from a peer (it joins, or is
	// rebuilt in place) and counts toward no quorum until it is done;
	// Hydration is its progress (a segment of the current set: a joining
	// one's is its change's).
	Hydrating bool             `json:"hydrating,omitempty"`
	Hydration *hydrationReport `json:"hydration,omitempty"`
	Error     string           `json:"error,omitempty"`
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

// PG states, as status counts them.
const (
	pgHealthy  = "healthy"
	pgDegraded = "degraded"
	pgNoQuorum = "no_quorum"
)

func statusCmd() *cobra.Command {
	var where controlAddrFlags
	var asJSON, allPGs bool
	cmd := &cobra.Command{
		Use:   "status [--dir D | --control ADDR] [--json]",
		Short: "Show the cluster: nodes and their state, volumes, PGs with each segment's SCL, writers, replicas and their lag, the router",
		Args:  noArgs(""),
		RunE: func(cmd *cobra.Command, args []string) error {
			control, err := where.addr()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			rep, err := gatherStatus(ctx, control, allPGs)
			if err != nil {
				// The catalog did not answer: say which control planes
				// do, and who leads, before the error.
				if !asJSON {
					var cf *cluster.File
					if where.control == "" {
						cf, _ = cluster.ReadFile(filepath.Join(where.dir, clusterFileName))
					}
					cp := &statusReport{}
					// Its own time: the failed call may have used all of ctx's.
					cctx, ccancel := context.WithTimeout(cmd.Context(), 2*controlPlaneAskTimeout)
					addControlPlanes(cctx, cp, control, cf)
					ccancel()
					printControlPlanes(cmd.OutOrStdout(), cp)
				}
				return err
			}
			var cf *cluster.File
			if where.control == "" {
				clusterFile := filepath.Join(where.dir, clusterFileName)
				addWriterHealth(ctx, rep, clusterFile)
				cf, _ = cluster.ReadFile(clusterFile)
			}
			addInstances(ctx, rep, control, cf)
			addControlPlanes(ctx, rep, control, cf)
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
	f.BoolVar(&allPGs, "pgs", false, "list every PG with its segments, not only those that are not healthy (each volume's counts by state are always given)")
	return cmd
}

func gatherStatus(ctx context.Context, control string, allPGs bool) (*statusReport, error) {
	conn, err := ctlplane.Dial(control)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctl := pb.NewControlClient(conn)
	st, err := ctl.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		return nil, fmt.Errorf("control plane at %s: %w", control, err)
	}
	rep := &statusReport{HeartbeatTimeoutMs: st.HeartbeatTimeoutMs, RepairAfterMs: st.RepairAfterMs, Nodes: []nodeReport{}, Volumes: []volumeReport{}, Writers: []writerReport{}}
	for _, n := range st.Nodes {
		rep.Nodes = append(rep.Nodes, nodeReport{ID: n.Id, AZ: n.Az, Addr: n.Addr, State: n.State, HeartbeatAgeMs: n.HeartbeatAgeMs, Admin: n.Admin, Segments: n.Segments})
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
	// its segments' SCLs at once (SegmentSCLs, one call per volume), all
	// nodes in parallel: a hung node costs one timeout, not one per
	// segment, and a volume of thousands of PGs costs a few calls.
	type ask struct {
		vol uint64
		pg  uint32
		seg *segmentReport
	}
	perNode := map[string][]ask{}
	for _, v := range st.Volumes {
		vr := volumeReport{Name: v.Name, ID: v.Id, VolumeEpoch: v.VolumeEpoch, GeometryEpoch: v.GeometryEpoch,
			PageSize: v.PageSize, PGSizeBytes: v.PgSizeBytes, SizeBytes: v.SizeBytes,
			PGCounts: map[string]int{pgHealthy: 0, pgDegraded: 0, pgNoQuorum: 0}}
		for _, pg := range v.PgList {
			pr := pgReport{ID: pg.Pg, MembershipEpoch: pg.MembershipEpoch}
			seg := func(s *pb.SegmentInfo) segmentReport {
				addr := addrOf[s.Node]
				if addr == "" {
					addr = s.Addr
				}
				return segmentReport{Node: s.Node, AZ: s.Az, Addr: addr}
			}
			for _, s := range pg.Segments {
				pr.Segments = append(pr.Segments, seg(s))
			}
			if ch := pg.Change; ch != nil {
				pr.Change = &changeReport{Leaving: ch.Leaving, Joining: ch.Joining, Reason: ch.Reason, StartedAtUnixMs: ch.StartedAtUnixMs, NextSegments: []segmentReport{}}
				for _, s := range pg.NextSegments {
					pr.Change.NextSegments = append(pr.Change.NextSegments, seg(s))
				}
				vr.PGsInChange++
			}
			if az := pg.WaitingForCapacityAz; az != "" {
				pr.WaitingForCapacityAZ, pr.WaitingMember = az, pg.WaitingMember
				pr.Waiting = fmt.Sprintf("waiting for capacity in AZ %s: %s failed and no live node of AZ %s can take its segment", az, pg.WaitingMember, az)
				vr.PGsWaiting++
			}
			vr.PGs = append(vr.PGs, pr)
		}
		if ws, err := firstWriterState(ctx, ctl, v.Name); err == nil {
			if ws.Holder != "" {
				vr.WriterLease = &writerLeaseReport{Holder: ws.Holder, Epoch: ws.Epoch, AgeMS: time.Now().UnixMilli() - ws.AcquiredUnixMs, TTLMS: ws.TtlMs}
			}
			vr.LastFailover = failoverOf(ws.Failover)
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
			// The joining segment too: its SCL is the change's progress.
			if ch := pr.Change; ch != nil {
				for si := range ch.NextSegments {
					sr := &ch.NextSegments[si]
					if slices.ContainsFunc(pr.Segments, func(o segmentReport) bool { return o.Node == sr.Node }) {
						continue
					}
					if stateOf[sr.Node] == "down" {
						sr.Error = nodeDown
						continue
					}
					perNode[sr.Node] = append(perNode[sr.Node], ask{vr.ID, pr.ID, sr})
				}
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
			// One call per volume, for every segment of it the node hosts.
			byVol := map[uint64][]ask{}
			for _, a := range asks {
				byVol[a.vol] = append(byVol[a.vol], a)
			}
			for vol, vasks := range byVol {
				cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				resp, err := client.SegmentSCLs(cctx, &pb.SegmentSCLsRequest{Volume: vol})
				cancel()
				if err != nil {
					// A node that does not answer one question will not
					// answer the next ones either.
					for _, a := range asks {
						a.seg.Error = shortErr(err)
					}
					return
				}
				hosted := make(map[uint32]*pb.HostedSCL, len(resp.Segments))
				for _, h := range resp.Segments {
					hosted[h.Pg] = h
				}
				for _, a := range vasks {
					if h, ok := hosted[a.pg]; ok {
						a.seg.SCL, a.seg.Hydrating = h.Scl, h.Hydrating
					} else {
						// The node creates the segment with its first records.
						a.seg.Empty = true
					}
				}
			}
		}(addrOf[node], asks)
	}
	wg.Wait()
	addHydration(ctx, rep, addrOf, stateOf)
	for vi := range rep.Volumes {
		vr := &rep.Volumes[vi]
		for pi := range vr.PGs {
			pr := &vr.PGs[pi]
			scls := make([]uint64, 0, len(pr.Segments))
			for _, sr := range pr.Segments {
				// A hydrating segment answers, but counts toward no quorum.
				if sr.Error == "" && !sr.Hydrating {
					scls = append(scls, sr.SCL)
				}
			}
			sort.Slice(scls, func(i, j int) bool { return scls[i] > scls[j] })
			state := pgHealthy
			switch {
			case len(scls) < 4:
				pr.PGCLBound = "unknown"
				vr.VDLSource = "unknown"
				state = pgNoQuorum
			case len(scls) < len(pr.Segments):
				pr.PGCL, pr.PGCLBound = scls[3], "at_least"
				if vr.VDLSource == "" {
					vr.VDLSource = "segments, lower bound"
				}
				state = pgDegraded
			default:
				pr.PGCL, pr.PGCLBound = scls[3], "exact"
			}
			vr.PGCounts[state]++
			vr.VDL = max(vr.VDL, pr.PGCL)
			if pr.Change != nil {
				fillChange(pr)
			}
		}
		vr.PGsListed = "all"
		if !allPGs {
			vr.PGsListed = "not_healthy"
			vr.PGs = slices.DeleteFunc(vr.PGs, func(pr pgReport) bool {
				return pr.PGCLBound == "exact" && pr.Change == nil && pr.WaitingForCapacityAZ == ""
			})
		}
		if vr.PGs == nil {
			vr.PGs = []pgReport{}
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

// addHydration asks the node of each hydrating segment how its copy goes
// (SegmentInfo: bytes copied of the total, rate): each PG's joining
// segment, and the segments of the current sets that hydrate in place;
// every node in parallel.
func addHydration(ctx context.Context, rep *statusReport, addrOf, stateOf map[string]string) {
	type ask struct {
		vol uint64
		pg  uint32
		// put records the answer where it belongs.
		put func(*pb.SegmentInfoResponse)
	}
	perNode := map[string][]ask{}
	for vi := range rep.Volumes {
		vr := &rep.Volumes[vi]
		for pi := range vr.PGs {
			pr := &vr.PGs[pi]
			if ch := pr.Change; ch != nil && stateOf[ch.Joining] == "up" {
				perNode[ch.Joining] = append(perNode[ch.Joining], ask{vr.ID, pr.ID, func(info *pb.SegmentInfoResponse) {
					ch.Hydrating, ch.hydrationReport = info.GetHydrating(), hydrationOf(info)
				}})
			}
			for si := range pr.Segments {
				if sr := &pr.Segments[si]; sr.Hydrating && stateOf[sr.Node] == "up" {
					perNode[sr.Node] = append(perNode[sr.Node], ask{vr.ID, pr.ID, func(info *pb.SegmentInfoResponse) {
						if info.GetHydrating() {
							h := hydrationOf(info)
							sr.Hydration = &h
						}
					}})
				}
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
				return
			}
			defer conn.Close()
			client := pb.NewStorageClient(conn)
			for _, a := range asks {
				cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				info, err := client.SegmentInfo(cctx, &pb.SegmentInfoRequest{Volume: a.vol, Pg: a.pg})
				cancel()
				if err != nil {
					return // the SCLs' answer says why, if it did not answer
				}
				a.put(info)
			}
		}(addrOf[node], asks)
	}
	wg.Wait()
}

// fillChange sets a change's progress from the SCLs gathered: the joining
// segment's, against the highest of the current set's that answered.
func fillChange(pr *pgReport) {
	ch := pr.Change
	for _, s := range pr.Segments {
		if s.Error == "" {
			ch.OfSCL = max(ch.OfSCL, s.SCL)
		}
	}
	for i, s := range ch.NextSegments {
		if s.Node == ch.Joining {
			ch.JoiningSCL, ch.JoiningEmpty, ch.JoiningError = s.SCL, s.Empty, s.Error
			continue
		}
		// A member of both sets was asked once, as one of the current set.
		for _, o := range pr.Segments {
			if o.Node == s.Node {
				ch.NextSegments[i] = o
			}
		}
	}
}

// describeChange is a change in words, for the text output.
func describeChange(ch *changeReport) string {
	progress := fmt.Sprintf("%s at SCL %d of %d", ch.Joining, ch.JoiningSCL, ch.OfSCL)
	switch {
	case ch.JoiningError == nodeDown:
		progress = ch.Joining + " is DOWN"
	case ch.JoiningError != "":
		progress = ch.Joining + " UNREACHABLE"
	case ch.Hydrating:
		progress = fmt.Sprintf("%s hydrating, %s, SCL %d of %d", ch.Joining, ch.hydrationReport, ch.JoiningSCL, ch.OfSCL)
	case ch.JoiningEmpty:
		progress = ch.Joining + " has nothing yet"
	}
	age := ""
	if ch.StartedAtUnixMs > 0 {
		age = fmt.Sprintf(", for %s", time.Since(time.UnixMilli(ch.StartedAtUnixMs)).Round(time.Second))
	}
	return fmt.Sprintf("moving %s -> %s (%s%s): %s", ch.Leaving, ch.Joining, ch.Reason, age, progress)
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
	printControlPlanes(out, rep)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "NODE\tAZ\tADDRESS\tSTATE\tSEGMENTS\tHEARTBEAT\n")
	for _, n := range rep.Nodes {
		state := n.State
		if state != "up" {
			state = "DOWN  <--"
		}
		if n.Admin != "" {
			state += " (" + n.Admin + ")"
		}
		age := "never"
		if n.HeartbeatAgeMs >= 0 {
			age = (time.Duration(n.HeartbeatAgeMs) * time.Millisecond).Round(100*time.Millisecond).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", n.ID, n.AZ, n.Addr, state, n.Segments, age)
	}
	tw.Flush()
	if rep.RepairAfterMs > 0 {
		fmt.Fprintf(out, "a node down for %s has its segments moved to a spare of its AZ\n", time.Duration(rep.RepairAfterMs)*time.Millisecond)
	}
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
		total := v.PGCounts[pgHealthy] + v.PGCounts[pgDegraded] + v.PGCounts[pgNoQuorum]
		fmt.Fprintf(out, "\nVOLUME %s (id %d): volume epoch %d, geometry epoch %d, %s, %d PG(s) of %s, %s\n",
			v.Name, v.ID, v.VolumeEpoch, v.GeometryEpoch, vdl, total, formatSize(v.PGSizeBytes), formatSize(v.SizeBytes))
		fmt.Fprintf(out, "  PGs: %d healthy, %d degraded (4 or 5 segments answer), %d without a write quorum (fewer than 4)\n",
			v.PGCounts[pgHealthy], v.PGCounts[pgDegraded], v.PGCounts[pgNoQuorum])
		if v.PGsInChange > 0 || v.PGsWaiting > 0 {
			fmt.Fprintf(out, "  repair: %d PG(s) in a membership change, %d waiting for capacity\n", v.PGsInChange, v.PGsWaiting)
		}
		if len(v.PGs) == 0 {
			if v.PGsListed != "all" {
				fmt.Fprintln(out, "  every PG has all its segments answering; --pgs lists them")
			}
			continue
		}
		if v.PGsListed != "all" {
			fmt.Fprintln(out, "  the PGs that are not healthy, in a change or waiting (--pgs lists every one):")
		}
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "  PG\tEPOCH\tPGCL\tSEGMENTS (node/AZ: SCL)\n")
		for _, pg := range v.PGs {
			var segs []string
			for _, s := range pg.Segments {
				scl := fmt.Sprint(s.SCL)
				if s.Empty {
					scl = "empty"
				}
				if s.Hydrating {
					scl += " hydrating"
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
			if pg.Change != nil {
				fmt.Fprintf(tw, "  \t\t\t%s\n", describeChange(pg.Change))
			}
			for _, s := range pg.Segments {
				if s.Hydration != nil {
					fmt.Fprintf(tw, "  \t\t\t%s rebuilt in place, hydrating: %s\n", s.Node, s.Hydration)
				}
			}
			if pg.Waiting != "" {
				fmt.Fprintf(tw, "  \t\t\t%s  <--\n", pg.Waiting)
			}
		}
		tw.Flush()
	}
	if len(rep.Writers) == 0 {
		fmt.Fprintln(out, "\nWRITERS: none")
	}
	for _, w := range rep.Writers {
		fmt.Fprintf(out, "\nWRITER of %s: %s, epoch %d", w.Volume, w.Holder, w.Epoch)
		for _, v := range rep.Volumes {
			if l := v.WriterLease; v.Name == w.Volume && l != nil && l.Holder == w.Holder {
				fmt.Fprintf(out, ", lease held %s (TTL %s)", (time.Duration(l.AgeMS) * time.Millisecond).Round(100*time.Millisecond), time.Duration(l.TTLMS)*time.Millisecond)
			}
		}
		switch {
		case w.Unreachable != "":
			fmt.Fprintf(out, ", SQL at %s, UNREACHABLE  <-- (%s)", w.Endpoint, w.Unreachable)
		case w.Endpoint != "":
			fmt.Fprintf(out, ", SQL at %s, VDL %d, %s", w.Endpoint, w.VDL, w.State)
		}
		fmt.Fprintln(out)
	}
	for _, v := range rep.Volumes {
		if f := v.LastFailover; f != nil {
			fmt.Fprintf(out, "\nLAST FAILOVER of %s:\n", v.Name)
			describeFailover(out, f, "  ")
		}
	}
	printInstances(out, rep)
}

// firstWriterState is a volume's writer state now: the first message of
// WatchWriter.
func firstWriterState(ctx context.Context, ctl pb.ControlClient, volume string) (*pb.WriterState, error) {
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	stream, err := ctl.WatchWriter(wctx, &pb.WatchWriterRequest{Volume: volume})
	if err != nil {
		return nil, err
	}
	return stream.Recv()
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
		if c.Role != "writer" && c.Role != "replica" {
			continue // failovers make any instance the writer
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
			if w := &rep.Writers[i]; w.Volume == h.Volume && w.Epoch == h.Epoch && h.Role == "writer" && (h.ID == "" || h.ID == w.Holder) {
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

// instanceHealthTimeout bounds each instance's /v1/health for status: one
// that hangs shows as unreachable, with its catalog record's figures.
const instanceHealthTimeout = time.Second

// addInstances lists the database instances of every volume from the
// catalog, asks each (in parallel) how it stands, adds those cf lists that
// the catalog does not (an instance starting, or stopped), sets each
// volume's PGMRPL from its writer, and adds cf's routers.
func addInstances(ctx context.Context, rep *statusReport, control string, cf *cluster.File) {
	rep.Instances = []instanceReport{}
	var infos []*pb.InstanceInfo
	conn, err := ctlplane.Dial(control)
	if err == nil {
		var resp *pb.ListInstancesResponse
		resp, err = pb.NewControlClient(conn).ListInstances(ctx, &pb.ListInstancesRequest{})
		conn.Close()
		if err == nil {
			infos = resp.Instances
		}
	}
	if err != nil {
		rep.InstancesError = shortErr(err)
	}
	listed := map[string]bool{}
	for _, in := range infos {
		listed[in.Id] = true
		rep.Instances = append(rep.Instances, instanceReport{
			Volume: in.Volume, ID: in.Id, Role: in.Role, AZ: in.Az, Endpoint: "http://" + in.SqlEndpoint,
			Epoch: in.Epoch, VDL: in.Vdl, ReadPoint: in.ReadPoint, State: in.State, Registered: true, Source: "catalog",
		})
	}
	if cf != nil {
		for _, c := range cf.Components {
			if (c.Role == "writer" || c.Role == "replica") && !listed[c.ID] {
				rep.Instances = append(rep.Instances, instanceReport{
					Volume: defaultVolume, ID: c.ID, Role: c.Role, AZ: c.AZ, Endpoint: "http://" + c.Addr,
					State: "not registered", Source: "catalog",
				})
			}
		}
	}
	var wg sync.WaitGroup
	for i := range rep.Instances {
		wg.Add(1)
		go func(in *instanceReport) {
			defer wg.Done()
			hctx, cancel := context.WithTimeout(ctx, instanceHealthTimeout)
			defer cancel()
			h, err := (&sqlclient.Client{Endpoint: in.Endpoint}).Health(hctx)
			if err != nil {
				in.Unreachable = healthErr(err)
				return
			}
			applyHealth(in, h)
		}(&rep.Instances[i])
	}
	wg.Wait()
	finishInstances(rep)
	if cf != nil {
		for _, c := range cf.Components {
			if c.Role == "router" {
				rep.Routers = append(rep.Routers, routerStatus(ctx, c))
			}
		}
	}
}

// applyHealth puts what an instance says of itself on /v1/health into its
// report.
func applyHealth(in *instanceReport, h *sqlclient.Health) {
	ready := h.Ready
	in.Source, in.Ready = "health", &ready
	in.Epoch, in.VDL, in.ReadPoint = h.Epoch, h.VDL, h.ReadPoint
	if h.AZ != "" {
		in.AZ = h.AZ
	}
	if h.Volume != "" {
		in.Volume = h.Volume
	}
	if h.Role != "" {
		in.Role = h.Role
	}
	in.State = h.Status
	if r := h.Replica; r != nil {
		in.State, in.LagLSN, in.LagMS, in.WriterVDL, in.Resyncs = r.Stream, r.LagLSN, r.LagMS, r.WriterVDL, r.Resyncs
		if !h.Ready && h.Status != "" && !strings.HasPrefix(h.Status, "ready") {
			in.State = h.Status // still opening the volume, say
		}
	}
}

// finishInstances fills what the instances' own reports could not: the
// lag of those that did not answer, from the catalog; each volume's
// PGMRPL; and the order, by volume, the writer first, then the replicas
// by number.
func finishInstances(rep *statusReport) {
	writerVDL, pgmrpl := map[string]uint64{}, map[string]uint64{}
	for _, in := range rep.Instances {
		if in.Role == "writer" && (in.Source == "health" || in.Registered) && in.VDL >= writerVDL[in.Volume] {
			writerVDL[in.Volume], pgmrpl[in.Volume] = in.VDL, in.ReadPoint
		}
	}
	for i := range rep.Instances {
		in := &rep.Instances[i]
		if in.Source == "health" || in.Role != "replica" {
			continue
		}
		in.LagMS = -1
		if w := writerVDL[in.Volume]; w > in.VDL && in.Registered {
			in.LagLSN = w - in.VDL
		}
	}
	for i := range rep.Volumes {
		rep.Volumes[i].PGMRPL = pgmrpl[rep.Volumes[i].Name]
	}
	sort.SliceStable(rep.Instances, func(i, j int) bool {
		a, b := rep.Instances[i], rep.Instances[j]
		if a.Volume != b.Volume {
			return a.Volume < b.Volume
		}
		if (a.Role == "writer") != (b.Role == "writer") {
			return a.Role == "writer"
		}
		return idLess(a.ID, b.ID)
	})
}

// idLess orders ids by their text, but a number at their end as a number:
// r2 before r10.
func idLess(a, b string) bool {
	pa, na := splitNumber(a)
	pb, nb := splitNumber(b)
	if pa != pb || na < 0 || nb < 0 {
		return a < b
	}
	return na < nb
}

// splitNumber cuts an id into its prefix and the number it ends in (-1:
// none).
func splitNumber(s string) (string, int) {
	i := len(s)
	for i > 0 && s[i-1] >= '0' && s[i-1] <= '9' {
		i--
	}
	if i == len(s) || len(s)-i > 9 {
		return s, -1
	}
	n := 0
	for _, c := range s[i:] {
		n = n*10 + int(c-'0')
	}
	return s[:i], n
}

// routerStatus asks a router what it routes to (GET /v1/health on its
// cluster endpoint).
func routerStatus(ctx context.Context, c cluster.Component) routerReport {
	rr := routerReport{ID: c.ID, ClusterEndpoint: "http://" + c.ClusterEndpoint, ReaderEndpoint: "http://" + c.ReaderEndpoint, Candidates: []string{}}
	if c.ClusterEndpoint == "" {
		rr.ClusterEndpoint = "http://" + c.Addr
	}
	hctx, cancel := context.WithTimeout(ctx, instanceHealthTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(hctx, http.MethodGet, rr.ClusterEndpoint+"/v1/health", nil)
	if err != nil {
		rr.Unreachable = err.Error()
		return rr
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		rr.Unreachable = healthErr(err)
		return rr
	}
	defer resp.Body.Close()
	var st router.Status
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st); err != nil {
		rr.Unreachable = fmt.Sprintf("its /v1/health answered %s, not the router's status: %v", resp.Status, err)
		return rr
	}
	if st.Writer != nil {
		rr.Writer = st.Writer.ID
	}
	for _, r := range st.Replicas {
		if r.Candidate {
			rr.Candidates = append(rr.Candidates, r.ID)
		}
	}
	return rr
}

// printInstances is status's text for the instances and the routers.
func printInstances(out io.Writer, rep *statusReport) {
	if rep.InstancesError != "" {
		fmt.Fprintf(out, "\nINSTANCES: the catalog could not list them: %s\n", rep.InstancesError)
	}
	pgmrpl := map[string]uint64{}
	for _, v := range rep.Volumes {
		pgmrpl[v.Name] = v.PGMRPL
	}
	for i := 0; i < len(rep.Instances); {
		vol := rep.Instances[i].Volume
		j := i
		for j < len(rep.Instances) && rep.Instances[j].Volume == vol {
			j++
		}
		fmt.Fprintf(out, "\nINSTANCES of %s: PGMRPL %d (the oldest read point of any instance: storage may collect the page versions below it)\n", vol, pgmrpl[vol])
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "  ID\tROLE\tAZ\tENDPOINT\tVDL\tLAG LSN\tLAG\tREAD POINT\tSTATE\n")
		for _, in := range rep.Instances[i:j] {
			lagLSN, lag := "-", "-"
			if in.Role == "replica" {
				lagLSN = fmt.Sprint(in.LagLSN)
				if in.LagMS >= 0 {
					lag = formatLagMS(in.LagMS)
				}
			}
			state := in.State
			switch {
			case in.Unreachable != "" && in.Registered:
				state = fmt.Sprintf("UNREACHABLE  <-- (%s; figures from its catalog record, last %s)", in.Unreachable, orDash(in.State))
			case in.Unreachable != "":
				state = "NOT RUNNING  <-- (not in the catalog, and does not answer)"
			case in.Ready != nil && !*in.Ready:
				state += "  <-- not ready"
			case in.Role == "replica" && in.State != "streaming":
				state += "  <--"
			}
			az := in.AZ
			if az == "" {
				az = "-"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%d\t%s\t%s\t%d\t%s\n", in.ID, in.Role, az, in.Endpoint, in.VDL, lagLSN, lag, in.ReadPoint, state)
		}
		tw.Flush()
		i = j
	}
	for _, r := range rep.Routers {
		fmt.Fprintf(out, "\nROUTER %s: cluster endpoint %s, reader endpoint %s", r.ID, r.ClusterEndpoint, r.ReaderEndpoint)
		switch {
		case r.Unreachable != "":
			fmt.Fprintf(out, ", UNREACHABLE  <-- (%s)\n", r.Unreachable)
			continue
		case r.Writer == "":
			fmt.Fprintf(out, "\n  writes: no writer in the catalog  <--")
		default:
			fmt.Fprintf(out, "\n  writes go to %s", r.Writer)
		}
		if len(r.Candidates) == 0 {
			fmt.Fprintf(out, "; queries to the writer (no replica fit to serve them)\n")
		} else {
			fmt.Fprintf(out, "; queries are balanced over %s\n", strings.Join(r.Candidates, ", "))
		}
	}
}

// healthErr says why a /v1/health went unanswered, in fewer words than
// net/http's error.
func healthErr(err error) string {
	var ue *url.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("no answer within %s", instanceHealthTimeout)
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused: it does not run"
	case errors.As(err, &ue):
		return ue.Err.Error()
	}
	return shortErr(err)
}

// formatLagMS shows a lag in milliseconds as a duration: to 10 µs below a
// millisecond, to the millisecond above.
func formatLagMS(ms float64) string {
	d := time.Duration(ms * float64(time.Millisecond))
	if d < time.Millisecond {
		return d.Round(10 * time.Microsecond).String()
	}
	return d.Round(time.Millisecond).String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
