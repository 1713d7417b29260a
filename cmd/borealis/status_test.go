package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
)

// fakeRegistry is a control plane that lists instances.
type fakeRegistry struct {
	pb.UnimplementedControlServer
	instances []*pb.InstanceInfo
}

func (f *fakeRegistry) ListInstances(context.Context, *pb.ListInstancesRequest) (*pb.ListInstancesResponse, error) {
	return &pb.ListInstancesResponse{Instances: f.instances}, nil
}

func serveRegistry(t *testing.T, f *fakeRegistry) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	pb.RegisterControlServer(g, f)
	go g.Serve(l)
	t.Cleanup(g.Stop)
	return l.Addr().String()
}

// serveJSON answers GET /v1/health with body.
func serveJSON(t *testing.T, body string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/health" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// status lists every instance, writer first and replicas by number, with
// the figures each gives on /v1/health; one that does not answer keeps its
// catalog record's, and shows as unreachable; one that cluster.json lists
// but the catalog does not is there too. The volume's PGMRPL is the
// writer's read point. --json has the contract's fields.
func TestStatusInstances(t *testing.T) {
	writer := serveJSON(t, `{"role":"writer","volume":"main","volume_id":1,"epoch":3,"vdl":120,"ready":true,"status":"ready","id":"writer","az":"a","read_point":90,"replicas":[{"id":"r1"},{"id":"r2"}]}`)
	r1 := serveJSON(t, `{"role":"replica","volume":"main","volume_id":1,"epoch":3,"vdl":118,"ready":true,"status":"ready","id":"r1","az":"b","read_point":90,"replica":{"stream":"streaming","writer_vdl":120,"lag_lsn":2,"lag_ms":1.5,"writer":"x","epoch":3,"resyncs":1}}`)
	r10 := serveJSON(t, `{"role":"replica","volume":"main","volume_id":1,"epoch":3,"vdl":120,"ready":true,"status":"ready: serving reads at applied VDL; stale","id":"r10","az":"a","read_point":120,"replica":{"stream":"stale","writer_vdl":120,"lag_lsn":0,"lag_ms":4000,"epoch":3}}`)
	gone, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	routerAddr := serveJSON(t, `{"volume":"main","writer":{"id":"writer","role":"writer","endpoint":"x"},"replicas":[{"id":"r1","role":"replica","candidate":true},{"id":"r10","role":"replica","candidate":false,"why":"stale"}]}`)
	reg := &fakeRegistry{instances: []*pb.InstanceInfo{
		{Volume: "main", Id: "r10", Role: "replica", Az: "a", SqlEndpoint: r10, Epoch: 3, Vdl: 100, State: "streaming"},
		{Volume: "main", Id: "r1", Role: "replica", Az: "b", SqlEndpoint: r1, Epoch: 3, Vdl: 110, State: "streaming"},
		{Volume: "main", Id: "r2", Role: "replica", Az: "c", SqlEndpoint: gone, Epoch: 3, Vdl: 100, ReadPoint: 95, State: "streaming"},
		{Volume: "main", Id: "writer", Role: "writer", Az: "a", SqlEndpoint: writer, Epoch: 3, Vdl: 115, ReadPoint: 80, State: "ready"},
	}}
	control := serveRegistry(t, reg)
	cf := &cluster.File{Components: []cluster.Component{
		{Role: "writer", ID: "writer", AZ: "a", Addr: writer},
		{Role: "replica", ID: "r1", AZ: "b", Addr: r1},
		{Role: "replica", ID: "r3", AZ: "a", Addr: gone},
		{Role: "router", ID: "router", Addr: routerAddr, ClusterEndpoint: routerAddr, ReaderEndpoint: "127.0.0.1:1"},
	}}
	rep := &statusReport{Volumes: []volumeReport{{Name: "main", ID: 1}}, Nodes: []nodeReport{}, Writers: []writerReport{}}
	addInstances(context.Background(), rep, control, cf)

	var ids []string
	for _, in := range rep.Instances {
		ids = append(ids, in.ID)
	}
	if got := strings.Join(ids, " "); got != "writer r1 r2 r3 r10" {
		t.Fatalf("instances in the order %s", got)
	}
	by := map[string]instanceReport{}
	for _, in := range rep.Instances {
		by[in.ID] = in
	}
	if w := by["writer"]; w.Source != "health" || w.VDL != 120 || w.ReadPoint != 90 || w.State != "ready" || w.LagLSN != 0 || w.Endpoint != "http://"+writer || w.AZ != "a" {
		t.Errorf("writer: %+v", w)
	}
	if r := by["r1"]; r.Source != "health" || r.VDL != 118 || r.LagLSN != 2 || r.LagMS != 1.5 || r.State != "streaming" || r.WriterVDL != 120 || r.Resyncs != 1 || r.AZ != "b" {
		t.Errorf("r1: %+v", r)
	}
	if r := by["r10"]; r.State != "stale" || r.LagMS != 4000 {
		t.Errorf("r10: %+v", r)
	}
	// Unreachable: the catalog's figures, its lag against the writer's VDL.
	if r := by["r2"]; r.Source != "catalog" || r.Unreachable == "" || r.VDL != 100 || r.ReadPoint != 95 || r.LagLSN != 20 || r.LagMS != -1 || r.State != "streaming" || !r.Registered {
		t.Errorf("r2: %+v", r)
	}
	if r := by["r3"]; r.Registered || r.State != "not registered" || r.Unreachable == "" || r.Endpoint != "http://"+gone {
		t.Errorf("r3: %+v", r)
	}
	if rep.Volumes[0].PGMRPL != 90 {
		t.Errorf("PGMRPL %d, want the writer's read point 90", rep.Volumes[0].PGMRPL)
	}
	if len(rep.Routers) != 1 || rep.Routers[0].Writer != "writer" || strings.Join(rep.Routers[0].Candidates, ",") != "r1" || rep.Routers[0].ReaderEndpoint != "http://127.0.0.1:1" {
		t.Errorf("routers: %+v", rep.Routers)
	}

	// The JSON keeps every field, with the instances' contract.
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"nodes", "volumes", "writers", "heartbeat_timeout_ms", "instances", "routers"} {
		if _, ok := got[k]; !ok {
			t.Errorf("status --json lacks %q: %s", k, b)
		}
	}
	for _, in := range got["instances"].([]any) {
		m := in.(map[string]any)
		for _, k := range []string{"id", "role", "az", "endpoint", "vdl", "lag_lsn", "lag_ms", "read_point", "state", "volume", "epoch", "source", "registered"} {
			if _, ok := m[k]; !ok {
				t.Errorf("instance %v lacks %q", m["id"], k)
			}
		}
		if role := m["role"]; role != "writer" && role != "replica" {
			t.Errorf("instance %v has role %v", m["id"], role)
		}
	}
	if v := got["volumes"].([]any)[0].(map[string]any); v["pgmrpl"] != 90.0 {
		t.Errorf("volume's pgmrpl: %v", v["pgmrpl"])
	}
	r := got["routers"].([]any)[0].(map[string]any)
	for _, k := range []string{"id", "cluster_endpoint", "reader_endpoint", "candidates"} {
		if _, ok := r[k]; !ok {
			t.Errorf("router lacks %q: %v", k, r)
		}
	}

	// The text has a line for each, and the router's endpoints.
	var out strings.Builder
	printInstances(&out, rep)
	text := out.String()
	found := false
	for _, l := range strings.Split(text, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "r1" {
			found = strings.Join(f, " ") == "r1 replica b http://"+r1+" 118 2 2ms 90 streaming"
		}
	}
	if !found {
		t.Errorf("status printed\n%s\nwithout r1's line as expected", text)
	}
	for _, want := range []string{
		"INSTANCES of main: PGMRPL 90",
		"ID      ROLE     AZ  ENDPOINT",
		"UNREACHABLE  <-- (",
		"NOT RUNNING  <--",
		"stale  <--",
		"ROUTER router: cluster endpoint http://" + routerAddr + ", reader endpoint http://127.0.0.1:1\n  writes go to writer; queries are balanced over r1\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("status printed\n%s\nwithout %q", text, want)
		}
	}
}

