package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// testServer serves the Control service over cat on addr (a free loopback
// port when empty) until the test ends or stop is called.
func testServer(t *testing.T, cat *Catalog, addr string, timeout time.Duration) (string, func()) {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(cat, timeout, slog.New(slog.NewTextHandler(io.Discard, nil)))
	gs := grpc.NewServer()
	pb.RegisterControlServer(gs, srv)
	go gs.Serve(lis)
	var once sync.Once
	stop := func() { once.Do(func() { srv.Stop(); gs.Stop() }) }
	t.Cleanup(stop)
	return lis.Addr().String(), stop
}

func dialControl(t *testing.T, addr string) pb.ControlClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewControlClient(conn)
}

// agents runs node agents and stops them one by one or all at the end.
type agents struct {
	t       *testing.T
	control string
	mu      sync.Mutex
	stops   map[string]func()
}

func newAgents(t *testing.T, control string) *agents {
	a := &agents{t: t, control: control, stops: map[string]func(){}}
	t.Cleanup(func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, stop := range a.stops {
			stop()
		}
	})
	return a
}

func (a *agents) start(id, az string) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		RunNodeAgent(ctx, a.control, AgentNode{ID: id, AZ: az, Addr: "127.0.0.1:7" + id, CapacityBytes: 1 << 30}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	a.mu.Lock()
	a.stops[id] = func() { cancel(); <-done }
	a.mu.Unlock()
}

func (a *agents) stop(id string) {
	a.mu.Lock()
	stop := a.stops[id]
	delete(a.stops, id)
	a.mu.Unlock()
	stop()
}

