package storage_test

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/redo"
	"github.com/borealis-db/borealis/internal/storage"
)

// rec is a full-image record of volume 1 PG 0.
func rec(lsn, prev, epoch, page uint64, cpl bool, fill byte) []byte {
	img := bytes.Repeat([]byte{fill}, pageSize)
	r := redo.Record{Volume: 1, PG: 0, Page: page, LSN: lsn, PrevLSN: prev, Epoch: epoch, CPL: cpl, Kind: redo.KindImage, Image: img}
	return r.Encode()
}

func specOf(members ...*pb.Member) *pb.SegmentSpec {
	return &pb.SegmentSpec{Volume: 1, Pg: 0, PageSize: pageSize, PagesPerPg: 1024, MembershipEpoch: 1, Members: members}
}

// appendOnce sends one request on a new stream and returns the ack or the
// refusal.
func appendOnce(t *testing.T, c pb.StorageClient, req *pb.AppendRequest) (*pb.AppendResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := c.Append(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(req); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	s.CloseSend()
	return resp, err
}

func mustAppend(t *testing.T, c pb.StorageClient, req *pb.AppendRequest) uint64 {
	t.Helper()
	resp, err := appendOnce(t, c, req)
	if err != nil {
		t.Fatal(err)
	}
	return resp.Acks[0].Scl
}

func info(t *testing.T, c pb.StorageClient) *pb.SegmentInfoResponse {
	t.Helper()
	resp, err := c.SegmentInfo(context.Background(), &pb.SegmentInfoRequest{Volume: 1, Pg: 0})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func pageAt(t *testing.T, c pb.StorageClient, page, lsn uint64) byte {
	t.Helper()
	resp, err := c.GetPage(context.Background(), &pb.GetPageRequest{Volume: 1, Pg: 0, Page: page, ReadLsn: lsn})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Data[0]
}

// oldWriter writes epoch 1's records 1..6 (pages 1..6, MTRs ending at 2, 4
// and 6), telling the VDL as it goes; the last MTR stays undurable.
func oldWriter(t *testing.T, c pb.StorageClient, spec *pb.SegmentSpec) {
	t.Helper()
	var prev uint64
	for lsn := uint64(1); lsn <= 6; lsn++ {
		req := &pb.AppendRequest{Seq: 1, Volume: 1, Epoch: 1, Vdl: (lsn - 1) / 2 * 2,
			Batches: []*pb.SegmentBatch{{Pg: 0, Records: [][]byte{rec(lsn, prev, 1, lsn, lsn%2 == 0, byte(lsn))}}}}
		if lsn == 1 {
			req.Declare = []*pb.SegmentSpec{spec}
		}
		// Above lsn if gossip brought the next records from a peer that
		// has them already.
		if scl := mustAppend(t, c, req); scl < lsn {
			t.Fatalf("ack SCL %d after LSN %d", scl, lsn)
		}
		prev = lsn
	}
}

// TestTruncate: a segment reports the VDL it was told and the headers of its
// records; a recovery's SegmentInfo fences the old writer; a truncation drops
// the old writer's records above the recovered VDL, durably, and the new
// writer continues the chain from the tail. Repeating it is harmless;
// contradicting it is refused.
func TestTruncate(t *testing.T) {
	dir := t.TempDir()
	n, c, addr := startNode(t, dir)
	spec := specOf(&pb.Member{NodeId: "s1", Az: "a", Addr: addr})
	oldWriter(t, c, spec)
	if in := info(t, c); in.VdlSeen != 4 || in.Scl != 6 {
		t.Fatalf("before truncation: vdl_seen %d, SCL %d; want 4 and 6", in.VdlSeen, in.Scl)
	}

	pull, err := c.Pull(context.Background(), &pb.PullRequest{Volume: 1, Pg: 0, After: 2, HeadersOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(pull.Records) != 0 || len(pull.Headers) != 4 {
		t.Fatalf("headers-only pull: %d records, %d headers", len(pull.Records), len(pull.Headers))
	}
	for i, h := range pull.Headers {
		lsn := uint64(i + 3)
		if h.Lsn != lsn || h.PrevLsn != lsn-1 || h.Epoch != 1 || h.Page != lsn || h.Cpl != (lsn%2 == 0) {
			t.Fatalf("header %d: %+v", i, h)
		}
	}
	paged, err := c.Pull(context.Background(), &pb.PullRequest{Volume: 1, Pg: 0, After: 2, HeadersOnly: true, MaxBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(paged.Headers) != 1 || !paged.More {
		t.Fatalf("headers-only pull of 1 byte: %d headers, more %v", len(paged.Headers), paged.More)
	}

	// Recovery fences first, through any PG of the volume, hosted or not.
	_, err = c.SegmentInfo(context.Background(), &pb.SegmentInfoRequest{Volume: 1, Pg: 9, FenceEpoch: 2})
	if got := storage.ReasonOf(err); got != pb.Reason_PG_NOT_HOSTED {
		t.Fatalf("fencing SegmentInfo of PG 9: %v, want PG_NOT_HOSTED", err)
	}
	_, err = appendOnce(t, c, &pb.AppendRequest{Seq: 1, Volume: 1, Epoch: 1,
		Batches: []*pb.SegmentBatch{{Pg: 0, Records: [][]byte{rec(7, 6, 1, 7, true, 7)}}}})
	if got := storage.ReasonOf(err); got != pb.Reason_STALE_EPOCH {
		t.Fatalf("old writer after the fence: %v, want STALE_EPOCH", err)
	}
	_, err = c.SegmentInfo(context.Background(), &pb.SegmentInfoRequest{Volume: 1, Pg: 0, FenceEpoch: 1})
	if got := storage.ReasonOf(err); got != pb.Reason_STALE_EPOCH {
		t.Fatalf("fencing with an older epoch: %v, want STALE_EPOCH", err)
	}
	if in := info(t, c); in.Epoch != 2 || in.Scl != 6 {
		t.Fatalf("after the fence: epoch %d, SCL %d; want 2 and 6", in.Epoch, in.Scl)
	}

	// Recovery found VDL 4 (LSN 4 is this PG's tail) and LAL 10.
	tr := &pb.TruncateRequest{Volume: 1, Pg: 0, Epoch: 2, After: 4, Through: 14, Tail: 4}
	for range 2 {
		resp, err := c.Truncate(context.Background(), tr)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Scl != 4 {
			t.Fatalf("truncate answered SCL %d, want 4", resp.Scl)
		}
	}
	in := info(t, c)
	if in.Scl != 4 || in.Highest != 4 || in.Epoch != 2 || in.Records != 4 || len(in.Truncations) != 1 || in.VdlSeen != 4 {
		t.Fatalf("after truncation: %+v", in)
	}
	for _, bad := range []struct {
		req  *pb.TruncateRequest
		want pb.Reason
	}{
		{&pb.TruncateRequest{Volume: 1, Pg: 0, Epoch: 1, After: 4, Through: 14, Tail: 4}, pb.Reason_STALE_EPOCH},
		{&pb.TruncateRequest{Volume: 1, Pg: 0, Epoch: 2, After: 3, Through: 14, Tail: 2}, pb.Reason_BAD_REQUEST},
		{&pb.TruncateRequest{Volume: 1, Pg: 0, Epoch: 3, After: 4, Through: 14, Tail: 5}, pb.Reason_BAD_REQUEST},
		{&pb.TruncateRequest{Volume: 1, Pg: 9, Epoch: 2, After: 4, Through: 14, Tail: 4}, pb.Reason_PG_NOT_HOSTED},
	} {
		_, err := c.Truncate(context.Background(), bad.req)
		if got := storage.ReasonOf(err); got != bad.want {
			t.Fatalf("truncate %+v: %v (%v), want %v", bad.req, got, err, bad.want)
		}
		t.Logf("refused: %v", err)
	}

	// The new writer continues from the tail.
	if scl := mustAppend(t, c, &pb.AppendRequest{Seq: 1, Volume: 1, Epoch: 2, Vdl: 4,
		Batches: []*pb.SegmentBatch{{Pg: 0, Records: [][]byte{rec(5, 4, 2, 6, true, 50)}}}}); scl != 5 {
		t.Fatalf("new writer's first record: SCL %d, want 5", scl)
	}
	if got := pageAt(t, c, 5, 5); got != 0 {
		t.Fatalf("page 5 (written only by the dropped record) reads %d, want 0", got)
	}
	if got := pageAt(t, c, 6, 5); got != 50 {
		t.Fatalf("page 6 at LSN 5 reads %d, want the new writer's 50", got)
	}

	// All of it survives a restart.
	n.Close()
	_, c2, _ := startNodeWith(t, storage.Config{ID: "s1", AZ: "a", Dir: dir})
	in = info(t, c2)
	if in.Scl != 5 || in.Epoch != 2 || len(in.Truncations) != 1 || in.Truncations[0].Tail != 4 || in.VdlSeen != 4 {
		t.Fatalf("after restart: %+v", in)
	}
	if got := pageAt(t, c2, 5, 5); got != 0 {
		t.Fatalf("after restart page 5 reads %d, want 0", got)
	}
}

// pair is two nodes that host the same segment, each with its own address
// so that it can be stopped and restarted.
type pair struct {
	t       *testing.T
	dirs    [2]string
	addrs   [2]string
	nodes   [2]*storage.Node
	clients [2]pb.StorageClient
}

// start runs node i. gossip is its gossip interval; a long one leaves only
// the pulls that holes trigger at once.
func (p *pair) start(i int, gossip time.Duration) {
	p.t.Helper()
	n, err := storage.Open(storage.Config{ID: []string{"s1", "s2"}[i], AZ: "a", Dir: p.dirs[i], GossipInterval: gossip})
	if err != nil {
		p.t.Fatal(err)
	}
	addr := p.addrs[i]
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var lis net.Listener
	for range 50 {
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		p.t.Fatal(err)
	}
	p.addrs[i] = lis.Addr().String()
	go n.Serve(lis)
	conn, err := grpc.NewClient(p.addrs[i], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(func() { conn.Close(); n.Close() })
	p.nodes[i], p.clients[i] = n, pb.NewStorageClient(conn)
}

func newPair(t *testing.T) *pair {
	p := &pair{t: t, dirs: [2]string{t.TempDir(), t.TempDir()}}
	// Listen first so that both addresses are in the spec.
	for i := range 2 {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p.addrs[i] = lis.Addr().String()
		lis.Close()
	}
	p.start(0, 20*time.Millisecond)
	p.start(1, 20*time.Millisecond)
	return p
}

func (p *pair) spec() *pb.SegmentSpec {
	return specOf(&pb.Member{NodeId: "s1", Az: "a", Addr: p.addrs[0]}, &pb.Member{NodeId: "s2", Az: "a", Addr: p.addrs[1]})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTruncationReachesANodeThatWasAway: s2 misses the recovery. Gossip
// from it does not bring the dropped records back to s1, its reads above the
// recovered VDL are refused, and it learns the truncation from the new
// writer's declaration and fills the new records by gossip.
func TestTruncationReachesANodeThatWasAway(t *testing.T) {
	p := newPair(t)
	spec := p.spec()
	for i := range 2 {
		oldWriter(t, p.clients[i], spec)
	}
	p.nodes[1].Close()
	tr := &pb.TruncateRequest{Volume: 1, Pg: 0, Epoch: 2, After: 4, Through: 14, Tail: 4}
	if _, err := p.clients[0].Truncate(context.Background(), tr); err != nil {
		t.Fatal(err)
	}
	trunc := []*pb.Truncation{{After: 4, Through: 14, Epoch: 2, Tail: 4}}
	declared := p.spec()
	declared.Truncations = trunc
	if scl := mustAppend(t, p.clients[0], &pb.AppendRequest{Seq: 1, Volume: 1, Epoch: 2, Vdl: 4, Declare: []*pb.SegmentSpec{declared},
		Batches: []*pb.SegmentBatch{{Pg: 0, Records: [][]byte{rec(5, 4, 2, 6, true, 50)}}}}); scl != 5 {
		t.Fatalf("new writer's first record on s1: SCL %d", scl)
	}

	// s2 comes back holding the old records 5 and 6; s1 pulls from it (it
	// reports a higher SCL) and must refuse them. s2 itself pulls only for
	// holes, so that it learns the truncation from the declaration alone.
	p.start(1, time.Hour)
	served := p.nodes[1].Stats().PullsServed
	waitFor(t, "s1 to pull from s2 twice", func() bool { return p.nodes[1].Stats().PullsServed >= served+2 })
	if in := info(t, p.clients[0]); in.Scl != 5 || in.Highest != 5 || in.Records != 5 {
		t.Fatalf("s1 after gossip from the stale s2: %+v", in)
	}
	if got := pageAt(t, p.clients[0], 5, 5); got != 0 {
		t.Fatalf("s1 page 5 reads %d after gossip from the stale s2, want 0", got)
	}
	_, err := p.clients[1].GetPage(context.Background(), &pb.GetPageRequest{Volume: 1, Pg: 0, Page: 5, ReadLsn: 5, Epoch: 2, RecoveredLsn: 4})
	if got := storage.ReasonOf(err); got != pb.Reason_SEGMENT_BEHIND {
		t.Fatalf("read above the recovered VDL from the stale s2: %v, want SEGMENT_BEHIND", err)
	}
	t.Logf("stale segment refuses: %v", err)

	// The new writer's next request declares the truncation to s2.
	if _, err := appendOnce(t, p.clients[1], &pb.AppendRequest{Seq: 1, Volume: 1, Epoch: 2, Vdl: 5, Declare: []*pb.SegmentSpec{declared},
		Batches: []*pb.SegmentBatch{{Pg: 0, Records: [][]byte{rec(6, 5, 2, 1, true, 60)}}}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "s2 to fill LSN 5 from s1", func() bool { return info(t, p.clients[1]).Scl == 6 })
	waitFor(t, "s1 to fill LSN 6 from s2", func() bool { return info(t, p.clients[0]).Scl == 6 })
	in := info(t, p.clients[1])
	if len(in.Truncations) != 1 || in.Epoch != 2 || in.Records != 6 {
		t.Fatalf("s2 after the declaration: %+v", in)
	}
	for _, c := range p.clients {
		if got := pageAt(t, c, 5, 6); got != 0 {
			t.Fatalf("page 5 reads %d, want 0", got)
		}
		if got := pageAt(t, c, 1, 6); got != 60 {
			t.Fatalf("page 1 reads %d, want 60", got)
		}
	}
}

// TestTruncationSpreadsByGossip: a node that was away and that the new
// writer never contacts learns the truncation from a peer's pull answer
// before it takes any of the new writer's records.
func TestTruncationSpreadsByGossip(t *testing.T) {
	p := newPair(t)
	spec := p.spec()
	for i := range 2 {
		oldWriter(t, p.clients[i], spec)
	}
	p.nodes[1].Close()
	if _, err := p.clients[0].Truncate(context.Background(), &pb.TruncateRequest{Volume: 1, Pg: 0, Epoch: 2, After: 4, Through: 14, Tail: 4}); err != nil {
		t.Fatal(err)
	}
	// LSN 5 goes to another PG; this PG's next record is 6.
	if scl := mustAppend(t, p.clients[0], &pb.AppendRequest{Seq: 1, Volume: 1, Epoch: 2, Vdl: 4,
		Batches: []*pb.SegmentBatch{{Pg: 0, Records: [][]byte{rec(6, 4, 2, 2, true, 66)}}}}); scl != 6 {
		t.Fatalf("new writer on s1: SCL %d", scl)
	}
	p.start(1, 20*time.Millisecond)
	waitFor(t, "s2 to learn the truncation and the new record", func() bool {
		in := info(t, p.clients[1])
		return len(in.Truncations) == 1 && in.Scl == 6
	})
	if got := pageAt(t, p.clients[1], 5, 6); got != 0 {
		t.Fatalf("s2 page 5 reads %d, want 0", got)
	}
	if got := pageAt(t, p.clients[1], 2, 6); got != 66 {
		t.Fatalf("s2 page 2 reads %d, want 66", got)
	}
	if in := info(t, p.clients[1]); in.Records != 5 {
		t.Fatalf("s2 holds %d records, want 1-4 and 6", in.Records)
	}
}