// With no catalog to ask, status says so and lists no instance.
func TestStatusInstancesWithoutCatalog(t *testing.T) {
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	rep := &statusReport{}
	ctx, cancel := context.WithTimeout(context.Background(), 2*1e9)
	defer cancel()
	addInstances(ctx, rep, addr, nil)
	if rep.Instances == nil || len(rep.Instances) != 0 || rep.InstancesError == "" {
		t.Fatalf("instances %+v, error %q", rep.Instances, rep.InstancesError)
	}
	b, _ := json.Marshal(rep)
	if !strings.Contains(string(b), `"instances":[]`) {
		t.Fatalf("JSON %s", b)
	}
}

func TestIDOrder(t *testing.T) {
	for _, tc := range [][2]string{{"r2", "r10"}, {"r1", "r2"}, {"a", "r1"}, {"r9", "s1"}, {"x", "x1"}} {
		if !idLess(tc[0], tc[1]) || idLess(tc[1], tc[0]) {
			t.Errorf("%s, %s out of order", tc[0], tc[1])
		}
	}
}

// freeAddr is a loopback address where nothing listens.
func freeAddr() (string, error) {
	return cluster.FreeAddr()
}

// fakeStatusControl answers Status with a canned report.
type fakeStatusControl struct {
	pb.UnimplementedControlServer
	st *pb.StatusResponse
}