// waitNodes polls Status until want(nodes) holds, and returns how long it
// took.
func waitNodes(t *testing.T, cli pb.ControlClient, within time.Duration, what string, want func(map[string]*pb.NodeStatus) bool) time.Duration {
	t.Helper()
	start := time.Now()
	var last *pb.StatusResponse
	for time.Since(start) < within {
		st, err := cli.Status(ctxT(t), &pb.StatusRequest{})
		if err == nil {
			last = st
			m := map[string]*pb.NodeStatus{}
			for _, n := range st.Nodes {
				m[n.Id] = n
			}
			if want(m) {
				return time.Since(start)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("not %s within %s; last status: %v", what, within, last)
	return 0
}

func upCount(m map[string]*pb.NodeStatus) int {
	n := 0
	for _, s := range m {
		if s.State == StateUp {
			n++
		}
	}
	return n
}

// checkPGInfo checks a PG's 6 segments: distinct nodes, 2 in each of 3 AZs.
func checkPGInfo(t *testing.T, pg *pb.PGInfo) {
	t.Helper()
	if len(pg.Segments) != 6 {
		t.Fatalf("PG %d has %d segments, want 6: %v", pg.Pg, len(pg.Segments), pg.Segments)
	}
	perAZ := map[string]int{}
	seen := map[string]bool{}
	for _, s := range pg.Segments {
		if seen[s.Node] {
			t.Fatalf("PG %d has two segments on %s", pg.Pg, s.Node)
		}
		seen[s.Node] = true
		if want := map[string]string{"s1": "a", "s2": "a", "s3": "b", "s4": "b", "s5": "c", "s6": "c"}[s.Node]; want != s.Az {
			t.Fatalf("PG %d: segment on %s in AZ %s, want %s", pg.Pg, s.Node, s.Az, want)
		}
		if s.Addr != "127.0.0.1:7"+s.Node {
			t.Fatalf("PG %d: segment on %s has addr %s", pg.Pg, s.Node, s.Addr)
		}
		perAZ[s.Az]++
	}
	if len(perAZ) != 3 || perAZ["a"] != 2 || perAZ["b"] != 2 || perAZ["c"] != 2 {
		t.Fatalf("PG %d is not 2 per AZ: %v", pg.Pg, perAZ)
	}
}

func wantCode(t *testing.T, err error, code codes.Code, what string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: got %v, want code %s", what, err, code)
	}
	if status.Convert(err).Message() == "" {
		t.Fatalf("%s: no message", what)
	}
}

// TestServerNodesVolumesAndErrors runs the Control service in process with
// six node agents: the agents register while the service is not yet up,
// then heartbeat; a volume is placed 2 per AZ; an agent that stops makes its
// node down within the heartbeat timeout, and up again when it returns.
func TestServerNodesVolumesAndErrors(t *testing.T) {
	t.Parallel()
	cat := newCatalog(t)
	const timeout = 2 * time.Second

	// The agents start before the control plane listens: they retry.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ag := newAgents(t, addr)
	for i, az := range []string{"a", "a", "b", "b", "c", "c"} {
		ag.start(fmt.Sprintf("s%d", i+1), az)
	}
	time.Sleep(300 * time.Millisecond)
	testServer(t, cat, addr, timeout)
	cli := dialControl(t, addr)
	ctx := ctxT(t)

	d := waitNodes(t, cli, 5*time.Second, "6 nodes up", func(m map[string]*pb.NodeStatus) bool { return upCount(m) == 6 })
	t.Logf("6 nodes up %s after the control plane started", d)

	st, err := cli.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.HeartbeatTimeoutMs != 2000 || len(st.Nodes) != 6 {
		t.Fatalf("status: %v", st)
	}
	for _, n := range st.Nodes {
		if n.HeartbeatAgeMs < 0 || n.HeartbeatAgeMs > 2000 || n.Addr != "127.0.0.1:7"+n.Id {
			t.Fatalf("node %v", n)
		}
	}
	reg, err := cli.RegisterNode(ctx, &pb.RegisterNodeRequest{Id: "s1", Az: "a", Addr: "127.0.0.1:7s1", CapacityBytes: 1 << 30})
	if err != nil || reg.HeartbeatIntervalMs != 666 {
		t.Fatalf("RegisterNode: %v %v", reg, err)
	}

	// A volume, placed 2 per AZ on distinct nodes.
	vol, err := cli.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "main", PgSizeBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if vol.Name != "main" || vol.Id == 0 || vol.PageSize != 4096 || vol.PagesPerPg != 256 || vol.Pgs != 1 || vol.GeometryEpoch != 1 || vol.SizeBytes != 1<<20 || len(vol.PgList) != 1 {
		t.Fatalf("CreateVolume: %v", vol)
	}
	checkPGInfo(t, vol.PgList[0])

	// A watch sees PG 0, then PG 1 when it is added.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	watch, err := cli.WatchVolume(wctx, &pb.WatchVolumeRequest{VolumeId: vol.Id})
	if err != nil {
		t.Fatal(err)
	}
	if pg, err := watch.Recv(); err != nil || pg.Pg != 0 {
		t.Fatalf("watch: first %v %v", pg, err)
	}

	// A node stops heartbeating: down within the timeout (lease expiry is
	// checked every 500ms by etcd), and up again when it returns.
	ag.stop("s3")
	d = waitNodes(t, cli, timeout+2*time.Second, "s3 down", func(m map[string]*pb.NodeStatus) bool {
		return m["s3"].State == StateDown && upCount(m) == 5
	})
	t.Logf("s3 down %s after its agent stopped (timeout %s)", d, timeout)
	if _, err := cli.AddPG(ctx, &pb.AddPGRequest{Volume: "main", Pg: 1}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("AddPG with s3 down: %v, want FailedPrecondition", err)
	}
	ag.start("s3", "b")
	d = waitNodes(t, cli, 3*time.Second, "s3 up", func(m map[string]*pb.NodeStatus) bool { return upCount(m) == 6 })
	t.Logf("s3 up %s after its agent restarted", d)

	pg1, err := cli.AddPG(ctx, &pb.AddPGRequest{Volume: "main", Pg: 1})
	if err != nil {
		t.Fatal(err)
	}
	checkPGInfo(t, pg1)
	if pg1.Pg != 1 || pg1.GeometryEpoch != 2 || pg1.VolumeId != vol.Id {
		t.Fatalf("AddPG: %v", pg1)
	}
	if pg, err := watch.Recv(); err != nil || pg.Pg != 1 || pg.GeometryEpoch != 2 {
		t.Fatalf("watch: second %v %v", pg, err)
	}
	again, err := cli.AddPG(ctx, &pb.AddPGRequest{Volume: "main", Pg: 1})
	if err != nil || again.GeometryEpoch != 2 || again.Segments[0].Node != pg1.Segments[0].Node {
		t.Fatalf("AddPG again: %v %v", again, err)
	}
	got, err := cli.GetVolume(ctx, &pb.GetVolumeRequest{Name: "main"})
	if err != nil || got.Pgs != 2 || len(got.PgList) != 2 || got.GeometryEpoch != 2 {
		t.Fatalf("GetVolume: %v %v", got, err)
	}
	// Without its PGs, and one PG alone: what growth asks for, at a cost
	// that does not grow with the volume.
	bare, err := cli.GetVolume(ctx, &pb.GetVolumeRequest{Name: "main", WithoutPgs: true})
	if err != nil || bare.Pgs != 2 || len(bare.PgList) != 0 || bare.Id != vol.Id || bare.GeometryEpoch != 2 {
		t.Fatalf("GetVolume without PGs: %v %v", bare, err)
	}
	one, err := cli.GetPG(ctx, &pb.GetPGRequest{VolumeId: vol.Id, Pg: 1})
	if err != nil || one.Pg != 1 || one.Segments[0].Node != pg1.Segments[0].Node || one.GeometryEpoch != 2 {
		t.Fatalf("GetPG: %v %v", one, err)
	}
	if _, err := cli.GetPG(ctx, &pb.GetPGRequest{VolumeId: vol.Id, Pg: 2}); status.Code(err) != codes.NotFound {
		t.Fatalf("GetPG of a PG the volume has not grown to: %v, want NotFound", err)
	}
	list, err := cli.ListVolumes(ctx, &pb.ListVolumesRequest{})
	if err != nil || len(list.Volumes) != 1 || list.Volumes[0].Name != "main" {
		t.Fatalf("ListVolumes: %v %v", list, err)
	}

	// The writer lease.
	acq, err := cli.AcquireWriter(ctx, &pb.AcquireWriterRequest{Volume: "main", Holder: "w1", TtlMs: 5000})
	if err != nil || acq.Epoch != 1 || acq.Lease == 0 || acq.Volume.VolumeEpoch != 1 || len(acq.Volume.PgList) != 2 {
		t.Fatalf("AcquireWriter: %v %v", acq, err)
	}
	_, err = cli.AcquireWriter(ctx, &pb.AcquireWriterRequest{Volume: "main", Holder: "w2"})
	wantCode(t, err, codes.FailedPrecondition, "a second writer")
	if _, err := cli.RenewWriter(ctx, &pb.RenewWriterRequest{Lease: acq.Lease}); err != nil {
		t.Fatal(err)
	}
	st, err = cli.Status(ctx, &pb.StatusRequest{})
	if err != nil || len(st.Writers) != 1 || st.Writers[0].Holder != "w1" || st.Writers[0].Epoch != 1 || st.Writers[0].Volume != "main" {
		t.Fatalf("status writers: %v %v", st, err)
	}
	if _, err := cli.ReleaseWriter(ctx, &pb.ReleaseWriterRequest{Lease: acq.Lease}); err != nil {
		t.Fatal(err)
	}
	_, err = cli.RenewWriter(ctx, &pb.RenewWriterRequest{Lease: acq.Lease})
	wantCode(t, err, codes.FailedPrecondition, "renew a released lease")
	acq2, err := cli.AcquireWriter(ctx, &pb.AcquireWriterRequest{Volume: "main", Holder: "w2"})
	if err != nil || acq2.Epoch != 2 {
		t.Fatalf("AcquireWriter after release: %v %v", acq2, err)
	}

	// Errors.
	_, err = cli.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "main"})
	wantCode(t, err, codes.AlreadyExists, "duplicate volume")
	_, err = cli.GetVolume(ctx, &pb.GetVolumeRequest{Name: "nope"})
	wantCode(t, err, codes.NotFound, "unknown volume")
	_, err = cli.AddPG(ctx, &pb.AddPGRequest{Volume: "nope", Pg: 1})
	wantCode(t, err, codes.NotFound, "AddPG to an unknown volume")
	_, err = cli.AddPG(ctx, &pb.AddPGRequest{Volume: "main", Pg: 5})
	wantCode(t, err, codes.InvalidArgument, "AddPG out of order")
	_, err = cli.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "bad", PageSize: 1000})
	wantCode(t, err, codes.InvalidArgument, "bad page size")
	_, err = cli.Heartbeat(ctx, &pb.HeartbeatRequest{Id: "ghost"})
	wantCode(t, err, codes.NotFound, "heartbeat of an unregistered node")
	_, err = cli.RegisterNode(ctx, &pb.RegisterNodeRequest{Id: "s1", Az: "b", Addr: "x:1"})
	wantCode(t, err, codes.InvalidArgument, "a node moving AZ")
	ws, err := cli.WatchVolume(ctx, &pb.WatchVolumeRequest{VolumeId: 999})
	if err == nil {
		_, err = ws.Recv()
	}
	wantCode(t, err, codes.NotFound, "watch an unknown volume")
}

