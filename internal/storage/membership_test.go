package storage_test

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/storage"
)

// setsSpec declares volume 1 PG 0 under membership epoch epoch with the
// given sets of node ids (addresses do not matter to these tests).
func setsSpec(epoch uint64, sets ...[]string) *pb.SegmentSpec {
	spec := &pb.SegmentSpec{Volume: 1, Pg: 0, PageSize: pageSize, PagesPerPg: 1024, MembershipEpoch: epoch}
	for _, set := range sets {
		ms := &pb.MemberSet{}
		for _, id := range set {
			ms.Members = append(ms.Members, &pb.Member{NodeId: id, Az: "a", Addr: "127.0.0.1:1"})
		}
		spec.MemberSets = append(spec.MemberSets, ms)
	}
	return spec
}

func detailOf(t *testing.T, err error) *pb.ErrorDetail {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("not a status: %v", err)
	}
	for _, d := range st.Details() {
		if ed, ok := d.(*pb.ErrorDetail); ok {
			return ed
		}
	}
	t.Fatalf("no ErrorDetail in %v", err)
	return nil
}

func batch(membership uint64, recs ...[]byte) []*pb.SegmentBatch {
	return []*pb.SegmentBatch{{Pg: 0, Records: recs, MembershipEpoch: membership}}
}

// wantStaleMembership checks a STALE_MEMBERSHIP refusal that carries the
// node's epoch and a code apart from STALE_EPOCH's.
func wantStaleMembership(t *testing.T, err error, held uint64, what string) {
	t.Helper()
	if got := storage.ReasonOf(err); got != pb.Reason_STALE_MEMBERSHIP {
		t.Fatalf("%s: %v, want STALE_MEMBERSHIP", what, err)
	}
	if d := detailOf(t, err); d.MembershipEpoch != held {
		t.Fatalf("%s: refusal carries membership epoch %d, want %d", what, d.MembershipEpoch, held)
	}
	if c := status.Code(err); c == codes.FailedPrecondition {
		t.Fatalf("%s: code %v, the one STALE_EPOCH uses", what, c)
	}
}

// TestMembershipEpochs: a node is a member when it is in any of a spec's
// sets; batches counted under an older membership epoch and declarations
// of an older membership are refused with the node's epoch, storing
// nothing; a declaration that leaves a new node out is refused.
func TestMembershipEpochs(t *testing.T) {
	_, c, _ := startNode(t, t.TempDir())
	// s1 is only in the new set of a change.
	change := setsSpec(2, []string{"a1", "b1", "c1"}, []string{"a1", "b1", "s1"})
	if scl := mustAppend(t, c, &pb.AppendRequest{Seq: 1, Volume: 1, Epoch: 1, Declare: []*pb.SegmentSpec{change},
		Batches: batch(2, rec(1, 0, 1, 1, true, 1))}); scl != 1 {
		t.Fatalf("SCL %d after LSN 1", scl)
	}

	_, err := appendOnce(t, c, &pb.AppendRequest{Seq: 1, Volume: 1, Epoch: 1, Batches: batch(1, rec(2, 1, 1, 2, true, 2))})
	wantStaleMembership(t, err, 2, "a batch under membership epoch 1")
	t.Logf("refusal: %v", err)
	_, err = appendOnce(t, c, &pb.AppendRequest{Seq: 1, Volume: 1, Epoch: 1, Declare: []*pb.SegmentSpec{setsSpec(1, []string{"a1", "b1", "s1"})},
		Batches: batch(0, rec(2, 1, 1, 2, true, 2))})
	wantStaleMembership(t, err, 2, "a declaration of membership epoch 1")
	if in := info(t, c); in.Scl != 1 || in.Highest != 1 || in.Records != 1 || in.Spec.MembershipEpoch != 2 {
		t.Fatalf("after the refusals: %+v", in)
	}

	// Epoch 0 says nothing; the held epoch and a newer one are taken.
	for i, m := range []uint64{0, 2, 3} {
		lsn := uint64(2 + i)
		if scl := mustAppend(t, c, &pb.AppendRequest{Seq: 1, Volume: 1, Epoch: 1, Batches: batch(m, rec(lsn, lsn-1, 1, lsn, true, byte(lsn)))}); scl != lsn {
			t.Fatalf("batch under membership epoch %d: SCL %d", m, scl)
		}
	}

	// A new PG that does not list the node is refused.
	stranger := setsSpec(1, []string{"a1", "b1", "c1"})
	stranger.Pg = 1
	_, err = appendOnce(t, c, &pb.AppendRequest{Seq: 1, Volume: 1, Epoch: 1, Declare: []*pb.SegmentSpec{stranger}})
	if got := storage.ReasonOf(err); got != pb.Reason_BAD_DECLARATION {
		t.Fatalf("a declaration that leaves the node out: %v, want BAD_DECLARATION", err)
	}
	// So is one that leaves it out under the epoch it holds.
	_, err = appendOnce(t, c, &pb.AppendRequest{Seq: 1, Volume: 1, Epoch: 1, Declare: []*pb.SegmentSpec{setsSpec(2, []string{"a1", "b1", "c1"})}})
	if got := storage.ReasonOf(err); got != pb.Reason_BAD_DECLARATION {
		t.Fatalf("a removal under the held epoch: %v, want BAD_DECLARATION", err)
	}
}

// TestRetiredSegment: a newer membership without the node retires its
// segment: it refuses the PG's writes, even under the newest epoch, and
// keeps serving reads and pulls.
func TestRetiredSegment(t *testing.T) {
	_, c, _ := startNode(t, t.TempDir())
	mustAppend(t, c, &pb.AppendRequest{Seq: 1, Volume: 1, Epoch: 1, MinReadPoint: 1, Declare: []*pb.SegmentSpec{setsSpec(1, []string{"s1", "b1"})},
		Batches: batch(1, rec(1, 0, 1, 1, true, 7))})
	if _, err := appendOnce(t, c, &pb.AppendRequest{Seq: 1, Volume: 1, Epoch: 1, Declare: []*pb.SegmentSpec{setsSpec(2, []string{"g1", "b1"})}}); err != nil {
		t.Fatalf("a newer membership without the node: %v", err)
	}
	in := info(t, c)
	if !in.Retired || in.Spec.MembershipEpoch != 2 {
		t.Fatalf("after the removal: retired %v, membership epoch %d", in.Retired, in.Spec.MembershipEpoch)
	}
	for _, m := range []uint64{0, 2} {
		_, err := appendOnce(t, c, &pb.AppendRequest{Seq: 1, Volume: 1, Epoch: 1, Batches: batch(m, rec(2, 1, 1, 2, true, 2))})
		wantStaleMembership(t, err, 2, "a batch to a retired segment")
	}
	if got := pageAt(t, c, 1, 1); got != 7 {
		t.Fatalf("retired segment reads %d, want 7", got)
	}
	pull, err := c.Pull(context.Background(), &pb.PullRequest{Volume: 1, Pg: 0})
	if err != nil || len(pull.Records) != 1 {
		t.Fatalf("pull from a retired segment: %v, %d records", err, len(pull.GetRecords()))
	}
	if in := info(t, c); in.Highest != 1 {
		t.Fatalf("retired segment holds up to %d, want 1", in.Highest)
	}
}