func (f *fakeStatusControl) Status(context.Context, *pb.StatusRequest) (*pb.StatusResponse, error) {
	return f.st, nil
}

// fakeSCLs is a storage node that answers SegmentSCLs.
type fakeSCLs struct {
	pb.UnimplementedStorageServer
	scl       map[uint32]uint64
	hydrating bool
}

func (f *fakeSCLs) SegmentInfo(_ context.Context, req *pb.SegmentInfoRequest) (*pb.SegmentInfoResponse, error) {
	if f.hydrating {
		return &pb.SegmentInfoResponse{Scl: f.scl[req.Pg], Hydrating: true, HydrateBytesCopied: 3 << 20, HydrateBytesTotal: 8 << 20, HydrateRateBytesPerSecond: 1 << 20}, nil
	}
	return &pb.SegmentInfoResponse{Scl: f.scl[req.Pg]}, nil
}

func (f *fakeSCLs) SegmentSCLs(context.Context, *pb.SegmentSCLsRequest) (*pb.SegmentSCLsResponse, error) {
	out := &pb.SegmentSCLsResponse{}
	for pg, scl := range f.scl {
		out.Segments = append(out.Segments, &pb.HostedSCL{Pg: pg, Scl: scl, Hydrating: f.hydrating})
	}
	return out, nil
}

// hydrationOf: a copy's progress from its node's answer, with the time
// left at the node's rate.
func TestHydrationOf(t *testing.T) {
	for _, tc := range []struct {
		info *pb.SegmentInfoResponse
		want hydrationReport
		text string
	}{
		{&pb.SegmentInfoResponse{}, hydrationReport{}, "0B copied"},
		{&pb.SegmentInfoResponse{HydrateBytesCopied: 2 << 20}, hydrationReport{BytesCopied: 2 << 20}, "2MiB copied"},
		{&pb.SegmentInfoResponse{HydrateBytesCopied: 2 << 20, HydrateRateBytesPerSecond: 1 << 20}, hydrationReport{BytesCopied: 2 << 20, RateBytesPerS: 1 << 20}, "2MiB copied, 1MiB/s"},
		{&pb.SegmentInfoResponse{HydrateBytesCopied: 3 << 20, HydrateBytesTotal: 8 << 20, HydrateRateBytesPerSecond: 1 << 20},
			hydrationReport{BytesCopied: 3 << 20, BytesTotal: 8 << 20, RateBytesPerS: 1 << 20, ETAS: 5}, "3MiB of 8MiB copied, 1MiB/s, about 5s left"},
	} {
		got := hydrationOf(tc.info)
		if got != tc.want || got.String() != tc.text {
			t.Errorf("hydrationOf(%v) = %+v %q, want %+v %q", tc.info, got, got, tc.want, tc.text)
		}
	}
}

