package volume

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/control"
	"github.com/borealis-db/borealis/internal/recovery"
	"github.com/borealis-db/borealis/internal/redo"
)

// startControl runs a control plane (embedded etcd, catalog, gRPC service)
// whose catalog lists the cluster's nodes as up.
func startControl(t *testing.T, cl *cluster) pb.ControlClient {
	t.Helper()
	e, urls, err := control.StartEmbedded(t.TempDir(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	ctx := ctxT(t, 30*time.Second)
	cat, err := control.Open(ctx, urls, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cat.Close() })
	for _, m := range cl.members {
		if err := cat.RegisterNode(ctx, control.Node{ID: m.NodeID, AZ: m.AZ, Addr: m.Addr, CapacityBytes: 1 << 30}); err != nil {
			t.Fatal(err)
		}
		if err := cat.Heartbeat(ctx, m.NodeID, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterControlServer(gs, control.NewServer(cat, 0, testLogger()))
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewControlClient(conn)
}

// storageClient dials one node directly.
func storageClient(t *testing.T, addr string) pb.StorageClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewStorageClient(conn)
}

func infoOf(t *testing.T, c pb.StorageClient, vol uint64, pg uint32) *pb.SegmentInfoResponse {
	t.Helper()
	resp, err := c.SegmentInfo(ctxT(t, 5*time.Second), &pb.SegmentInfoRequest{Volume: vol, Pg: pg})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRecoverAfterCrash: a writer dies with one MTR on only three nodes and
// another cut in half (its PG 1 record lost, its PG 0 records on three
// nodes). A new writer recovers while a node is down: the VDL covers every
// acknowledged commit and the whole MTR, and stops before the cut one. The
// truncation is recorded in the control plane first; redoing the recovery
// changes nothing. The new writer reads and writes, the old one is fenced,
// and the node that was down learns the truncation from the new writer's
// declaration and converges.
func TestRecoverAfterCrash(t *testing.T) {
	cl := startCluster(t)
	ctl := startControl(t, cl)
	ctx := ctxT(t, 60*time.Second)
	if _, err := ctl.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "db", PageSize: 4096, PgSizeBytes: 16 * 4096}); err != nil {
		t.Fatal(err)
	}
	first, err := ctl.AcquireWriter(ctx, &pb.AcquireWriterRequest{Volume: "db", Holder: "writer-1", TtlMs: 60000})
	if err != nil {
		t.Fatal(err)
	}

	// The old writer reaches the nodes through proxies that can hang; the
	// nodes, recovery and the new writer reach each other directly.
	proxies := map[string]*pauser{}
	proxyOf := map[string]string{}
	for _, m := range cl.members {
		proxies[m.NodeID] = newPauser(t, m.Addr)
		proxyOf[m.Addr] = proxies[m.NodeID].lis.Addr().String()
	}
	oldCfg := Config{Epoch: first.Epoch, WriteTimeout: 5 * time.Second, Logger: testLogger(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", proxyOf[addr])
		})}}
	if err := NewFromControl(ctl, "db").Configure(ctx, &oldCfg); err != nil {
		t.Fatal(err)
	}
	old, err := Open(ctx, oldCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	vol := oldCfg.VolumeID

	// Acknowledged commits over PGs 0 and 1 (pages 1-16 and 17-32).
	pages := []uint64{1, 2, 17, 18}
	cur := map[uint64][]byte{}
	for v := range 5 {
		var mtr []PageWrite
		for _, p := range pages {
			nw := pageImage(p, v)
			mtr = append(mtr, PageWrite{Page: p, Old: cur[p], New: nw})
			cur[p] = nw
		}
		if _, err := old.Commit(ctx, mtr); err != nil {
			t.Fatal(err)
		}
	}
	acked := old.VDL()
	// PG 2 exists in the catalog but is never written.
	if _, err := ctl.AddPG(ctx, &pb.AddPGRequest{Volume: "db", Pg: 2}); err != nil {
		t.Fatal(err)
	}

	// An MTR that reaches only s3, s4 and s5: not durable, not acknowledged.
	for _, id := range []string{"s0", "s1", "s2"} {
		proxies[id].set(true)
	}
	whole := map[uint64][]byte{1: pageImage(1, 100), 17: pageImage(17, 100)}
	xEnd, err := old.Submit(ctx, []PageWrite{{Page: 1, Old: cur[1], New: whole[1]}, {Page: 17, Old: cur[17], New: whole[17]}})
	if err != nil {
		t.Fatal(err)
	}
	old.mu.Lock()
	tail0, tail1 := old.pgs[0].last, old.pgs[1].last
	old.mu.Unlock()
	direct := make([]pb.StorageClient, len(cl.members))
	for i, m := range cl.members {
		direct[i] = storageClient(t, m.Addr)
	}
	for _, i := range []int{3, 4, 5} {
		waitUntil(t, "the unacknowledged MTR to reach "+cl.members[i].NodeID, func() bool {
			return infoOf(t, direct[i], vol, 0).Scl == tail0 && infoOf(t, direct[i], vol, 1).Scl == tail1
		})
	}
	// Then the old writer is cut in half: of the MTR xEnd+1 (PG 0), xEnd+2
	// (PG 1), xEnd+3 (PG 0), the PG 1 record reached no one.
	cut := func(lsn, prev uint64, pg uint32, page uint64, cpl bool) []byte {
		r := redo.Record{Volume: vol, PG: pg, Page: page, LSN: lsn, PrevLSN: prev, Epoch: first.Epoch, CPL: cpl, Kind: redo.KindImage, Image: pageImage(page, 200)}
		return r.Encode()
	}
	for _, i := range []int{3, 4, 5} {
		s, err := direct[i].Append(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&pb.AppendRequest{Seq: 1, Volume: vol, Epoch: first.Epoch, Vdl: acked, Batches: []*pb.SegmentBatch{{Pg: 0,
			Records: [][]byte{cut(xEnd+1, tail0, 0, 2, false), cut(xEnd+3, xEnd+1, 0, 3, true)}}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
		s.CloseSend()
	}
	// s3 is down while a new writer recovers. The old writer still cannot
	// reach s0-s2 (recovery and the new writer go to the nodes directly):
	// the whole MTR may be on only s4 and s5 when recovery looks, and
	// recovery waits for gossip to copy it to a write quorum.
	cl.stop(3)
	if _, err := ctl.ReleaseWriter(ctx, &pb.ReleaseWriterRequest{Lease: first.Lease}); err != nil {
		t.Fatal(err)
	}
	second, err := ctl.AcquireWriter(ctx, &pb.AcquireWriterRequest{Volume: "db", Holder: "writer-2", TtlMs: 60000})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := RecoverConfigFromControl(ctx, ctl, "db", second.Epoch)
	if err != nil {
		t.Fatal(err)
	}
	rc.Logger = testLogger()
	if len(rc.PGs) != 3 || rc.VolumeID != vol || rc.PagesPerPG != 16 {
		t.Fatalf("recover config %+v", rc)
	}
	rec, err := Recover(ctx, rc)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("recovered: base %d, VCL %d, floor %d, truncated (%d, %d], tails %v, took %s; acked VDL was %d, the whole MTR ends at %d",
		rec.BaseLSN, rec.VCL, rec.Floor, rec.After, rec.Through, rec.PGTails, rec.Took, acked, xEnd)
	if rec.BaseLSN != xEnd || rec.VCL != xEnd+1 || rec.Floor < acked || rec.Through != xEnd+DefaultLAL {
		t.Fatalf("recovered %+v; want base %d, VCL %d, floor >= %d", rec, xEnd, xEnd+1, acked)
	}
	if rec.PGTails[0] != tail0 || rec.PGTails[1] != tail1 || rec.PGTails[2] != 0 {
		t.Fatalf("tails %v, want PG 0 %d, PG 1 %d, PG 2 0", rec.PGTails, tail0, tail1)
	}
	for _, p := range rec.PGs {
		if p.Answered != 5 || p.Truncated < 4 {
			t.Fatalf("PG %d: %+v", p.PG, p)
		}
	}
	v, err := ctl.GetVolume(ctx, &pb.GetVolumeRequest{Name: "db"})
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Truncations) != 1 || v.Truncations[0].Epoch != second.Epoch || v.Truncations[0].After != rec.After || v.Truncations[0].Pgs != 3 {
		t.Fatalf("control plane truncations %v", v.Truncations)
	}
	// Redoing it (as after an interruption) finds the same and changes
	// nothing.
	again, err := Recover(ctx, rc)
	if err != nil {
		t.Fatal(err)
	}
	if again.BaseLSN != rec.BaseLSN || again.Through != rec.Through || again.PGTails[0] != tail0 || again.PGTails[1] != tail1 {
		t.Fatalf("redo recovered %+v, first %+v", again, rec)
	}

	// The new writer.
	newCfg := Config{WriteTimeout: 5 * time.Second, Logger: testLogger()}
	if err := NewFromControl(ctl, "db").Configure(ctx, &newCfg); err != nil {
		t.Fatal(err)
	}
	rec.Apply(&newCfg)
	c, err := Open(ctx, newCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := map[uint64][]byte{1: whole[1], 2: cur[2], 3: make([]byte, 4096), 17: whole[17], 18: cur[18]}
	for p, img := range want {
		mustRead(t, c, p, c.VDL(), img)
	}

	// What a replica that applied up to the acknowledged VDL lacks: the
	// whole MTR, in LSN order, and none of the records recovery truncated
	// (they are off the PGs' chains).
	lacking, err := c.RedoSince(ctx, acked)
	if err != nil {
		t.Fatal(err)
	}
	if len(lacking) != 2 || lacking[0].Page != 1 || lacking[1].Page != 17 || lacking[1].LSN != xEnd || lacking[0].LSN <= acked || !lacking[1].CPL {
		t.Fatalf("RedoSince(%d) gave %+v; want the whole MTR ending at %d", acked, lacking, xEnd)
	}
	// Storage collects the log below what it materialized: from LSN 0 the
	// redo may be gone on every segment, and then RedoSince says so (a
	// promotion drops its cache); else it gives it all.
	all, err := c.RedoSince(ctx, 0)
	switch {
	case errors.Is(err, ErrRedoCollected):
	case err != nil:
		t.Fatalf("RedoSince(0): %v", err)
	case len(all) != 5*len(pages)+2 || all[len(all)-1].LSN != xEnd:
		t.Fatalf("RedoSince(0) gave %d records; want %d ending at %d", len(all), 5*len(pages)+2, xEnd)
	}
	next := map[uint64][]byte{2: pageImage(2, 300), 3: pageImage(3, 300), 17: pageImage(17, 300), 33: pageImage(33, 300)}
	mtr := []PageWrite{{Page: 2, Old: want[2], New: next[2]}, {Page: 3, New: next[3]}, {Page: 17, Old: want[17], New: next[17]}, {Page: 33, New: next[33]}}
	lsn, err := c.Commit(ctx, mtr)
	if err != nil {
		t.Fatal(err)
	}
	if lsn != xEnd+4 {
		t.Fatalf("the new writer's MTR ends at %d, want %d", lsn, xEnd+4)
	}
	for p, img := range next {
		mustRead(t, c, p, c.VDL(), img)
	}
	mustRead(t, c, 1, c.VDL(), whole[1])

	// The old writer is fenced.
	_, err = old.Commit(ctx, []PageWrite{{Page: 18, Old: cur[18], New: pageImage(18, 400)}})
	if !errors.Is(err, ErrFenced) {
		t.Fatalf("old writer after recovery: %v, want ErrFenced", err)
	}
	t.Logf("old writer: %v", err)

	// A recovery under the old epoch is fenced.
	stale := rc
	stale.Epoch = first.Epoch
	if _, err := Recover(ctx, stale); !errors.Is(err, ErrFenced) {
		t.Fatalf("recovery under the old epoch: %v, want ErrFenced", err)
	}

	// s3 comes back holding the cut MTR's records: the new writer's
	// declaration truncates them, and gossip fills in the new records.
	cl.restart(3)
	c.mu.Lock()
	tails := map[uint32]uint64{0: c.pgs[0].last, 1: c.pgs[1].last, 2: c.pgs[2].last}
	c.mu.Unlock()
	s3 := storageClient(t, cl.members[3].Addr)
	for pg, tail := range tails {
		deadline := time.Now().Add(20 * time.Second)
		for {
			resp, err := s3.SegmentInfo(ctx, &pb.SegmentInfoRequest{Volume: vol, Pg: pg})
			if err == nil && resp.Scl == tail && len(resp.Truncations) == 1 && resp.Truncations[0].Epoch == second.Epoch {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("s3 PG %d did not converge to SCL %d with the truncation of epoch %d: %v %v", pg, tail, second.Epoch, resp, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	vdl := c.VDL()
	for p, img := range map[uint64][]byte{1: whole[1], 2: next[2], 3: next[3], 17: next[17], 33: next[33]} {
		pg := uint32((p - 1) / 16)
		resp, err := s3.GetPage(ctx, &pb.GetPageRequest{Volume: vol, Pg: pg, Page: p, ReadLsn: vdl, Epoch: second.Epoch, RecoveredLsn: rec.BaseLSN, PgTailLsn: tails[pg]})
		if err != nil {
			t.Fatalf("s3 page %d: %v", p, err)
		}
		if !bytes.Equal(resp.Data, img) {
			t.Fatalf("s3 page %d at %d: wrong content", p, vdl)
		}
	}
}

// TestRecoverNeedsReadQuorum: with four of six nodes down, recovery cannot
// tell what is durable; the error names the PG and why each segment did not
// answer.
func TestRecoverNeedsReadQuorum(t *testing.T) {
	cl := startCluster(t)
	c := cl.open(t, nil)
	ctx := ctxT(t, 30*time.Second)
	if _, err := c.Commit(ctx, []PageWrite{{Page: 1, New: pageImage(1, 0)}}); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 1, 2, 4} {
		cl.stop(i)
	}
	_, err := Recover(ctx, RecoverConfig{VolumeID: 7, Epoch: 2, PageSize: 4096, PagesPerPG: 16, SkipRecord: true,
		PGs: []RecoverPG{{PG: 0, Membership: OneSet(cl.members)}}, RPCTimeout: time.Second, Logger: testLogger()})
	var re *RecoverError
	var nq *recovery.NoReadQuorumError
	if !errors.As(err, &re) || !errors.As(err, &nq) || re.PG != 0 || re.Step != "SegmentInfo" || len(re.Causes) != 4 {
		t.Fatalf("recovery with 2 of 6 nodes: %v", err)
	}
	for _, want := range []string{"PG 0 has no read quorum", "no answer from s0, s1, s2, s4", cl.members[4].Addr} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("message %q lacks %q", err, want)
		}
	}
	t.Log(err)
	// Nothing was truncated.
	if info := infoOf(t, storageClient(t, cl.members[3].Addr), 7, 0); len(info.Truncations) != 0 || info.Scl != 1 {
		t.Fatalf("s3 after a failed recovery: %+v", info)
	}
}

// TestRecoverCountsOnlyItsIncarnation: segments declared under another
// incarnation of the same volume id (another volume, from a catalog since
// replaced) are not this volume's: recovery does not count them, says why,
// and truncates nothing; under the right incarnation it recovers.
func TestRecoverCountsOnlyItsIncarnation(t *testing.T) {
	cl := startCluster(t)
	c := cl.open(t, func(cfg *Config) { cfg.Incarnation = 5 })
	ctx := ctxT(t, 30*time.Second)
	lsn, err := c.Commit(ctx, []PageWrite{{Page: 1, New: pageImage(1, 0)}})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	rc := RecoverConfig{VolumeID: 7, Incarnation: 6, Epoch: 2, PageSize: 4096, PagesPerPG: 16, SkipRecord: true,
		PGs: []RecoverPG{{PG: 0, Membership: OneSet(cl.members)}}, RPCTimeout: time.Second, Logger: testLogger()}
	_, err = Recover(ctx, rc)
	var re *RecoverError
	if !errors.As(err, &re) || re.PG != 0 || !strings.Contains(err.Error(), "holds incarnation 5 of volume id 7, and the catalog's volume is incarnation 6") {
		t.Fatalf("recovery under another incarnation: %v", err)
	}
	if info := infoOf(t, storageClient(t, cl.members[0].Addr), 7, 0); len(info.Truncations) != 0 || info.Scl != lsn {
		t.Fatalf("s0 after a refused recovery: %+v", info)
	}
	rc.Incarnation, rc.Epoch = 5, 3
	rec, err := Recover(ctx, rc)
	if err != nil || rec.BaseLSN != lsn {
		t.Fatalf("recovery under the volume's incarnation: %+v, %v; want VDL %d", rec, err, lsn)
	}
}
