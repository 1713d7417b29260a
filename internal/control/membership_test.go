package control

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// memberNodes is the node ids of segs, in order.
func memberNodes(segs []Segment) []string {
	out := make([]string, len(segs))
	for i, s := range segs {
		out[i] = s.Node
	}
	return out
}

// spareIn returns a registered node of az that holds no segment of pg.
func spareIn(t *testing.T, c *Catalog, pg PG, az string) Segment {
	t.Helper()
	nodes, err := c.Nodes(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.AZ == az && !slices.Contains(memberNodes(pg.hosts()), n.ID) {
			return Segment{Node: n.ID, AZ: n.AZ, Addr: n.Addr}
		}
	}
	t.Fatalf("no spare node in AZ %s for PG %d (%v)", az, pg.PG, memberNodes(pg.hosts()))
	return Segment{}
}

// TestMembershipChange runs a PG through begin, retarget, rollback, begin
// and complete, and checks after each step the sets, the epoch, the load
// record against a recount, and that the volume's watch reports the step.
func TestMembershipChange(t *testing.T) {
	c := newCatalog(t)
	ctx := ctxT(t)
	addNodes(t, c, "s1", "a", "s2", "a", "s7", "a", "s10", "a", "s3", "b", "s4", "b", "s5", "c", "s6", "c")
	vol, err := c.CreateVolume(ctx, "main", 4096, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	pg, err := c.PG(ctx, vol.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	ch := c.Watch(ctx, vol.ID)
	next := func(what string) Event {
		t.Helper()
		select {
		case ev := <-ch:
			return ev
		case <-time.After(10 * time.Second):
			t.Fatalf("no watch event for %s", what)
		}
		return Event{}
	}
	if ev := next("the existing PG"); ev.Type != EventExisting || ev.PG.Change != nil || ev.PG.Next != nil {
		t.Fatalf("first event %+v", ev)
	}
	leaving := pg.Segments[0] // in AZ a
	g := spareIn(t, c, pg, "a")

	begun, err := c.BeginChange(ctx, vol.ID, 0, leaving, g, ReasonDown)
	if err != nil {
		t.Fatal(err)
	}
	if begun.MembershipEpoch != pg.MembershipEpoch+1 || begun.Change == nil || begun.Change.Leaving != leaving.Node || begun.Change.Joining != g.Node || begun.Change.Reason != ReasonDown {
		t.Fatalf("after begin: %+v", begun)
	}
	want := slices.Clone(pg.Segments)
	want[0] = g
	if !slices.Equal(begun.Next, want) || !slices.Equal(begun.Segments, pg.Segments) {
		t.Fatalf("after begin: segments %v next %v, want %v and %v", memberNodes(begun.Segments), memberNodes(begun.Next), memberNodes(pg.Segments), memberNodes(want))
	}
	checkLoad(t, c, "after begin")
	if ev := next("begin"); ev.Type != EventChanged || encode(ev.PG) != encode(begun) {
		t.Fatalf("begin event %+v, want %+v", ev.PG, begun)
	}
	// The wire form carries both sets and the change.
	info := pgInfo(begun)
	if len(info.NextSegments) != 6 || info.NextSegments[0].Node != g.Node || info.Change.GetJoining() != g.Node || info.Change.GetStartedAtUnixMs() == 0 {
		t.Fatalf("pgInfo after begin: %v", info)
	}

	// A second change, or a stale epoch, is refused.
	if _, err := c.BeginChange(ctx, vol.ID, 0, pg.Segments[1], spareIn(t, c, begun, "a"), ReasonDown); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("a second begin: %v, want ErrInvalidState", err)
	}
	if _, err := c.CompleteChange(ctx, vol.ID, 0, pg.MembershipEpoch); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("complete at a stale epoch: %v, want ErrInvalidState", err)
	}

	// The joining node failed: another one takes its place.
	h := spareIn(t, c, begun, "a")
	re, err := c.RetargetChange(ctx, vol.ID, 0, begun.MembershipEpoch, h)
	if err != nil {
		t.Fatal(err)
	}
	if re.MembershipEpoch != begun.MembershipEpoch+1 || re.Change.Joining != h.Node || re.Next[0] != h || slices.Contains(memberNodes(re.hosts()), g.Node) {
		t.Fatalf("after retarget: %+v", re)
	}
	checkLoad(t, c, "after retarget")
	if ev := next("retarget"); ev.PG.MembershipEpoch != re.MembershipEpoch {
		t.Fatalf("retarget event %+v", ev.PG)
	}

	// The leaving node came back: roll back.
	rb, err := c.RollbackChange(ctx, vol.ID, 0, re.MembershipEpoch)
	if err != nil {
		t.Fatal(err)
	}
	if rb.MembershipEpoch != re.MembershipEpoch+1 || rb.Change != nil || rb.Next != nil || !slices.Equal(rb.Segments, pg.Segments) {
		t.Fatalf("after rollback: %+v", rb)
	}
	checkLoad(t, c, "after rollback")
	if ev := next("rollback"); ev.PG.MembershipEpoch != rb.MembershipEpoch || ev.PG.Change != nil {
		t.Fatalf("rollback event %+v", ev.PG)
	}
	if _, err := c.RollbackChange(ctx, vol.ID, 0, rb.MembershipEpoch); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("rollback without a change: %v", err)
	}

	// Again, to completion.
	b2, err := c.BeginChange(ctx, vol.ID, 0, leaving, g, ReasonRemoved)
	if err != nil {
		t.Fatal(err)
	}
	next("second begin")
	done, err := c.CompleteChange(ctx, vol.ID, 0, b2.MembershipEpoch)
	if err != nil {
		t.Fatal(err)
	}
	if done.MembershipEpoch != b2.MembershipEpoch+1 || done.Change != nil || done.Next != nil || !slices.Equal(done.Segments, want) {
		t.Fatalf("after complete: %+v", done)
	}
	checkLoad(t, c, "after complete")
	if ev := next("complete"); ev.PG.MembershipEpoch != done.MembershipEpoch {
		t.Fatalf("complete event %+v", ev.PG)
	}
	checkPG(t, c, done)

	// Deleting a volume in a change takes its joining segment off the load.
	if _, err := c.BeginChange(ctx, vol.ID, 0, done.Segments[2], spareIn(t, c, done, "a"), ReasonDrain); !errors.Is(err, ErrInvalid) {
		t.Fatal("begin with a replacement in another AZ than the leaving segment's was accepted")
	}
	if _, err := c.BeginChange(ctx, vol.ID, 0, done.Segments[1], spareIn(t, c, done, "a"), ReasonDrain); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.DeleteVolume(ctx, "main"); err != nil {
		t.Fatal(err)
	}
	checkLoad(t, c, "after deleting a volume in a change")
}

