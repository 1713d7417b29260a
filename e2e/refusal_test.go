package e2e

import (
	"bytes"
	"context"
	"testing"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/redo"
	"github.com/borealis-db/borealis/internal/storage"
)

func reasonOf(err error) pb.Reason { return storage.ReasonOf(err) }

const refusalVolume = 42

func spec(cl []string, addrs []string) *pb.SegmentSpec {
	s := &pb.SegmentSpec{Volume: refusalVolume, Pg: 0, PageSize: pageSize, PagesPerPg: 64, MembershipEpoch: 1}
	for i, id := range cl {
		s.Members = append(s.Members, &pb.Member{NodeId: id, Addr: addrs[i]})
	}
	return s
}

func record(lsn, prev uint64, epoch uint64, page uint64, data string) *redo.Record {
	return &redo.Record{
		Volume: refusalVolume, PG: 0, Page: page, LSN: lsn, PrevLSN: prev, Epoch: epoch, CPL: true,
		Kind: redo.KindDiff, Ranges: []redo.Range{{Offset: 100, Data: []byte(data)}},
	}
}

// appendOnce sends one request on a fresh stream and returns the answer or
// the refusal.
func appendOnce(t *testing.T, c pb.StorageClient, req *pb.AppendRequest) (*pb.AppendResponse, error) {
	t.Helper()
	stream, err := c.Append(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(req); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	stream.CloseSend()
	return resp, err
}

// TestBadInputIsRefusedAndChangesNothing sends a storage node each kind of bad
// input and checks it is refused with its typed reason and that the node's
// segment and pages are exactly as before.
func TestBadInputIsRefusedAndChangesNothing(t *testing.T) {
	cl := startNodes(t)
	var ids, addrs []string
	for _, c := range cl.Components() {
		ids, addrs = append(ids, c.ID), append(addrs, c.Addr)
	}
	s1 := storageClient(t, cl, "s1")
	ctx := context.Background()

	// A good history at epoch 5: two records on page 3.
	good := &pb.AppendRequest{Seq: 1, Volume: refusalVolume, Epoch: 5, Declare: []*pb.SegmentSpec{spec(ids, addrs)},
		Batches: []*pb.SegmentBatch{{Pg: 0, Records: [][]byte{record(1, 0, 5, 3, "hello").Encode(), record(2, 1, 5, 3, "world").Encode()}}}}
	resp, err := appendOnce(t, s1, good)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Acks) != 1 || resp.Acks[0].Scl != 2 {
		t.Fatalf("ack %v, want SCL 2", resp.Acks)
	}
	snapshot := func() (*pb.SegmentInfoResponse, []byte) {
		info, err := s1.SegmentInfo(ctx, &pb.SegmentInfoRequest{Volume: refusalVolume, Pg: 0})
		if err != nil {
			t.Fatal(err)
		}
		page, err := s1.GetPage(ctx, &pb.GetPageRequest{Volume: refusalVolume, Pg: 0, Page: 3, ReadLsn: 2})
		if err != nil {
			t.Fatal(err)
		}
		return info, page.Data
	}
	info0, page0 := snapshot()
	if !bytes.Equal(page0[100:105], []byte("world")) {
		t.Fatalf("page 3 at LSN 2 = %q, want world at offset 100", page0[100:110])
	}

	badCRC := record(3, 2, 5, 3, "crc").Encode()
	badCRC[len(badCRC)/2] ^= 0x40
	truncated := record(3, 2, 5, 3, "short").Encode()
	truncated = truncated[:len(truncated)-7]
	cases := []struct {
		name string
		req  *pb.AppendRequest
		want pb.Reason
	}{
		{"stale epoch", &pb.AppendRequest{Seq: 1, Volume: refusalVolume, Epoch: 4,
			Batches: []*pb.SegmentBatch{{Pg: 0, Records: [][]byte{record(3, 2, 4, 3, "stale").Encode()}}}}, pb.Reason_STALE_EPOCH},
		{"wrong volume", &pb.AppendRequest{Seq: 1, Volume: refusalVolume, Epoch: 5,
			Batches: []*pb.SegmentBatch{{Pg: 0, Records: [][]byte{func() []byte {
				r := record(3, 2, 5, 3, "other")
				r.Volume = refusalVolume + 1
				return r.Encode()
			}()}}}}, pb.Reason_WRONG_VOLUME},
		{"PG not hosted", &pb.AppendRequest{Seq: 1, Volume: refusalVolume, Epoch: 5,
			Batches: []*pb.SegmentBatch{{Pg: 9, Records: [][]byte{func() []byte {
				r := record(3, 0, 5, 9*64+1, "nohost")
				r.PG = 9
				return r.Encode()
			}()}}}}, pb.Reason_PG_NOT_HOSTED},
		{"bad CRC", &pb.AppendRequest{Seq: 1, Volume: refusalVolume, Epoch: 5,
			Batches: []*pb.SegmentBatch{{Pg: 0, Records: [][]byte{record(3, 2, 5, 4, "fine").Encode(), badCRC}}}}, pb.Reason_BAD_CRC},
		// Cut short, the CRC no longer matches what is left.
		{"truncated record", &pb.AppendRequest{Seq: 1, Volume: refusalVolume, Epoch: 5,
			Batches: []*pb.SegmentBatch{{Pg: 0, Records: [][]byte{truncated}}}}, pb.Reason_BAD_CRC},
		{"record shorter than a header", &pb.AppendRequest{Seq: 1, Volume: refusalVolume, Epoch: 5,
			Batches: []*pb.SegmentBatch{{Pg: 0, Records: [][]byte{truncated[:20]}}}}, pb.Reason_MALFORMED_RECORD},
		{"backlink not below LSN", &pb.AppendRequest{Seq: 1, Volume: refusalVolume, Epoch: 5,
			Batches: []*pb.SegmentBatch{{Pg: 0, Records: [][]byte{record(3, 3, 5, 3, "loop").Encode()}}}}, pb.Reason_MALFORMED_RECORD},
		{"backlink contradicting the chain", &pb.AppendRequest{Seq: 1, Volume: refusalVolume, Epoch: 5,
			Batches: []*pb.SegmentBatch{{Pg: 0, Records: [][]byte{record(5, 1, 5, 3, "fork").Encode()}}}}, pb.Reason_MALFORMED_RECORD},
		{"two records with one backlink", &pb.AppendRequest{Seq: 1, Volume: refusalVolume, Epoch: 5,
			Batches: []*pb.SegmentBatch{{Pg: 0, Records: [][]byte{record(4, 3, 5, 3, "a").Encode(), record(5, 3, 5, 3, "b").Encode()}}}}, pb.Reason_MALFORMED_RECORD},
		{"record epoch unlike its request's", &pb.AppendRequest{Seq: 1, Volume: refusalVolume, Epoch: 6,
			Batches: []*pb.SegmentBatch{{Pg: 0, Records: [][]byte{record(3, 2, 5, 3, "old").Encode()}}}}, pb.Reason_MALFORMED_RECORD},
		{"page outside PG", &pb.AppendRequest{Seq: 1, Volume: refusalVolume, Epoch: 5,
			Batches: []*pb.SegmentBatch{{Pg: 0, Records: [][]byte{record(3, 2, 5, 65, "far").Encode()}}}}, pb.Reason_MALFORMED_RECORD},
	}
	for _, c := range cases {
		_, err := appendOnce(t, s1, c.req)
		if err == nil {
			t.Fatalf("%s: accepted", c.name)
		}
		if got := reasonOf(err); got != c.want {
			t.Fatalf("%s: reason %v (%v), want %v", c.name, got, err, c.want)
		}
		t.Logf("%s: %v", c.name, status.Convert(err).Message())
		info, page := snapshot()
		if !proto.Equal(info, info0) || !bytes.Equal(page, page0) {
			t.Fatalf("%s changed stored state:\nbefore %v\nafter  %v", c.name, info0, info)
		}
	}

	// Reads: a read point above the SCL is refused, never served stale; a
	// stale-epoch read is refused; an unhosted PG is refused.
	for _, c := range []struct {
		name string
		req  *pb.GetPageRequest
		want pb.Reason
	}{
		{"read above SCL", &pb.GetPageRequest{Volume: refusalVolume, Pg: 0, Page: 3, ReadLsn: 3}, pb.Reason_SEGMENT_BEHIND},
		{"read with stale epoch", &pb.GetPageRequest{Volume: refusalVolume, Pg: 0, Page: 3, ReadLsn: 2, Epoch: 4}, pb.Reason_STALE_EPOCH},
		{"read of unhosted PG", &pb.GetPageRequest{Volume: refusalVolume, Pg: 5, Page: 5*64 + 1, ReadLsn: 2}, pb.Reason_PG_NOT_HOSTED},
		{"read of unknown volume", &pb.GetPageRequest{Volume: 99, Pg: 0, Page: 1, ReadLsn: 1}, pb.Reason_PG_NOT_HOSTED},
		{"read of a page outside the PG", &pb.GetPageRequest{Volume: refusalVolume, Pg: 0, Page: 65, ReadLsn: 2}, pb.Reason_BAD_REQUEST},
		{"read with PG tail above read point", &pb.GetPageRequest{Volume: refusalVolume, Pg: 0, Page: 3, ReadLsn: 2, PgTailLsn: 3}, pb.Reason_BAD_REQUEST},
	} {
		_, err := s1.GetPage(ctx, c.req)
		if got := reasonOf(err); got != c.want {
			t.Fatalf("%s: got %v (%v), want %v", c.name, got, err, c.want)
		}
	}
	// A page never written reads as zeros.
	zero, err := s1.GetPage(ctx, &pb.GetPageRequest{Volume: refusalVolume, Pg: 0, Page: 7, ReadLsn: 2})
	if err != nil || !bytes.Equal(zero.Data, make([]byte, pageSize)) {
		t.Fatalf("unwritten page: %v, zeros=%v", err, err == nil && bytes.Equal(zero.Data, make([]byte, pageSize)))
	}

	// After all that, the node still takes good input.
	resp, err = appendOnce(t, s1, &pb.AppendRequest{Seq: 1, Volume: refusalVolume, Epoch: 5,
		Batches: []*pb.SegmentBatch{{Pg: 0, Records: [][]byte{record(3, 2, 5, 3, "again").Encode()}}}})
	if err != nil || resp.Acks[0].Scl != 3 {
		t.Fatalf("good append after refusals: %v %v", resp, err)
	}
}
