package storage

import (
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/redo"
)

// FuzzAppend feeds arbitrary Append requests to a node's ingest path: it must
// never panic, and a refused request must leave the segment as it was.
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
		g, _, err := n.ingest(fromAppendRequest(req))
		if err != nil {
			n.mu.Lock()
			after := [5]uint64{s.chain.SCL(), s.chain.Highest(), uint64(s.chain.HeldAbove()), uint64(len(n.segs)), uint64(len(n.volEpochs))}
			same := after == before && n.volEpochs[1] == epoch
			n.mu.Unlock()
			if !same {
				t.Fatalf("refused request (%v) changed the segment: %v -> %v", err, before, after)
			}
			return
		}
		if g != nil {
			<-g.done
		}
	})
}
