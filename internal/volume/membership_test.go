package volume

import (
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/recovery"
	"github.com/borealis-db/borealis/internal/wait"
)

// add starts one more storage node, in az, and returns it as a member.
func (cl *cluster) add(az string) Member {
	cl.t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cl.t.Fatal(err)
	}
	m := Member{NodeID: fmt.Sprintf("s%d", len(cl.members)), AZ: az, Addr: lis.Addr().String()}
	cl.members = append(cl.members, m)
	cl.dirs = append(cl.dirs, cl.t.TempDir())
	cl.nodes = append(cl.nodes, nil)
	cl.serve(len(cl.members)-1, lis)
	return m
}

// replaced is members with member i replaced by with.
func replaced(members []Member, i int, with Member) []Member {
	out := append([]Member(nil), members...)
	out[i] = with
	return out
}

// During a membership change a commit needs a write quorum of both sets:
// with s0, s1 and the new member s6 down, the old set still has four (s2-s5)
// but the new one only three (s2-s4), and commits stall; once the change
// rolls back to the old set alone they are durable.
func TestDualMembershipNeedsWriteQuorumOfBothSets(t *testing.T) {
	cl := startCluster(t)
	old := append([]Member(nil), cl.members...)
	g := cl.add("c")
	dual := Membership{Epoch: 2, Sets: [][]Member{old, replaced(old, 5, g)}}
	c := cl.open(t, func(cfg *Config) {
		cfg.Placement = func(uint32) (Membership, error) { return dual, nil }
		cfg.WriteTimeout = time.Second
	})
	ctx := ctxT(t, 60*time.Second)
	var prev []byte
	commit := func(v int) error {
		img := pageImage(1, v)
		_, err := c.Commit(ctx, []PageWrite{{Page: 1, Old: prev, New: img}})
		if err == nil {
			prev = img
		}
		return err
	}
	for v := range 5 {
		if err := commit(v); err != nil {
			t.Fatalf("commit %d with every member up: %v", v, err)
		}
	}
	cl.stop(0)
	cl.stop(1)
	cl.stop(6)
	lsn, err := c.Submit(ctx, []PageWrite{{Page: 1, Old: prev, New: pageImage(1, 5)}})
	if err != nil {
		t.Fatal(err)
	}
	var ue *UnavailableError
	if err := c.WaitDurable(ctx, lsn); !errors.As(err, &ue) {
		t.Fatalf("commit with the new set at 3 of 6: got %v, want an UnavailableError", err)
	}
	if c.VDL() >= lsn {
		t.Fatalf("VDL %d reached LSN %d with no write quorum of the new set", c.VDL(), lsn)
	}

	if err := c.SetMembership(0, Membership{Epoch: 3, Sets: [][]Member{old}}); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitDurable(ctx, lsn); err != nil {
		t.Fatalf("after the rollback to the old set (4 of 6 up): %v", err)
	}
	prev = pageImage(1, 5)
	if err := commit(6); err != nil {
		t.Fatalf("commit after the rollback: %v", err)
	}
	mustRead(t, c, 1, c.VDL(), prev)
}

// A change ABCDEF -> {ABCDEF, ABCDEG} -> ABCDEG while commits go on: the
// new member gets the PG's records from the change on, the one that left
// gets none after it, and commits need only the new set at the end.
func TestMembershipChangeMovesWrites(t *testing.T) {
	cl := startCluster(t)
	old := append([]Member(nil), cl.members...)
	g := cl.add("c")
	c := cl.open(t, nil)
	ctx := ctxT(t, 60*time.Second)
	var prev []byte
	v := 0
	commit := func() uint64 {
		t.Helper()
		img := pageImage(1, v)
		lsn, err := c.Commit(ctx, []PageWrite{{Page: 1, Old: prev, New: img}})
		if err != nil {
			t.Fatalf("commit %d: %v", v, err)
		}
		prev = img
		v++
		return lsn
	}
	for range 5 {
		commit()
	}
	next := replaced(old, 5, g)
	if err := c.SetMembership(0, Membership{Epoch: 2, Sets: [][]Member{old, next}, Joining: g.NodeID}); err != nil {
		t.Fatal(err)
	}
	during := commit()
	gcli := storageClient(t, g.Addr)
	wait.For(t, 10*time.Second, "the joining member to hold the records written since the change", func() bool {
		info, err := gcli.SegmentInfo(ctx, &pb.SegmentInfoRequest{Volume: 7, Pg: 0})
		return err == nil && info.Highest >= during && info.GetSpec().GetMembershipEpoch() == 2
	})

	if err := c.SetMembership(0, Membership{Epoch: 3, Sets: [][]Member{next}}); err != nil {
		t.Fatal(err)
	}
	fcli := storageClient(t, old[5].Addr)
	left, err := fcli.SegmentInfo(ctx, &pb.SegmentInfoRequest{Volume: 7, Pg: 0})
	if err != nil {
		t.Fatal(err)
	}
	cl.stop(0) // the new set still has a write quorum: s1-s4, and s6 once gossip fills it
	var last uint64
	for range 5 {
		last = commit()
	}
	mustRead(t, c, 1, c.VDL(), prev)
	after, err := fcli.SegmentInfo(ctx, &pb.SegmentInfoRequest{Volume: 7, Pg: 0})
	if err != nil {
		t.Fatal(err)
	}
	if after.Highest > left.Highest {
		t.Fatalf("the member that left got records after the change (highest %d, was %d, last commit %d)", after.Highest, left.Highest, last)
	}
}

// Recovery during a membership change needs a read quorum of every set:
// with the new set's joining member and s0-s2 down, the old set still has
// its read quorum (s3-s5) but the new one only s3 and s4, and recovery
// refuses to decide; with the joining member and s0 back (a write quorum
// of each set, for the truncation) it recovers every commit.
func TestRecoverDualMembershipNeedsReadQuorumOfEverySet(t *testing.T) {
	cl := startCluster(t)
	old := append([]Member(nil), cl.members...)
	g := cl.add("c")
	dual := Membership{Epoch: 2, Sets: [][]Member{old, replaced(old, 5, g)}}
	c := cl.open(t, func(cfg *Config) {
		cfg.Placement = func(uint32) (Membership, error) { return dual, nil }
	})
	ctx := ctxT(t, 60*time.Second)
	img := pageImage(1, 0)
	lsn, err := c.Commit(ctx, []PageWrite{{Page: 1, New: img}})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	for _, i := range []int{0, 1, 2, 6} {
		cl.stop(i)
	}
	rc := RecoverConfig{VolumeID: 7, Epoch: 2, PageSize: 4096, PagesPerPG: 16, SkipRecord: true,
		PGs: []RecoverPG{{PG: 0, Membership: dual}}, RPCTimeout: time.Second, Logger: testLogger()}
	_, err = Recover(ctx, rc)
	var nq *recovery.NoReadQuorumError
	if !errors.As(err, &nq) {
		t.Fatalf("recovery with the new set at 2 of 6: %v, want no read quorum", err)
	}
	cl.restart(6)
	cl.restart(0)
	rec, err := Recover(ctx, rc)
	if err != nil || rec.BaseLSN != lsn {
		t.Fatalf("recovery with a read quorum of both sets: %+v, %v; want VDL %d", rec, err, lsn)
	}
}
