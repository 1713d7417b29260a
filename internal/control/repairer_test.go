package control

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/wait"
)

// fakeSegment is what a fakeStorage holds of one PG.
type fakeSegment struct {
	epoch, scl, highest uint64
	hydrating, retired  bool
	sets                int // member sets of the last declaration
}

// fakeStorage is a storage node over real gRPC that answers Declare and
// SegmentSCLs as the Storage contract says (api/storage.proto): a
// declaration of a newer membership epoch replaces the one held, a segment
// it does not hold is created (hydrating if told to), a node in no set is
// retired; hydration ends when the test says (finish). Its heartbeats go to
// the catalog directly, with the volumes it holds.
type fakeStorage struct {
	pb.UnimplementedStorageServer
	id, az, addr string
	cat          *Catalog

	mu       sync.Mutex
	segs     map[PGKey]*fakeSegment
	declares int // Declare calls answered
	hydrates map[PGKey]int

	hbMu   sync.Mutex
	hbStop func()
}

func startFakeStorage(t *testing.T, cat *Catalog, id, az string) *fakeStorage {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeStorage{id: id, az: az, addr: lis.Addr().String(), cat: cat, segs: map[PGKey]*fakeSegment{}, hydrates: map[PGKey]int{}}
	gs := grpc.NewServer()
	pb.RegisterStorageServer(gs, f)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	if err := cat.RegisterNode(ctxT(t), Node{ID: id, AZ: az, Addr: f.addr, CapacityBytes: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	f.heartbeat(t, true)
	t.Cleanup(func() { f.heartbeat(t, false) })
	return f
}

// heartbeat starts or stops the node's heartbeats (a 1 s TTL).
func (f *fakeStorage) heartbeat(t *testing.T, on bool) {
	f.hbMu.Lock()
	defer f.hbMu.Unlock()
	if f.hbStop != nil {
		f.hbStop()
		f.hbStop = nil
	}
	if !on {
		return
	}
	if err := f.cat.HeartbeatWith(ctxT(t), f.id, time.Second, HeartbeatReport{ReportsHosted: true, Hosted: f.hosted()}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for sleepCtx(ctx, 200*time.Millisecond) {
			_ = f.cat.HeartbeatWith(ctx, f.id, time.Second, HeartbeatReport{ReportsHosted: true, Hosted: f.hosted()})
		}
	}()
	f.hbStop = func() { cancel(); <-done }
}

func (f *fakeStorage) hosted() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []uint64
	for k := range f.segs {
		if !slices.Contains(out, k.Volume) {
			out = append(out, k.Volume)
		}
	}
	slices.Sort(out)
	return out
}

// hold makes the node hold k complete through lsn at epoch.
func (f *fakeStorage) hold(k PGKey, epoch, lsn uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.segs[k] = &fakeSegment{epoch: epoch, scl: lsn, highest: lsn, sets: 1}
}

// lose drops what the node holds of k (its data is gone).
func (f *fakeStorage) lose(k PGKey) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.segs, k)
}

// finish ends k's hydration: it is complete through lsn.
func (f *fakeStorage) finish(k PGKey, lsn uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.segs[k]
	s.hydrating, s.scl, s.highest = false, lsn, lsn
}

func (f *fakeStorage) seg(k PGKey) (fakeSegment, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.segs[k]
	if !ok {
		return fakeSegment{}, false
	}
	return *s, true
}

