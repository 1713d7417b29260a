package control

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/storage"
	"github.com/borealis-db/borealis/internal/volume"
	"github.com/borealis-db/borealis/internal/wait"
)

// storageCluster is a leading control plane with real storage nodes, in
// process over real TCP, each with its agent heartbeating.
type storageCluster struct {
	t       *testing.T
	cat     *Catalog
	srv     *Server
	ctl     pb.ControlClient
	control string

	mu    sync.Mutex
	nodes map[string]*storageProc
}

type storageProc struct {
	id, az, addr, dir string
	node              *storage.Node
	stop              func()
}

func newStorageCluster(t *testing.T, spec ...string) *storageCluster {
	t.Helper()
	cat := newCatalog(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := NewServer(cat, time.Second, quiet)
	srv.SetRepair(RepairConfig{After: 1500 * time.Millisecond, Interval: 100 * time.Millisecond})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterControlServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(func() { srv.Stop(); gs.Stop() })
	sc := &storageCluster{t: t, cat: cat, srv: srv, ctl: dialControl(t, lis.Addr().String()), control: lis.Addr().String(), nodes: map[string]*storageProc{}}
	t.Cleanup(sc.stopAll)
	t.Cleanup(srv.campaign(context.Background(), Candidate{Name: "c1", Addr: sc.control, AZ: "a"}))
	for i := 0; i < len(spec); i += 2 {
		sc.start(spec[i], spec[i+1], t.TempDir())
	}
	wait.For(t, 20*time.Second, "the control plane to lead and every node to be up", func() bool {
		st, err := cat.NodeStates(ctxT(t))
		if err != nil || !srv.Leading() {
			return false
		}
		up := 0
		for _, n := range st {
			if n.State == StateUp {
				up++
			}
		}
		return up == len(spec)/2
	})
	return sc
}

// start runs storage node id on dir with its agent, on a free port.
func (sc *storageCluster) start(id, az, dir string) *storageProc {
	return sc.startOn(id, az, "127.0.0.1:0", dir)
}

func (sc *storageCluster) startOn(id, az, addr, dir string) *storageProc {
	t := sc.t
	t.Helper()
	node, err := storage.Open(storage.Config{ID: id, AZ: az, Dir: dir, GossipInterval: 50 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	go node.Serve(lis)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		RunNodeAgent(ctx, sc.control, AgentNode{
			ID: id, AZ: az, Addr: lis.Addr().String(), CapacityBytes: 1 << 30,
			OnEpochs: func(e map[uint64]uint64) { _ = node.ObserveEpochs(e) },
			Hosted:   node.HostedVolumes,
		}, nil)
	}()
	p := &storageProc{id: id, az: az, addr: lis.Addr().String(), dir: dir, node: node}
	var once sync.Once
	p.stop = func() { once.Do(func() { cancel(); <-done; node.Close(); lis.Close() }) }
	sc.mu.Lock()
	sc.nodes[id] = p
	sc.mu.Unlock()
	return p
}

func (sc *storageCluster) kill(id string) {
	sc.mu.Lock()
	p := sc.nodes[id]
	sc.mu.Unlock()
	p.stop()
}

func (sc *storageCluster) stopAll() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	for _, p := range sc.nodes {
		p.stop()
	}
}

func (sc *storageCluster) info(id string, vol uint64, pg uint32) (*pb.SegmentInfoResponse, error) {
	sc.mu.Lock()
	p := sc.nodes[id]
	sc.mu.Unlock()
	conn, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return pb.NewStorageClient(conn).SegmentInfo(ctx, &pb.SegmentInfoRequest{Volume: vol, Pg: pg})
}

// writer opens the volume's writer, a real volume client that follows the
// catalog's membership changes.
func (sc *storageCluster) writer(name string) *volume.Client {
	t := sc.t
	t.Helper()
	ctx := ctxT(t)
	aw, err := sc.ctl.AcquireWriter(ctx, &pb.AcquireWriterRequest{Volume: name, Holder: "writer", TtlMs: 60000})
	if err != nil {
		t.Fatal(err)
	}
	cfg := volume.Config{Epoch: aw.Epoch, WriteTimeout: 20 * time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := volume.NewFromControl(sc.ctl, name).Configure(ctx, &cfg); err != nil {
		t.Fatal(err)
	}
	c, err := volume.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func pageOf(page uint64, v int) []byte {
	return bytes.Repeat([]byte(fmt.Sprintf("page %d version %d|", page, v)), 4096/16)[:4096]
}

// TestRepairWithStorageNodes: a storage node of a PG dies while a writer
// writes; after --repair-after its segment moves to the spare of its AZ,
// which hydrates from its peers (real storage nodes, the real writer), the
// change completes, the writer goes on through the new membership, and the
// new member holds everything: the PG's SCL on it is the others'.
func TestRepairWithStorageNodes(t *testing.T) {
	sc := newStorageCluster(t, "s1", "a", "s2", "a", "s7", "a", "s3", "b", "s4", "b", "s5", "c", "s6", "c")
	ctx := ctxT(t)
	if _, err := sc.ctl.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "db", PageSize: 4096, PgSizeBytes: 16 * 4096}); err != nil {
		t.Fatal(err)
	}
	w := sc.writer("db")
	cur := map[uint64][]byte{}
	commit := func(v int) {
		t.Helper()
		var mtr []volume.PageWrite
		for _, p := range []uint64{1, 2, 3} {
			nw := pageOf(p, v)
			mtr = append(mtr, volume.PageWrite{Page: p, Old: cur[p], New: nw})
			cur[p] = nw
		}
		if _, err := w.Commit(ctx, mtr); err != nil {
			t.Fatalf("commit %d: %v", v, err)
		}
	}
	for v := range 20 {
		commit(v)
	}
	v, err := sc.cat.Volume(ctx, "db")
	if err != nil {
		t.Fatal(err)
	}
	pg := sc.pg(v.ID)
	if !slices.Contains(memberNodes(pg.Segments), "s2") || slices.Contains(memberNodes(pg.Segments), "s7") {
		t.Fatalf("PG 0 on %v; the test wants s2 a member and s7 spare", memberNodes(pg.Segments))
	}
	sc.kill("s2")
	// Writes go on with five segments.
	for v := 20; v < 30; v++ {
		commit(v)
	}
	var done PG
	wait.For(t, 60*time.Second, "PG 0 to move from s2 to s7 and complete", func() bool {
		done = sc.pg(v.ID)
		if done.Change == nil && done.MembershipEpoch > 1 {
			return true
		}
		// Writes during the change.
		commit(int(done.MembershipEpoch)*100 + len(cur))
		return false
	})
	if !slices.Contains(memberNodes(done.Segments), "s7") || slices.Contains(memberNodes(done.Segments), "s2") || done.MembershipEpoch != 3 {
		t.Fatalf("after the repair: %v at epoch %d", memberNodes(done.Segments), done.MembershipEpoch)
	}
	for v := 1000; v < 1010; v++ {
		commit(v)
	}
	wait.For(t, 20*time.Second, "s7 to hold PG 0 as far as the others", func() bool {
		g, err := sc.info("s7", v.ID, 0)
		if err != nil {
			return false
		}
		o, err := sc.info("s1", v.ID, 0)
		return err == nil && g.Scl == o.Scl && g.Scl >= w.VDL()
	})
	for p, want := range cur {
		got, err := w.ReadPage(ctx, p, w.VDL())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("page %d after the repair is not the last written", p)
		}
	}
	checkLoad(t, sc.cat, "after the repair")
	if n := counterValue(t, sc.srv.repairMetrics.rehydrated); n != 0 {
		t.Fatalf("rehydrated segments counted: %v; no node came back empty", n)
	}
	// s2 comes back with its data: it is told it left PG 0.
	sc.mu.Lock()
	old := sc.nodes["s2"]
	sc.mu.Unlock()
	sc.restartAt("s2", "a", old.addr, old.dir)
	wait.For(t, 20*time.Second, "s2 to retire its segment of PG 0", func() bool {
		i, err := sc.info("s2", v.ID, 0)
		return err == nil && i.Retired && i.Spec.GetMembershipEpoch() == done.MembershipEpoch
	})
	if pg := sc.pg(v.ID); pg.MembershipEpoch != done.MembershipEpoch {
		t.Fatalf("s2's return changed PG 0: %+v", pg)
	}
}

