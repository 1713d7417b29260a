package storage_test

import (
	"context"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/storage"
)

func declareSpecs(c pb.StorageClient, specs ...*pb.SegmentSpec) (*pb.DeclareResponse, error) {
	return c.Declare(context.Background(), &pb.DeclareRequest{Specs: specs})
}

// TestDeclare: the control plane's Declare creates a segment (durably: it
// is there after a restart), repeats harmlessly, takes a newer membership,
// answers an older one with the epoch it holds, retires the segment when
// the node is left out, answers a removal from a PG it does not host as
// retired without creating it, and refuses, storing nothing, another
// geometry, another incarnation, a PG twice, and a deleted volume.
func TestDeclare(t *testing.T) {
	dir := t.TempDir()
	n, c, _ := startNode(t, dir)
	spec := setsSpec(1, []string{"s1", "b1"})
	spec.Incarnation = 0xa
	resp, err := declareSpecs(c, spec)
	if err != nil {
		t.Fatal(err)
	}
	if d := resp.Segments[0]; d.Pg != 0 || d.MembershipEpoch != 1 || d.Scl != 0 || d.Hydrating || d.Retired {
		t.Fatalf("a new segment: %+v", d)
	}
	n.Close()
	n, c, _ = startNode(t, dir)
	if in := info(t, c); in.Spec.MembershipEpoch != 1 || in.Spec.GetIncarnation() != 0xa {
		t.Fatalf("after a restart: %+v", in.Spec)
	}
	mustAppend(t, c, &pb.AppendRequest{Seq: 1, Volume: 1, Epoch: 1, Batches: batch(1, rec(1, 0, 1, 1, true, 1))})
	if resp, err := declareSpecs(c, spec); err != nil || resp.Segments[0].Scl != 1 || resp.Segments[0].Highest != 1 {
		t.Fatalf("declared again: %v, %v", resp, err)
	}

	change := setsSpec(2, []string{"s1", "b1"}, []string{"s1", "g1"})
	if resp, err := declareSpecs(c, change); err != nil || resp.Segments[0].MembershipEpoch != 2 {
		t.Fatalf("a newer membership: %v, %v", resp, err)
	}
	if in := info(t, c); len(in.Spec.MemberSets) != 2 || in.Spec.GetIncarnation() != 0xa {
		t.Fatalf("after the change: %+v", in.Spec)
	}

	resp, err = declareSpecs(c, setsSpec(1, []string{"s1", "b1"}))
	if err != nil || resp.Segments[0].MembershipEpoch != 2 {
		t.Fatalf("a declaration of an older membership: %v, %v; want the answer of epoch 2", resp, err)
	}
	if in := info(t, c); len(in.Spec.MemberSets) != 2 {
		t.Fatalf("an older membership replaced the held one: %+v", in.Spec)
	}

	stranger := setsSpec(1, []string{"b1", "g1"})
	stranger.Pg = 3
	resp, err = declareSpecs(c, stranger)
	if err != nil || !resp.Segments[0].Retired || resp.Segments[0].Pg != 3 {
		t.Fatalf("a removal from a PG the node does not host: %v, %v; want it answered retired", resp, err)
	}
	noGeometry := setsSpec(1, []string{"s1"})
	noGeometry.Pg = 4
	noGeometry.PageSize = 0
	geometry := proto.Clone(change).(*pb.SegmentSpec)
	geometry.PagesPerPg = 2048
	other := proto.Clone(change).(*pb.SegmentSpec)
	other.Incarnation = 0xb
	newPG := setsSpec(1, []string{"s1"})
	newPG.Pg = 5
	for _, c_ := range []struct {
		what  string
		specs []*pb.SegmentSpec
		want  pb.Reason
	}{
		{"no page geometry", []*pb.SegmentSpec{noGeometry}, pb.Reason_BAD_DECLARATION},
		{"another page geometry", []*pb.SegmentSpec{geometry}, pb.Reason_BAD_DECLARATION},
		{"another incarnation", []*pb.SegmentSpec{other}, pb.Reason_BAD_DECLARATION},
		{"a PG twice", []*pb.SegmentSpec{newPG, newPG}, pb.Reason_BAD_DECLARATION},
		{"a good spec beside a bad one", []*pb.SegmentSpec{newPG, geometry}, pb.Reason_BAD_DECLARATION},
	} {
		_, err := declareSpecs(c, c_.specs...)
		if got := storage.ReasonOf(err); got != c_.want {
			t.Fatalf("%s: %v, want %v", c_.what, err, c_.want)
		}
	}
	// Nothing of the refused requests was stored.
	scls, err := c.SegmentSCLs(context.Background(), &pb.SegmentSCLsRequest{Volume: 1})
	if err != nil || len(scls.Segments) != 1 {
		t.Fatalf("segments after the refusals: %v, %v", scls, err)
	}

	// Left out under a newer membership: retired.
	resp, err = declareSpecs(c, setsSpec(3, []string{"b1", "g1"}))
	if err != nil || !resp.Segments[0].Retired || resp.Segments[0].MembershipEpoch != 3 {
		t.Fatalf("a membership without the node: %v, %v", resp, err)
	}

	// A deleted volume is not declared back.
	if err := n.DropVolumes([]*pb.VolumeIncarnation{{VolumeId: 1, Incarnation: 0xa}}); err != nil {
		t.Fatal(err)
	}
	again := setsSpec(4, []string{"s1"})
	again.Incarnation = 0xa
	if _, err := declareSpecs(c, again); storage.ReasonOf(err) != pb.Reason_VOLUME_DELETED {
		t.Fatalf("a declaration of the deleted volume: %v, want VOLUME_DELETED", err)
	}
}