func (f *fakeStorage) Declare(_ context.Context, req *pb.DeclareRequest) (*pb.DeclareResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.declares++
	out := &pb.DeclareResponse{}
	for _, spec := range req.GetSpecs() {
		if len(spec.GetMemberSets()) == 0 || spec.GetPageSize() == 0 || spec.GetPagesPerPg() == 0 || spec.GetIncarnation() == 0 {
			return nil, status.Errorf(codes.InvalidArgument, "declaration of PG %d lacks its sets or geometry: %v", spec.GetPg(), spec)
		}
		k := PGKey{spec.GetVolume(), spec.GetPg()}
		s := f.segs[k]
		if s == nil {
			s = &fakeSegment{hydrating: spec.GetHydrate()}
			f.segs[k] = s
		}
		if spec.GetHydrate() {
			f.hydrates[k]++
		}
		if spec.GetMembershipEpoch() > s.epoch {
			s.epoch = spec.GetMembershipEpoch()
			s.sets = len(spec.GetMemberSets())
			in := false
			for _, set := range spec.GetMemberSets() {
				for _, m := range set.GetMembers() {
					in = in || m.GetNodeId() == f.id
				}
			}
			s.retired = !in
		}
		out.Segments = append(out.Segments, &pb.DeclaredSegment{Pg: k.PG, MembershipEpoch: s.epoch, Scl: s.scl, Highest: s.highest, Hydrating: s.hydrating, Retired: s.retired})
	}
	return out, nil
}

func (f *fakeStorage) SegmentSCLs(_ context.Context, req *pb.SegmentSCLsRequest) (*pb.SegmentSCLsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := &pb.SegmentSCLsResponse{}
	for k, s := range f.segs {
		if k.Volume == req.GetVolume() {
			out.Segments = append(out.Segments, &pb.HostedSCL{Pg: k.PG, Scl: s.scl})
		}
	}
	return out, nil
}

// repairTest is a leading control plane with short repair timings, served
// over gRPC, and fake storage nodes.
type repairTest struct {
	t     *testing.T
	cat   *Catalog
	srv   *Server
	cli   pb.ControlClient
	nodes map[string]*fakeStorage
	// resign ends the control plane's candidacy (and its lead).
	resign func()
}