// status shows a PG in a membership change with its leaving and joining
// members and the joining one's progress, and a PG that waits for
// capacity in an AZ; the counts by state are the current sets'; a healthy
// PG in no change is not listed. Text and JSON.
func TestStatusRepair(t *testing.T) {
	serve := func(scl map[uint32]uint64, hydrating bool) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		g := grpc.NewServer()
		pb.RegisterStorageServer(g, &fakeSCLs{scl: scl, hydrating: hydrating})
		go g.Serve(l)
		t.Cleanup(g.Stop)
		return l.Addr().String()
	}
	st := &pb.StatusResponse{HeartbeatTimeoutMs: 3000, RepairAfterMs: 60000}
	azOf := map[string]string{"s1": "a", "s2": "a", "s7": "a", "s3": "b", "s4": "b", "s5": "c", "s6": "c"}
	for _, id := range []string{"s1", "s2", "s3", "s4", "s5", "s6", "s7"} {
		n := &pb.NodeStatus{Id: id, Az: azOf[id], State: "up", HeartbeatAgeMs: 100, Segments: 3}
		switch id {
		case "s2":
			n.State, n.Addr = "down", "127.0.0.1:1"
		case "s7":
			n.Addr, n.Segments = serve(map[uint32]uint64{0: 40, 3: 10}, true), 2
		default:
			n.Addr = serve(map[uint32]uint64{0: 100, 1: 90, 2: 80}, false)
		}
		st.Nodes = append(st.Nodes, n)
	}
	segs := func(ids ...string) []*pb.SegmentInfo {
		var out []*pb.SegmentInfo
		for _, id := range ids {
			out = append(out, &pb.SegmentInfo{Node: id, Az: azOf[id]})
		}
		return out
	}
	set := segs("s1", "s2", "s3", "s4", "s5", "s6")
	st.Volumes = []*pb.VolumeInfo{{Name: "main", Id: 1, Pgs: 3, PgList: []*pb.PGInfo{
		{VolumeId: 1, Pg: 0, MembershipEpoch: 2, Segments: set, NextSegments: segs("s1", "s7", "s3", "s4", "s5", "s6"),
			Change: &pb.MembershipChange{Leaving: "s2", Joining: "s7", Reason: "down", StartedAtUnixMs: time.Now().Add(-3 * time.Second).UnixMilli()}},
		{VolumeId: 1, Pg: 1, MembershipEpoch: 1, Segments: set, WaitingForCapacityAz: "a", WaitingMember: "s2"},
		{VolumeId: 1, Pg: 2, MembershipEpoch: 1, Segments: segs("s1", "s7", "s3", "s4", "s5", "s6")},
		{VolumeId: 1, Pg: 3, MembershipEpoch: 1, Segments: segs("s1", "s7", "s3", "s4", "s5", "s6")},
	}}}
	// PG 2 is on s7, which holds nothing of it: healthy all the same (an
	// empty segment answers), so it is not listed. PG 3's segment on s7
	// is rebuilt in place (hydrating, in no change): degraded, and listed.
	control := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		g := grpc.NewServer()
		pb.RegisterControlServer(g, &fakeStatusControl{st: st})
		go g.Serve(l)
		t.Cleanup(g.Stop)
		return l.Addr().String()
	}()
	rep, err := gatherStatus(context.Background(), control, false)
	if err != nil {
		t.Fatal(err)
	}
	if rep.RepairAfterMs != 60000 || rep.Nodes[6].ID != "s7" || rep.Nodes[6].Segments != 2 {
		t.Fatalf("report: repair after %d, nodes %+v", rep.RepairAfterMs, rep.Nodes)
	}
	v := rep.Volumes[0]
	if v.PGCounts[pgDegraded] != 3 || v.PGCounts[pgHealthy] != 1 || v.PGsInChange != 1 || v.PGsWaiting != 1 || len(v.PGs) != 3 {
		t.Fatalf("volume: counts %v, in change %d, waiting %d, %d listed", v.PGCounts, v.PGsInChange, v.PGsWaiting, len(v.PGs))
	}
	ch := v.PGs[0].Change
	if ch == nil || ch.Leaving != "s2" || ch.Joining != "s7" || ch.JoiningSCL != 40 || ch.OfSCL != 100 || len(ch.NextSegments) != 6 || ch.NextSegments[2].SCL != 100 || !ch.Hydrating || ch.BytesCopied != 3<<20 || ch.BytesTotal != 8<<20 {
		t.Fatalf("PG 0's change: %+v", ch)
	}
	if ch.RateBytesPerS != 1<<20 || ch.ETAS != 5 {
		t.Fatalf("PG 0's change: rate %v, ETA %v s; want the node's 1MiB/s and 5 s left", ch.RateBytesPerS, ch.ETAS)
	}
	if p := v.PGs[2]; p.ID != 3 || !p.Segments[1].Hydrating || p.Segments[1].SCL != 10 || p.PGCLBound != "at_least" ||
		p.Segments[1].Hydration == nil || p.Segments[1].Hydration.ETAS != 5 {
		t.Fatalf("PG 3, rebuilt in place on s7: %+v", p)
	}
	if p := v.PGs[1]; p.WaitingForCapacityAZ != "a" || p.WaitingMember != "s2" || !strings.Contains(p.Waiting, "waiting for capacity in AZ a") {
		t.Fatalf("PG 1: %+v", p)
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"repair_after_ms":60000`, `"pgs_in_change":1`, `"pgs_waiting_for_capacity":1`, `"waiting_for_capacity_az":"a"`, `"joining":"s7"`, `"joining_scl":40`, `"pg_counts":{`, `"segments":2}`, `"hydrating":true`, `"hydration":{"bytes_copied":3145728`, `"rate_bytes_per_s":1048576,"eta_s":5`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON lacks %s: %s", want, b)
		}
	}
	var text strings.Builder
	printStatus(&text, rep)
	for _, want := range []string{"moving s2 -> s7 (down", "s7 hydrating, 3MiB of 8MiB copied, 1MiB/s, about 5s left, SCL 40 of 100", "s7 rebuilt in place, hydrating: 3MiB of 8MiB copied, 1MiB/s, about 5s left", "waiting for capacity in AZ a", "1 PG(s) in a membership change, 1 waiting for capacity", "s7/a: 10 hydrating"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, text.String())
		}
	}
}