// TestAgentReregistersOnFreshCatalog: a control plane that comes back over
// an empty catalog answers heartbeats with NotFound, and the agent registers
// again.
func TestAgentReregistersOnFreshCatalog(t *testing.T) {
	t.Parallel()
	addr, stop := testServer(t, newCatalog(t), "", 2*time.Second)
	cli := dialControl(t, addr)
	ag := newAgents(t, addr)
	ag.start("s1", "a")
	waitNodes(t, cli, 3*time.Second, "s1 up", func(m map[string]*pb.NodeStatus) bool { return upCount(m) == 1 })
	stop()

	fresh := newCatalog(t)
	testServer(t, fresh, addr, 2*time.Second)
	waitNodes(t, cli, 5*time.Second, "s1 up in the fresh catalog", func(m map[string]*pb.NodeStatus) bool { return upCount(m) == 1 })
	nodes, err := fresh.Nodes(ctxT(t))
	if err != nil || len(nodes) != 1 || nodes[0].ID != "s1" || nodes[0].CapacityBytes != 1<<30 {
		t.Fatalf("fresh catalog nodes: %v %v", nodes, err)
	}
}

// TestGRPCErrUnavailable: an etcd that does not answer gives Unavailable.
func TestGRPCErrUnavailable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := grpcErr(ctx, etcdErr("list volumes", errors.New("connection refused")))
	wantCode(t, err, codes.Unavailable, "etcd error")
	err = grpcErr(ctx, fmt.Errorf("wrapped: %w", context.DeadlineExceeded))
	wantCode(t, err, codes.Unavailable, "our own deadline")
}
