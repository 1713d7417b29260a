package volume

import (
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// A node that was told of a newer membership than the writer counts acks
// under refuses its requests (STALE_MEMBERSHIP); the writer fetches the
// PG's membership again and goes on under it.
func TestStaleMembershipRefreshes(t *testing.T) {
	cl := startCluster(t)
	members := append([]Member(nil), cl.members...)
	var refreshed atomic.Int32
	newer := Membership{Epoch: 5, Sets: [][]Member{members}}
	c := cl.open(t, func(cfg *Config) {
		cfg.Refresh = func(uint32) (Membership, error) {
			refreshed.Add(1)
			return newer, nil
		}
	})
	ctx := ctxT(t, 60*time.Second)
	img := pageImage(1, 0)
	if _, err := c.Commit(ctx, []PageWrite{{Page: 1, New: img}}); err != nil {
		t.Fatal(err)
	}
	spec := &pb.SegmentSpec{Volume: 7, Pg: 0, PageSize: 4096, PagesPerPg: 16, MembershipEpoch: 5, MemberSets: []*pb.MemberSet{{}}}
	for _, m := range members {
		spec.MemberSets[0].Members = append(spec.MemberSets[0].Members, &pb.Member{NodeId: m.NodeID, Az: m.AZ, Addr: m.Addr})
	}
	for _, m := range members {
		if _, err := storageClient(t, m.Addr).Declare(ctx, &pb.DeclareRequest{Specs: []*pb.SegmentSpec{spec}}); err != nil {
			t.Fatalf("declare epoch 5 to %s: %v", m.NodeID, err)
		}
	}
	for v := 1; v <= 5; v++ {
		next := pageImage(1, v)
		if _, err := c.Commit(ctx, []PageWrite{{Page: 1, Old: img, New: next}}); err != nil {
			t.Fatalf("commit %d after the nodes learned epoch 5: %v", v, err)
		}
		img = next
	}
	if refreshed.Load() == 0 {
		t.Fatal("the client never refreshed its membership, yet its commits were durable under a stale one")
	}
	if got := c.MembershipEpoch(0); got != 5 {
		t.Fatalf("membership epoch %d, want 5", got)
	}
	mustRead(t, c, 1, c.VDL(), img)
}
