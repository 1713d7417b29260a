package instance

import (
	"context"
	"testing"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/redo"
	"github.com/borealis-db/borealis/internal/redostream"
	"github.com/borealis-db/borealis/internal/replica"
	"github.com/borealis-db/borealis/internal/volume"
)

// A record of the writer's stream whose CRC does not match is never
// exposed: the replica drops the subscription (and what it buffered) and
// subscribes again from what it applied; the same MTR, sent whole on the
// next subscription, is applied.
func TestReplicaRefusesARecordWithABadCRC(t *testing.T) {
	vol, err := volume.Open(context.Background(), volume.Config{VolumeID: 1, ReadOnly: true, Logger: testLogger(),
		Placement: func(uint32) (volume.Membership, error) { return volume.Membership{}, volume.ErrNoSuchPG }})
	if err != nil {
		t.Fatal(err)
	}
	defer vol.Close()
	// started: no database (nothing cached); only the stream is under test.
	r := &Replica{log: testLogger(), f: replica.NewFollower(), vol: vol, decoded: map[uint64][]redo.Record{}, started: true}
	start := &pb.ReplicationMessage{Kind: &pb.ReplicationMessage_Start{Start: &pb.StreamStart{VolumeId: 1, Epoch: 1, From: 10, Vdl: 10}}}
	if r.handle(start) {
		t.Fatal("the start asked to subscribe again")
	}
	rec := redo.Record{Volume: 1, PG: 0, Page: 3, LSN: 11, PrevLSN: 9, Epoch: 1, CPL: true, Kind: redo.KindImage, Image: make([]byte, 4096)}
	good := rec.Encode()
	bad := append([]byte(nil), good...)
	bad[len(bad)/2] ^= 0xff
	batch := func(b []byte) *pb.ReplicationMessage {
		return &pb.ReplicationMessage{Kind: &pb.ReplicationMessage_Batch{Batch: &pb.Batch{
			Mtrs: []*pb.MTR{{FirstLsn: 11, LastLsn: 11, Records: [][]byte{b}}},
			Vdl:  &pb.VDLUpdate{Vdl: 11, DurableUnixUs: 1},
		}}}
	}
	resubscribe := false
	for _, m := range redostream.Unbatch(batch(bad)) {
		if r.handle(m) {
			resubscribe = true
			break
		}
	}
	if !resubscribe {
		t.Fatal("a record with a bad CRC did not end the subscription")
	}
	if got := vol.VDL(); got != 10 || r.f.Applied() != 10 {
		t.Fatalf("after the bad record: the volume's VDL %d, applied %d; want 10 (nothing exposed)", got, r.f.Applied())
	}
	if r.f.State() != replica.Stale {
		t.Fatalf("state %s, want stale", r.f.State())
	}
	// The next subscription resumes at 10 and gets the MTR whole.
	r.handle(start)
	for _, m := range redostream.Unbatch(batch(good)) {
		if r.handle(m) {
			t.Fatal("a good record ended the subscription")
		}
	}
	if got := vol.VDL(); got != 11 {
		t.Fatalf("after the good MTR: VDL %d, want 11", got)
	}
}
