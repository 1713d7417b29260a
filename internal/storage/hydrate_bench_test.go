package storage

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/redo"
)

// benchNode is an in-process node serving on loopback, for benchmarks.
type benchNode struct {
	id, addr string
	n        *Node
	c        pb.StorageClient
}

func openBenchNode(b *testing.B, id string) *benchNode {
	b.Helper()
	n, err := Open(Config{ID: id, AZ: "a", Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go n.Serve(lis)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close(); n.Close() })
	return &benchNode{id: id, addr: lis.Addr().String(), n: n, c: pb.NewStorageClient(conn)}
}

func (h *benchNode) member() *pb.Member { return &pb.Member{NodeId: h.id, Az: "a", Addr: h.addr} }

// BenchmarkHydrate copies a PG of 64 MiB of pages, materialized and with
// its log collected, from one node to another, as a repair does: the
// figure is the copy's MB/s, from the joining node's declaration to its
// segment complete.
func BenchmarkHydrate(b *testing.B) {
	const pageSize, pages = 4096, 16384
	for range b.N {
		b.StopTimer()
		src, dst := openBenchNode(b, "s1"), openBenchNode(b, "s2")
		spec := func(epoch uint64, sets ...[]*pb.Member) *pb.SegmentSpec {
			s := &pb.SegmentSpec{Volume: 1, Pg: 0, PageSize: pageSize, PagesPerPg: 2 * pages, MembershipEpoch: epoch}
			for _, set := range sets {
				s.MemberSets = append(s.MemberSets, &pb.MemberSet{Members: set})
			}
			return s
		}
		old := spec(1, []*pb.Member{src.member()})
		var last uint64
		for first := uint64(1); first <= pages; first += 256 {
			var raw [][]byte
			for p := first; p < first+256 && p <= pages; p++ {
				img := make([]byte, pageSize)
				for j := range img {
					img[j] = byte(p) + byte(j*7)
				}
				r := redo.Record{Volume: 1, PG: 0, Page: p, LSN: p, PrevLSN: last, Epoch: 1, CPL: true, Kind: redo.KindImage, Image: img}
				raw = append(raw, r.Encode())
				last = p
			}
			req := &pb.AppendRequest{Seq: 1, Volume: 1, Epoch: 1, MinReadPoint: last, Vdl: last, Declare: []*pb.SegmentSpec{old},
				Batches: []*pb.SegmentBatch{{Pg: 0, Records: raw, RetainLsn: last, MembershipEpoch: 1}}}
			s, err := src.c.Append(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			if err := s.Send(req); err != nil {
				b.Fatal(err)
			}
			if _, err := s.Recv(); err != nil {
				b.Fatal(err)
			}
		}
		for {
			in, err := src.c.SegmentInfo(context.Background(), &pb.SegmentInfoRequest{Volume: 1, Pg: 0})
			if err != nil {
				b.Fatal(err)
			}
			if in.MaterializedLsn >= last && in.LogFloor >= last {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		change := spec(2, []*pb.Member{src.member()}, []*pb.Member{src.member(), dst.member()})
		if _, err := src.c.Declare(context.Background(), &pb.DeclareRequest{Specs: []*pb.SegmentSpec{change}}); err != nil {
			b.Fatal(err)
		}
		joining := spec(2, []*pb.Member{src.member()}, []*pb.Member{src.member(), dst.member()})
		joining.Hydrate = true
		b.StartTimer()
		for {
			resp, err := dst.c.Declare(context.Background(), &pb.DeclareRequest{Specs: []*pb.SegmentSpec{joining}})
			if err != nil {
				b.Fatal(err)
			}
			if d := resp.Segments[0]; !d.Hydrating && d.Scl >= last {
				b.SetBytes(int64(d.BytesCopied))
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}
