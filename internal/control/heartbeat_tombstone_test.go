package control

import (
	"testing"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// TestHeartbeatSurvivesAnUnreadableTombstone: a tombstone the control plane
// cannot read (a damaged record) must not fail the node's heartbeat, which
// carries the volume epochs that fence old writers on the node; the node is
// told of no deletion and keeps its data.
func TestHeartbeatSurvivesAnUnreadableTombstone(t *testing.T) {
	t.Parallel()
	cat := newCatalog(t)
	sixNodes(t, cat)
	addr, _ := testServer(t, cat, "", 0)
	cli := dialControl(t, addr)
	ctx := ctxT(t)
	v, err := cli.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "a", PgSizeBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	// A damaged tombstone of a volume id the node reports holding.
	if _, err := cat.cli.Put(ctx, cat.deletedKey(77), "{not json"); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Heartbeat(ctx, &pb.HeartbeatRequest{Id: "s1",
		Hosted: []*pb.VolumeIncarnation{{VolumeId: v.Id, Incarnation: v.Incarnation}, {VolumeId: 77, Incarnation: 5}}})
	if err != nil {
		t.Fatalf("heartbeat with a damaged tombstone in the catalog: %v", err)
	}
	if len(resp.GetDeleted()) != 0 {
		t.Fatalf("told to drop %v", resp.GetDeleted())
	}
	found := false
	for _, e := range resp.GetEpochs() {
		found = found || e.GetVolumeId() == v.Id
	}
	if !found {
		t.Fatalf("the heartbeat's epochs %v lack volume %d", resp.GetEpochs(), v.Id)
	}
}
