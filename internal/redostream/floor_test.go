package redostream

import (
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/wait"
)

// A replica that subscribes again keeps the read transactions it had
// pinned: until it reports, the floor it reported last (and which has not
// expired) still holds; the subscription's start does not raise it (the
// floor handed to the volume would jump above read points the replica
// still reads at, and min_read_point at storage, raise-only, would follow).
func TestResubscribingKeepsTheReplicasLowerFloor(t *testing.T) {
	cfg := defaultConfig()
	cfg.BaseLSN = 100
	cfg.ReportTTL = time.Minute
	ts := startServer(t, cfg)
	first := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r1", VolumeId: 9})
	first.start()
	first.report(10, 100) // a read transaction pinned at 10
	wait.For(t, 5*time.Second, "r1's floor", func() bool { return ts.vol.last().floor == 10 })
	first.cancel()
	wait.For(t, 5*time.Second, "the subscription to end", func() bool { return len(ts.s.Subscriptions()) == 0 })

	again := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r1", VolumeId: 9, Epoch: 1, Applied: 100})
	if st := again.start(); st.From != 100 {
		t.Fatalf("from %d, want a resume at 100", st.From)
	}
	// Subscribe hands the floor over before it sends the start.
	if got := ts.vol.last(); got.floor > 10 {
		t.Fatalf("floor %d after r1 subscribed again, before it reported: above the 10 it reported last and still pins", got.floor)
	}
}

// The start hold exists because a replica keeps the read points it pinned
// under the previous writer: it lasts until an expected replica reports its
// floor. The subscription's start, a stand-in for a Hello without a read
// floor, does not count as that report.
func TestHoldLastsUntilAnExpectedReplicaReports(t *testing.T) {
	cfg := defaultConfig()
	cfg.BaseLSN = 100
	cfg.Epoch = 2
	cfg.Expect = []string{"r1"}
	cfg.ReportTTL = time.Minute
	ts := startServer(t, cfg)
	// r1 followed the writer of epoch 1 up to 60; it may pin read points
	// below that.
	sub := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r1", VolumeId: 9, Epoch: 1, Applied: 60})
	if st := sub.start(); st.From != 100 {
		t.Fatalf("from %d, want a resync at the VDL 100", st.From)
	}
	if got := ts.vol.last(); !got.held && got.floor > 60 {
		t.Fatalf("after r1 subscribed, before it reported: floor %d, not held; its read points under epoch 1 (at most 60) lose storage's protection", got.floor)
	}
	sub.report(40, 100)
	wait.For(t, 5*time.Second, "the hold to end at r1's report", func() bool {
		got := ts.vol.last()
		return !got.held && got.floor == 40
	})
}

// A Hello's read floor is the replica's first report: it holds GC from the
// moment the replica subscribes (at most at From), and ends the start's
// hold for an expected replica.
func TestHelloReadFloorIsTheFirstReport(t *testing.T) {
	cfg := defaultConfig()
	cfg.BaseLSN = 100
	cfg.Epoch = 2
	cfg.Expect = []string{"r1", "r2"}
	cfg.ReportTTL = time.Minute
	ts := startServer(t, cfg)
	r1 := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r1", VolumeId: 9, Epoch: 1, Applied: 60, ReadFloor: 40})
	r1.start()
	if got := ts.vol.last(); !got.held || got.floor != 40 {
		t.Fatalf("after r1's Hello with floor 40: %+v; want 40, held for r2", got)
	}
	// A floor above where the stream starts counts at the start.
	r2 := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r2", VolumeId: 9, Epoch: 2, Applied: 100, ReadFloor: 150})
	if st := r2.start(); st.From != 100 {
		t.Fatalf("r2 from %d", st.From)
	}
	if got := ts.vol.last(); got.held || got.floor != 40 {
		t.Fatalf("after every expected replica's Hello: %+v; want 40, not held", got)
	}
	r1.report(120, 100)
	wait.For(t, 5*time.Second, "r2's floor, held at its start", func() bool { return ts.vol.last().floor == 100 })
}