func (sc *storageCluster) pg(vol uint64) PG {
	sc.t.Helper()
	pg, err := sc.cat.PG(ctxT(sc.t), vol, 0)
	if err != nil {
		sc.t.Fatal(err)
	}
	return pg
}

// TestRepairNodeBackEmpty: a storage node restarts on an empty directory
// while the writer is idle (so nothing but repair gives it the PG again):
// the leader finds it lacks a segment its peers hold, tells it to hydrate,
// and it holds the PG again, with no membership change.
func TestRepairNodeBackEmptyStorage(t *testing.T) {
	sc := newStorageCluster(t, "s1", "a", "s2", "a", "s3", "b", "s4", "b", "s5", "c", "s6", "c")
	ctx := ctxT(t)
	if _, err := sc.ctl.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "db", PageSize: 4096, PgSizeBytes: 16 * 4096}); err != nil {
		t.Fatal(err)
	}
	w := sc.writer("db")
	var old []byte
	for v := range 10 {
		nw := pageOf(1, v)
		if _, err := w.Commit(ctx, []volume.PageWrite{{Page: 1, Old: old, New: nw}}); err != nil {
			t.Fatal(err)
		}
		old = nw
	}
	vol, err := sc.cat.Volume(ctx, "db")
	if err != nil {
		t.Fatal(err)
	}
	want, err := sc.info("s1", vol.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	wait.For(t, 30*time.Second, "s3 to hold PG 0 through the writer's last record", func() bool {
		i, err := sc.info("s3", vol.ID, 0)
		return err == nil && i.Scl == want.Scl
	})
	// The leader has seen s3's boot: a later one is a restart.
	wait.For(t, 10*time.Second, "the leader to record s3's boot", func() bool {
		b, err := sc.cat.CheckedBoots(ctxT(t))
		return err == nil && b["s3"] != ""
	})
	sc.mu.Lock()
	addr := sc.nodes["s3"].addr
	sc.mu.Unlock()
	sc.kill("s3")
	sc.restartAt("s3", "b", addr, t.TempDir())
	wait.For(t, 30*time.Second, "s3 to hydrate PG 0 again", func() bool {
		i, err := sc.info("s3", vol.ID, 0)
		return err == nil && i.Scl == want.Scl && !i.Hydrating
	})
	if pg := sc.pg(vol.ID); pg.MembershipEpoch != 1 || pg.Change != nil {
		t.Fatalf("the rehydration changed the membership: %+v", pg)
	}
	// Only s3's segment: the nodes' first heartbeats at the cluster's
	// start are taken as they are, not checked against peers that a new
	// PG's first records may reach first.
	if n := counterValue(t, sc.srv.repairMetrics.rehydrated); n != 1 {
		t.Fatalf("rehydrated segments counted: %v, want 1", n)
	}
}

