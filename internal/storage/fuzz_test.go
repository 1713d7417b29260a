package storage

import (
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/redo"
)

// FuzzAppend feeds arbitrary Append requests to a node's ingest path: it must
// never panic, and a refused request must leave the segment as it was
// (unless it declared truncations, which are applied before the records are
// judged; see refusal).
func FuzzAppend(f *testing.F) {
	spec := &pb.SegmentSpec{Volume: 1, Pg: 0, PageSize: 64, PagesPerPg: 8, MembershipEpoch: 1,
		Members: []*pb.Member{{NodeId: "s1", Addr: "127.0.0.1:1"}}}
	rec := func(lsn, prev uint64) []byte {
		r := redo.Record{Volume: 1, PG: 0, Page: 1 + lsn%8, LSN: lsn, PrevLSN: prev, Epoch: 1, CPL: true,
			Kind: redo.KindDiff, Ranges: []redo.Range{{Offset: uint32(lsn % 60), Data: []byte{byte(lsn)}}}}
		return r.Encode()
	}
	seed := func(req *pb.AppendRequest) {
		b, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seed(&pb.AppendRequest{Volume: 1, Epoch: 1, Batches: []*pb.SegmentBatch{{Pg: 0, Records: [][]byte{rec(3, 2), rec(4, 3)}}}})
	seed(&pb.AppendRequest{Volume: 1, Epoch: 1, Declare: []*pb.SegmentSpec{spec}, Batches: []*pb.SegmentBatch{{Pg: 0, Records: [][]byte{rec(5, 2)}}}})
	seed(&pb.AppendRequest{Volume: 1, Epoch: 0, MinReadPoint: 9, Batches: []*pb.SegmentBatch{{Pg: 1, RetainLsn: 3}}})

	n, err := Open(Config{ID: "s1", AZ: "a", Dir: f.TempDir()})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { n.Close() })
	// A segment with a short history, so requests have something to contradict.
	g, _, err := n.ingest(&incoming{volume: 1, epoch: 1, declare: []*pb.SegmentSpec{spec},
		batches: []incomingBatch{{pg: 0, raw: [][]byte{rec(1, 0), rec(2, 1)}}}})
	if err != nil {
		f.Fatal(err)
	}
	<-g.done

	f.Fuzz(func(t *testing.T, b []byte) {
		req := &pb.AppendRequest{}
		if proto.Unmarshal(b, req) != nil {
			return
		}
		s := n.segment(1, 0)
		n.mu.Lock()
		before := [5]uint64{s.chain.SCL(), s.chain.Highest(), uint64(s.chain.HeldAbove()), uint64(len(n.segs)), uint64(len(n.volEpochs))}
		epoch := n.volEpochs[1]
		n.mu.Unlock()
		truncates := false
		for _, d := range req.Declare {
			truncates = truncates || len(d.Truncations) > 0
		}
		g, _, err := n.ingest(fromAppendRequest(req))
		if err != nil && !truncates {
			n.mu.Lock()
			after := [5]uint64{s.chain.SCL(), s.chain.Highest(), uint64(s.chain.HeldAbove()), uint64(len(n.segs)), uint64(len(n.volEpochs))}
			same := after == before && n.volEpochs[1] == epoch
			n.mu.Unlock()
			if !same {
				t.Fatalf("refused request (%v) changed the segment: %v -> %v", err, before, after)
			}
			return
		}
		if err == nil && g != nil {
			<-g.done
		}
	})
}

// FuzzTruncate feeds arbitrary Truncate requests to a node: it must never
// panic, a refused one must leave the segment as it was, and an accepted
// one must leave a chain no longer than its tail or its SCL before.
func FuzzTruncate(f *testing.F) {
	spec := &pb.SegmentSpec{Volume: 1, Pg: 0, PageSize: 64, PagesPerPg: 8, MembershipEpoch: 1,
		Members: []*pb.Member{{NodeId: "s1", Addr: "127.0.0.1:1"}}}
	for _, req := range []*pb.TruncateRequest{
		{Volume: 1, Pg: 0, Epoch: 2, After: 2, Through: 9, Tail: 2},
		{Volume: 1, Pg: 0, Epoch: 3, After: 1, Through: 1 << 63, Tail: 1, Prior: []*pb.Truncation{{After: 2, Through: 9, Epoch: 2, Tail: 2}}},
		{Volume: 1, Pg: 0, Epoch: 2, After: 9, Through: 3, Tail: 4},
		{Volume: 1, Pg: 3, Epoch: 5},
	} {
		b, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	n, err := Open(Config{ID: "s1", AZ: "a", Dir: f.TempDir()})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { n.Close() })
	var raw [][]byte
	for lsn := uint64(1); lsn <= 4; lsn++ {
		r := redo.Record{Volume: 1, PG: 0, Page: lsn, LSN: lsn, PrevLSN: lsn - 1, Epoch: 1, CPL: true,
			Kind: redo.KindDiff, Ranges: []redo.Range{{Offset: 0, Data: []byte{byte(lsn)}}}}
		raw = append(raw, r.Encode())
	}
	g, _, err := n.ingest(&incoming{volume: 1, epoch: 1, declare: []*pb.SegmentSpec{spec}, batches: []incomingBatch{{pg: 0, raw: raw}}})
	if err != nil {
		f.Fatal(err)
	}
	<-g.done
	srv := &rpcServer{n: n}

	f.Fuzz(func(t *testing.T, b []byte) {
		req := &pb.TruncateRequest{}
		if proto.Unmarshal(b, req) != nil {
			return
		}
		s := n.segment(1, 0)
		n.mu.Lock()
		before := [4]uint64{s.chain.SCL(), s.chain.Highest(), uint64(len(s.chain.State().Truncations)), n.volEpochs[1]}
		n.mu.Unlock()
		resp, err := srv.Truncate(t.Context(), req)
		n.mu.Lock()
		after := [4]uint64{s.chain.SCL(), s.chain.Highest(), uint64(len(s.chain.State().Truncations)), n.volEpochs[1]}
		n.mu.Unlock()
		if err != nil {
			if after != before {
				t.Fatalf("refused truncation (%v) changed the segment: %v -> %v", err, before, after)
			}
			return
		}
		if resp.Scl != after[0] || resp.Scl > max(before[0], req.Tail) {
			t.Fatalf("truncation %v answered SCL %d; segment %v -> %v", req, resp.Scl, before, after)
		}
	})
}