// TestMembershipChangeRefusals checks the preconditions BeginChange keeps.
func TestMembershipChangeRefusals(t *testing.T) {
	c := newCatalog(t)
	ctx := ctxT(t)
	addNodes(t, c, "s1", "a", "s2", "a", "s7", "a", "s3", "b", "s4", "b", "s5", "c", "s6", "c")
	vol, err := c.CreateVolume(ctx, "main", 4096, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	pg, err := c.PG(ctx, vol.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	spare := spareIn(t, c, pg, "a")
	for _, tc := range []struct {
		name             string
		leaving, joining Segment
		reason           string
		want             error
	}{
		{"not a member leaves", spare, pg.Segments[1], ReasonDown, ErrInvalidState},
		{"a member joins", pg.Segments[0], pg.Segments[1], ReasonDown, ErrInvalidState},
		{"no address", pg.Segments[0], Segment{Node: "s7", AZ: "a"}, ReasonDown, ErrInvalid},
		{"unknown reason", pg.Segments[0], spare, "bored", ErrInvalid},
	} {
		if _, err := c.BeginChange(ctx, vol.ID, 0, tc.leaving, tc.joining, tc.reason); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := c.BeginChange(ctx, vol.ID, 7, pg.Segments[0], spare, ReasonDown); !errors.Is(err, ErrNotFound) {
		t.Errorf("a PG that does not exist: %v", err)
	}
	// A leader whose election key is gone changes nothing.
	lost := clientv3.Compare(clientv3.CreateRevision(c.electionPrefix()+"gone"), "=", 42)
	if _, err := c.BeginChange(ctx, vol.ID, 0, pg.Segments[0], spare, ReasonDown, lost); !errors.Is(err, ErrNotLeader) {
		t.Errorf("a change under a lost lead: %v, want ErrNotLeader", err)
	}
	if p, _ := c.PG(ctx, vol.ID, 0); p.MembershipEpoch != pg.MembershipEpoch || p.Change != nil {
		t.Errorf("a change under a lost lead was applied: %+v", p)
	}
	checkLoad(t, c, "after refusals")
}

// TestRaceBeginChange starts changes of one PG from several goroutines at
// once: exactly one wins, the others are refused cleanly, and the load
// record counts the winner's joining segment once.
func TestRaceBeginChange(t *testing.T) {
	c := newCatalog(t)
	ctx := ctxT(t)
	addNodes(t, c, "s1", "a", "s2", "a", "s7", "a", "s8", "a", "s9", "a", "s3", "b", "s4", "b", "s5", "c", "s6", "c")
	vol, err := c.CreateVolume(ctx, "main", 4096, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	pg, err := c.PG(ctx, vol.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	var spares []Segment
	nodes, _ := c.Nodes(ctx)
	for _, n := range nodes {
		if n.AZ == "a" && !slices.Contains(memberNodes(pg.Segments), n.ID) {
			spares = append(spares, Segment{Node: n.ID, AZ: n.AZ, Addr: n.Addr})
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, len(spares))
	for i, g := range spares {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = c.BeginChange(ctx, vol.ID, 0, pg.Segments[0], g, ReasonDown)
		}()
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, ErrInvalidState):
			t.Errorf("begin with %s: %v", spares[i].Node, err)
		}
	}
	if won != 1 {
		t.Fatalf("%d begins won, want 1: %v", won, errs)
	}
	got, err := c.PG(ctx, vol.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got.MembershipEpoch != pg.MembershipEpoch+1 {
		t.Fatalf("epoch %d after one change from %d", got.MembershipEpoch, pg.MembershipEpoch)
	}
	checkLoad(t, c, "after racing begins")
}

// TestPGRecordWithoutChange reads a PG record as written before membership
// changes existed (no next, no change) and writes one back that carries
// neither when no change is under way.
func TestPGRecordWithoutChange(t *testing.T) {
	c := newCatalog(t)
	ctx := ctxT(t)
	old := `{"version":1,"volume_id":9,"pg":0,"membership_epoch":3,"geometry_epoch":1,"segments":[{"node":"s1","az":"a","addr":"x"}]}`
	if _, err := c.cli.Put(ctx, c.pgKey(9, 0), old); err != nil {
		t.Fatal(err)
	}
	pg, err := c.PG(ctx, 9, 0)
	if err != nil {
		t.Fatal(err)
	}
	if pg.MembershipEpoch != 3 || pg.Change != nil || pg.Next != nil || len(pg.Segments) != 1 {
		t.Fatalf("old record read as %+v", pg)
	}
	if got := encode(pg); got != old {
		t.Fatalf("a PG without a change encodes as %s, want %s", got, old)
	}
	if info := pgInfo(pg); info.Change != nil || len(info.NextSegments) != 0 {
		t.Fatalf("pgInfo of a PG without a change: %v", info)
	}
}

// TestNodeAdmin drains and removes nodes: placement avoids them, a new
// registration keeps the mark, and unknown nodes are refused by name.
func TestNodeAdmin(t *testing.T) {
	c := newCatalog(t)
	ctx := ctxT(t)
	addNodes(t, c, "s1", "a", "s2", "a", "s7", "a", "s3", "b", "s4", "b", "s5", "c", "s6", "c")
	if _, err := c.SetNodeAdmin(ctx, "s1", AdminDraining); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetNodeAdmin(ctx, "s2", AdminRemoved); err != nil {
		t.Fatal(err)
	}
	// s1 and s2 are out of placement: AZ a has one node left.
	if _, err := c.CreateVolume(ctx, "v", 4096, 1<<20); !errors.Is(err, ErrPlacement) {
		t.Fatalf("create with AZ a drained and removed: %v, want ErrPlacement", err)
	}
	if err := c.RegisterNode(ctx, Node{ID: "s2", AZ: "a", Addr: "127.0.0.1:9999", CapacityBytes: 1}); err != nil {
		t.Fatal(err)
	}
	states, err := c.NodeStates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if states["s1"].Admin != AdminDraining || states["s2"].Admin != AdminRemoved || states["s2"].Addr != "127.0.0.1:9999" {
		t.Fatalf("after re-registration: s1 %+v, s2 %+v", states["s1"], states["s2"])
	}
	if _, err := c.SetNodeAdmin(ctx, "s2", AdminDraining); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("draining a removed node: %v", err)
	}
	if _, err := c.SetNodeAdmin(ctx, "s1", AdminRemoved); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetNodeAdmin(ctx, "nope", AdminRemoved); !errors.Is(err, ErrNotFound) {
		t.Fatalf("an unknown node: %v", err)
	}
	// The heartbeat's hosted volumes reach NodeStates.
	if err := c.HeartbeatWith(ctx, "s3", 30*time.Second, HeartbeatReport{ReportsHosted: true, Hosted: []uint64{4, 5}, BootID: "b1"}); err != nil {
		t.Fatal(err)
	}
	states, _ = c.NodeStates(ctx)
	if s := states["s3"]; !s.ReportsHosted || !slices.Equal(s.Hosted, []uint64{4, 5}) || s.BootID != "b1" {
		t.Fatalf("s3 after a heartbeat with hosted volumes: %+v", s)
	}
}