// restartAt starts node id again on addr (the one it had: its PGs' records
// name it), on dir.
func (sc *storageCluster) restartAt(id, az, addr, dir string) *storageProc {
	t := sc.t
	t.Helper()
	var lis net.Listener
	wait.For(t, 10*time.Second, "the node's address to be free again", func() bool {
		var err error
		lis, err = net.Listen("tcp", addr)
		return err == nil
	})
	lis.Close()
	return sc.startOn(id, az, addr, dir)
}

// TestRepairDrainStorage drains a healthy node under writes: every PG it
// holds moves to the spare of its AZ while it serves (each commit goes on
// meeting its quorum), it ends holding nothing and retired from each PG,
// and removing it then changes no PG.
func TestRepairDrainStorage(t *testing.T) {
	sc := newStorageCluster(t, "s1", "a", "s2", "a", "s7", "a", "s3", "b", "s4", "b", "s5", "c", "s6", "c")
	ctx := ctxT(t)
	if _, err := sc.ctl.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "db", PageSize: 4096, PgSizeBytes: 16 * 4096}); err != nil {
		t.Fatal(err)
	}
	w := sc.writer("db")
	cur := map[uint64][]byte{}
	n := 0
	commit := func() {
		t.Helper()
		n++
		var mtr []volume.PageWrite
		// Pages 1 and 17: PGs 0 and 1.
		for _, p := range []uint64{1, 17} {
			nw := pageOf(p, n)
			mtr = append(mtr, volume.PageWrite{Page: p, Old: cur[p], New: nw})
			cur[p] = nw
		}
		if _, err := w.Commit(ctx, mtr); err != nil {
			t.Fatalf("commit %d: %v", n, err)
		}
	}
	for range 10 {
		commit()
	}
	vol, err := sc.cat.Volume(ctx, "db")
	if err != nil {
		t.Fatal(err)
	}
	var held []uint32
	for _, p := range []uint32{0, 1} {
		pg, err := sc.cat.PG(ctx, vol.ID, p)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(memberNodes(pg.Segments), "s1") {
			held = append(held, p)
		}
	}
	if len(held) == 0 {
		t.Fatal("s1 holds no PG to drain")
	}
	if _, err := sc.ctl.DrainNode(ctx, &pb.DrainNodeRequest{Id: "s1"}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 60*time.Second, "s1 to hold nothing", func() bool {
		commit()
		l, err := sc.cat.Load(ctx)
		return err == nil && l.Segments["s1"] == 0
	})
	for _, p := range held {
		pg, err := sc.cat.PG(ctx, vol.ID, p)
		if err != nil {
			t.Fatal(err)
		}
		if pg.Change != nil || !slices.Contains(memberNodes(pg.Segments), "s7") {
			t.Fatalf("PG %d after the drain: %+v", p, pg)
		}
		wait.For(t, 10*time.Second, fmt.Sprintf("s1 to retire PG %d", p), func() bool {
			i, err := sc.info("s1", vol.ID, p)
			return err == nil && i.Retired
		})
	}
	before := sc.pg(vol.ID)
	if _, err := sc.ctl.RemoveNode(ctx, &pb.RemoveNodeRequest{Id: "s1"}); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		commit()
	}
	if after := sc.pg(vol.ID); after.MembershipEpoch != before.MembershipEpoch {
		t.Fatalf("removing the drained node changed PG 0: %+v", after)
	}
	for p, want := range cur {
		got, err := w.ReadPage(ctx, p, w.VDL())
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("page %d after the drain: %v", p, err)
		}
	}
	checkLoad(t, sc.cat, "after the drain")
}