func newRepairTest(t *testing.T, spec ...string) *repairTest {
	t.Helper()
	cat := newCatalog(t)
	rt := &repairTest{t: t, cat: cat, nodes: map[string]*fakeStorage{}}
	for i := 0; i < len(spec); i += 2 {
		rt.add(spec[i], spec[i+1])
	}
	rt.srv = NewServer(cat, time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
	rt.srv.SetRepair(RepairConfig{After: 1500 * time.Millisecond, Interval: 50 * time.Millisecond, RPCTimeout: 2 * time.Second})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterControlServer(gs, rt.srv)
	go gs.Serve(lis)
	t.Cleanup(func() { rt.srv.Stop(); gs.Stop() })
	rt.cli = dialControl(t, lis.Addr().String())
	rt.resign = rt.srv.campaign(context.Background(), Candidate{Name: "c1", Addr: lis.Addr().String(), AZ: "a"})
	t.Cleanup(rt.resign)
	wait.For(t, 10*time.Second, "the control plane to lead", rt.srv.Leading)
	return rt
}

func (rt *repairTest) add(id, az string) *fakeStorage {
	f := startFakeStorage(rt.t, rt.cat, id, az)
	rt.nodes[id] = f
	return f
}

// volume creates a volume of one PG whose members hold it through lsn.
func (rt *repairTest) volume(name string, lsn uint64) (Volume, PG) {
	rt.t.Helper()
	v, err := rt.cat.CreateVolume(ctxT(rt.t), name, 4096, 1<<20)
	if err != nil {
		rt.t.Fatal(err)
	}
	pg := rt.pg(v.ID, 0)
	for _, s := range pg.Segments {
		rt.nodes[s.Node].hold(pg.Key(), pg.MembershipEpoch, lsn)
	}
	return v, pg
}

func (rt *repairTest) pg(vol uint64, n uint32) PG {
	rt.t.Helper()
	pg, err := rt.cat.PG(ctxT(rt.t), vol, n)
	if err != nil {
		rt.t.Fatal(err)
	}
	return pg
}

// waitPG waits until the PG's record satisfies cond.
func (rt *repairTest) waitPG(k PGKey, what string, cond func(PG) bool) PG {
	rt.t.Helper()
	var last PG
	wait.For(rt.t, 20*time.Second, what, func() bool {
		last = rt.pg(k.Volume, k.PG)
		return cond(last)
	})
	return last
}

func (rt *repairTest) steps(step, reason string) float64 {
	return counterValue(rt.t, rt.srv.repairMetrics.steps.WithLabelValues(step, reason))
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestRepairDownNode: a member stops heartbeating; after --repair-after its
// segment moves to the spare of its AZ, which is told to hydrate; the old
// set learns the new epoch; once the spare is complete through what the old
// set held, the PG becomes the new set, the load record follows, and the
// node that left is told it is retired when it comes back.
func TestRepairDownNode(t *testing.T) {
	rt := newRepairTest(t, "s1", "a", "s2", "a", "s7", "a", "s3", "b", "s4", "b", "s5", "c", "s6", "c")
	_, pg := rt.volume("main", 100)
	k := pg.Key()
	if !slices.Equal(memberNodes(pg.Segments), []string{"s1", "s2", "s3", "s4", "s5", "s6"}) {
		t.Fatalf("placed on %v", memberNodes(pg.Segments))
	}
	rt.nodes["s2"].heartbeat(t, false)
	begun := rt.waitPG(k, "s2's segment to move to s7", func(p PG) bool { return p.Change != nil })
	if begun.Change.Leaving != "s2" || begun.Change.Joining != "s7" || begun.Change.Reason != ReasonDown || begun.MembershipEpoch != 2 {
		t.Fatalf("change %+v at epoch %d", begun.Change, begun.MembershipEpoch)
	}
	checkLoad(t, rt.cat, "after the change began")
	wait.For(t, 10*time.Second, "s7 to be told to hydrate under both sets", func() bool {
		s, ok := rt.nodes["s7"].seg(k)
		return ok && s.hydrating && s.epoch == 2 && s.sets == 2
	})
	for _, id := range []string{"s1", "s3", "s4", "s5", "s6"} {
		wait.For(t, 10*time.Second, id+" to learn epoch 2", func() bool {
			s, _ := rt.nodes[id].seg(k)
			return s.epoch == 2 && s.sets == 2 && !s.retired
		})
	}
	// Done copying, but short of what the old set held: not complete.
	rt.nodes["s7"].finish(k, 99)
	d := rt.nodes["s7"].declaresNow()
	wait.For(t, 10*time.Second, "s7 to be asked again", func() bool { return rt.nodes["s7"].declaresNow() > d+2 })
	if p := rt.pg(k.Volume, k.PG); p.Change == nil {
		t.Fatalf("completed with s7 at 99 of 100: %+v", p)
	}
	rt.nodes["s7"].finish(k, 100)
	done := rt.waitPG(k, "the change to complete", func(p PG) bool { return p.Change == nil })
	if !slices.Equal(memberNodes(done.Segments), []string{"s1", "s7", "s3", "s4", "s5", "s6"}) || done.MembershipEpoch != 3 {
		t.Fatalf("after completion: %v at epoch %d", memberNodes(done.Segments), done.MembershipEpoch)
	}
	checkLoad(t, rt.cat, "after completion")
	wait.For(t, 10*time.Second, "the members to learn epoch 3", func() bool {
		for _, id := range []string{"s1", "s7", "s3", "s4", "s5", "s6"} {
			if s, _ := rt.nodes[id].seg(k); s.epoch != 3 || s.sets != 1 || s.retired {
				return false
			}
		}
		return true
	})
	if rt.steps(ActBegin, ReasonDown) != 1 || rt.steps(ActComplete, ReasonDown) != 1 {
		t.Fatalf("metrics: begin %v complete %v", rt.steps(ActBegin, ReasonDown), rt.steps(ActComplete, ReasonDown))
	}
	// s2 comes back: it learns it is out of the PG, and nothing changes.
	rt.nodes["s2"].heartbeat(t, true)
	wait.For(t, 10*time.Second, "s2 to be retired", func() bool {
		s, _ := rt.nodes["s2"].seg(k)
		return s.retired && s.epoch == 3
	})
	if p := rt.pg(k.Volume, k.PG); p.MembershipEpoch != 3 || p.Change != nil {
		t.Fatalf("s2's return changed the PG: %+v", p)
	}
}

func (f *fakeStorage) declaresNow() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.declares
}

// TestRepairRollsBack: the failed node comes back before its replacement is
// complete: the PG goes back to its members under a new epoch, and the
// replacement is told it is retired.
func TestRepairRollsBack(t *testing.T) {
	rt := newRepairTest(t, "s1", "a", "s2", "a", "s7", "a", "s3", "b", "s4", "b", "s5", "c", "s6", "c")
	_, pg := rt.volume("main", 100)
	k := pg.Key()
	rt.nodes["s2"].heartbeat(t, false)
	rt.waitPG(k, "the change to begin", func(p PG) bool { return p.Change != nil })
	wait.For(t, 10*time.Second, "s7 to hydrate", func() bool { s, ok := rt.nodes["s7"].seg(k); return ok && s.hydrating })
	rt.nodes["s2"].heartbeat(t, true)
	back := rt.waitPG(k, "the change to roll back", func(p PG) bool { return p.Change == nil })
	if !slices.Equal(back.Segments, pg.Segments) || back.MembershipEpoch != 3 {
		t.Fatalf("after rollback: %v at epoch %d", memberNodes(back.Segments), back.MembershipEpoch)
	}
	checkLoad(t, rt.cat, "after rollback")
	wait.For(t, 10*time.Second, "s7 to be retired and s2 to learn epoch 3", func() bool {
		g, _ := rt.nodes["s7"].seg(k)
		f, _ := rt.nodes["s2"].seg(k)
		return g.retired && g.epoch == 3 && f.epoch == 3 && !f.retired
	})
	if rt.steps(ActRollback, ReasonDown) != 1 {
		t.Fatalf("rollbacks counted: %v", rt.steps(ActRollback, ReasonDown))
	}
}

// TestRepairWaitsForCapacity: with no spare in the AZ the PG stays as it is
// and Status says it waits for capacity in that AZ; a node that joins the
// AZ later takes the segment.
func TestRepairWaitsForCapacity(t *testing.T) {
	rt := newRepairTest(t, "s1", "a", "s2", "a", "s3", "b", "s4", "b", "s5", "c", "s6", "c")
	_, pg := rt.volume("main", 100)
	k := pg.Key()
	rt.nodes["s2"].heartbeat(t, false)
	var waiting *pb.PGInfo
	wait.For(t, 20*time.Second, "status to say PG 0 waits for capacity in AZ a", func() bool {
		st, err := rt.cli.Status(ctxT(t), &pb.StatusRequest{})
		if err != nil {
			return false
		}
		waiting = st.Volumes[0].PgList[0]
		return waiting.WaitingForCapacityAz == "a"
	})
	if waiting.WaitingMember != "s2" || waiting.Change != nil {
		t.Fatalf("waiting PG: %v", waiting)
	}
	if p := rt.pg(k.Volume, k.PG); p.MembershipEpoch != 1 || p.Change != nil {
		t.Fatalf("a PG without a spare changed: %+v", p)
	}
	rt.add("s8", "a")
	begun := rt.waitPG(k, "the change to s8", func(p PG) bool { return p.Change != nil })
	if begun.Change.Joining != "s8" {
		t.Fatalf("change %+v", begun.Change)
	}
	st, err := rt.cli.Status(ctxT(t), &pb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if p := st.Volumes[0].PgList[0]; p.WaitingForCapacityAz != "" || p.Change.GetJoining() != "s8" || len(p.NextSegments) != 6 {
		t.Fatalf("status of the PG in a change: %v", p)
	}
}

// TestRepairDrainThenRemove drains a healthy node through the RPC: every
// segment moves off it with the node serving throughout, its load goes to
// zero, and removing it then changes nothing. Unknown nodes are refused.
func TestRepairDrainThenRemove(t *testing.T) {
	rt := newRepairTest(t, "s1", "a", "s2", "a", "s7", "a", "s3", "b", "s4", "b", "s5", "c", "s6", "c")
	v, pg := rt.volume("main", 100)
	if _, err := rt.cat.AddPG(ctxT(t), "main", 1); err != nil {
		t.Fatal(err)
	}
	pg1 := rt.pg(v.ID, 1)
	for _, s := range pg1.Segments {
		rt.nodes[s.Node].hold(pg1.Key(), 1, 50)
	}
	resp, err := rt.cli.DrainNode(ctxT(t), &pb.DrainNodeRequest{Id: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Admin != AdminDraining || resp.Previous != "" || resp.Segments == 0 || resp.State != StateUp {
		t.Fatalf("drain answer %v", resp)
	}
	for _, p := range []PG{pg, pg1} {
		if !slices.Contains(memberNodes(p.Segments), "s1") {
			continue
		}
		k := p.Key()
		begun := rt.waitPG(k, fmt.Sprintf("PG %d to move off s1", k.PG), func(q PG) bool { return q.Change != nil })
		if begun.Change.Leaving != "s1" || begun.Change.Reason != ReasonDrain {
			t.Fatalf("change %+v", begun.Change)
		}
		g := rt.nodes[begun.Change.Joining]
		wait.For(t, 10*time.Second, "the joining node to hydrate", func() bool { s, ok := g.seg(k); return ok && s.hydrating })
		hi := uint64(100)
		if k.PG == 1 {
			hi = 50
		}
		g.finish(k, hi)
		rt.waitPG(k, "the drain's change to complete", func(q PG) bool { return q.Change == nil })
		wait.For(t, 10*time.Second, "s1 to be retired", func() bool { s, _ := rt.nodes["s1"].seg(k); return s.retired })
	}
	checkLoad(t, rt.cat, "after the drain")
	st, err := rt.cli.Status(ctxT(t), &pb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range st.Nodes {
		if n.Id == "s1" && (n.Segments != 0 || n.Admin != AdminDraining) {
			t.Fatalf("s1 after the drain: %v", n)
		}
	}
	rm, err := rt.cli.RemoveNode(ctxT(t), &pb.RemoveNodeRequest{Id: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	if rm.Admin != AdminRemoved || rm.Previous != AdminDraining || rm.Segments != 0 {
		t.Fatalf("remove answer %v", rm)
	}
	if _, err := rt.cli.DrainNode(ctxT(t), &pb.DrainNodeRequest{Id: "s1"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("draining a removed node: %v", err)
	}
	if _, err := rt.cli.RemoveNode(ctxT(t), &pb.RemoveNodeRequest{Id: "s99"}); status.Code(err) != codes.NotFound {
		t.Fatalf("removing an unknown node: %v", err)
	}
	// A new volume is never placed on s1 again.
	if _, err := rt.cat.CreateVolume(ctxT(t), "second", 4096, 1<<20); err != nil {
		t.Fatal(err)
	}
	v2, _ := rt.cat.Volume(ctxT(t), "second")
	if p := rt.pg(v2.ID, 0); slices.Contains(memberNodes(p.Segments), "s1") {
		t.Fatalf("a removed node placed on: %v", memberNodes(p.Segments))
	}
}

// TestRepairSecondFailure: the joining node dies while it hydrates; its
// place goes to another spare, and the change completes on that one.
func TestRepairSecondFailure(t *testing.T) {
	rt := newRepairTest(t, "s1", "a", "s2", "a", "s7", "a", "s8", "a", "s3", "b", "s4", "b", "s5", "c", "s6", "c")
	_, pg := rt.volume("main", 100)
	k := pg.Key()
	rt.nodes["s2"].heartbeat(t, false)
	first := rt.waitPG(k, "the change to begin", func(p PG) bool { return p.Change != nil })
	rt.nodes[first.Change.Joining].heartbeat(t, false)
	second := rt.waitPG(k, "another joining node", func(p PG) bool { return p.Change != nil && p.Change.Joining != first.Change.Joining })
	if second.MembershipEpoch != first.MembershipEpoch+1 || second.Change.Leaving != "s2" {
		t.Fatalf("after the joining node failed: %+v", second)
	}
	checkLoad(t, rt.cat, "after the retarget")
	g := rt.nodes[second.Change.Joining]
	wait.For(t, 10*time.Second, "the new joining node to hydrate", func() bool { s, ok := g.seg(k); return ok && s.hydrating && s.epoch == second.MembershipEpoch })
	g.finish(k, 100)
	done := rt.waitPG(k, "the change to complete", func(p PG) bool { return p.Change == nil })
	if !slices.Contains(memberNodes(done.Segments), second.Change.Joining) || slices.Contains(memberNodes(done.Segments), "s2") {
		t.Fatalf("after completion: %v", memberNodes(done.Segments))
	}
	checkLoad(t, rt.cat, "after completion")
}

// TestRepairNodeBackEmpty: a node that comes back without a segment its
// peers hold data of is told to hydrate it, with no membership change.
func TestRepairNodeBackEmpty(t *testing.T) {
	rt := newRepairTest(t, "s1", "a", "s2", "a", "s3", "b", "s4", "b", "s5", "c", "s6", "c")
	_, pg := rt.volume("main", 100)
	k := pg.Key()
	// The loop finds the loss by the volume leaving s3's heartbeat: first
	// the heartbeat lists it.
	wait.For(t, 10*time.Second, "s3's heartbeat to list the volume", func() bool {
		st, err := rt.cat.NodeStates(ctxT(t))
		return err == nil && slices.Contains(st["s3"].Hosted, k.Volume)
	})
	d := rt.nodes["s3"].declaresNow()
	rt.nodes["s3"].lose(k)
	wait.For(t, 20*time.Second, "s3 to be told to hydrate PG 0", func() bool {
		s, ok := rt.nodes["s3"].seg(k)
		return ok && s.hydrating && rt.nodes["s3"].declaresNow() > d
	})
	if p := rt.pg(k.Volume, k.PG); p.MembershipEpoch != 1 || p.Change != nil {
		t.Fatalf("a rehydration changed the membership: %+v", p)
	}
	if n := counterValue(t, rt.srv.repairMetrics.rehydrated); n < 1 {
		t.Fatalf("rehydrated segments counted: %v", n)
	}
}

// TestRepairAcrossLeaders: the leader that began a change resigns before the
// joining member is complete; the next leader, which knows nothing of the
// first one's Declare answers, asks the members again and completes it.
func TestRepairAcrossLeaders(t *testing.T) {
	rt := newRepairTest(t, "s1", "a", "s2", "a", "s7", "a", "s3", "b", "s4", "b", "s5", "c", "s6", "c")
	_, pg := rt.volume("main", 100)
	k := pg.Key()
	cat2, err := Open(ctxT(t), testURLs, rt.cat.Prefix())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cat2.Close() })
	srv2 := NewServer(cat2, time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv2.SetRepair(RepairConfig{After: 1500 * time.Millisecond, Interval: 50 * time.Millisecond, RPCTimeout: 2 * time.Second})
	t.Cleanup(srv2.campaign(context.Background(), Candidate{Name: "c2", Addr: "127.0.0.1:1", AZ: "b"}))

	rt.nodes["s2"].heartbeat(t, false)
	begun := rt.waitPG(k, "the change to begin", func(p PG) bool { return p.Change != nil })
	wait.For(t, 10*time.Second, "s7 to hydrate", func() bool { s, ok := rt.nodes["s7"].seg(k); return ok && s.hydrating })
	rt.resign()
	wait.For(t, 15*time.Second, "the second control plane to lead", srv2.Leading)
	rt.nodes["s7"].finish(k, 100)
	done := rt.waitPG(k, "the second leader to complete the change", func(p PG) bool { return p.Change == nil })
	if done.MembershipEpoch != begun.MembershipEpoch+1 || !slices.Contains(memberNodes(done.Segments), "s7") {
		t.Fatalf("after the second leader: %+v", done)
	}
	// The first leader, which resigned, completed nothing. (The second one
	// may not have counted its completion: under load its etcd call can
	// commit and still time out, and the next pass finds nothing to do.)
	if n := counterValue(t, rt.srv.repairMetrics.steps.WithLabelValues(ActComplete, ReasonDown)); n != 0 {
		t.Fatalf("the first leader, which resigned, counted %v completions", n)
	}
	if n := counterValue(t, srv2.repairMetrics.steps.WithLabelValues(ActComplete, ReasonDown)); n > 1 {
		t.Fatalf("the second leader counted %v completions of one change", n)
	}
	checkLoad(t, rt.cat, "after the completion by the second leader")
}
