package volume

import (
	"context"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/quorum"
)

// newTestClient builds a client whose nodes have no connection and no
// sender, to test the queue policy in isolation.
func newTestClient(t *testing.T) (*Client, *pgState, []*node) {
	t.Helper()
	var members []Member
	for _, id := range []string{"a1", "a2", "b1", "b2", "c1", "c2"} {
		members = append(members, Member{NodeID: id, AZ: id[:1], Addr: "unused:1"})
	}
	c, err := Open(context.Background(), Config{VolumeID: 1, Epoch: 1, PagesPerPG: 16, Logger: testLogger(),
		Placement: func(uint32) (Membership, error) { return OneSet(members), nil }})
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	p := &pgState{idx: 0, scl: map[string]uint64{}}
	pm := &pgMembership{epoch: 1, members: members}
	ids := make([]quorum.SegmentID, len(members))
	for i, m := range members {
		ids[i] = quorum.SegmentID(m.NodeID)
		n := &node{c: c, m: m, wake: make(chan struct{}, 1), pgs: map[uint32]*pgState{}, declared: map[uint32]bool{}}
		c.nodes[m.NodeID] = n
		pm.nodes = append(pm.nodes, n)
	}
	pm.qcfg = quorum.Config{Epoch: 1, Sets: []quorum.Set{quorum.Default(ids)}}
	p.mem.Store(pm)
	p.written = true
	c.pgs[0] = p
	c.tracker.SetConfig(0, pm.qcfg)
	for lsn := uint64(1); lsn <= 10; lsn++ {
		if err := c.tracker.Allocated(lsn, 0, true); err != nil {
			t.Fatal(err)
		}
		p.pending = append(p.pending, lsn)
	}
	c.mu.Unlock()
	return c, p, pm.nodes
}

func TestReconnectDropsDurableAndResendsRest(t *testing.T) {
	c, p, nodes := newTestClient(t)
	n := nodes[5]
	n.pgs[0] = p
	mk := func(from, to uint64) []*entry {
		var es []*entry
		for l := from; l <= to; l++ {
			es = append(es, &entry{pg: p, lsn: l, data: make([]byte, 100), sent: true})
		}
		return es
	}
	// Records 1..6 were sent on the old stream and never answered; 7..10
	// were still queued (unsent).
	n.inflight = []*request{{seq: 1, entries: mk(1, 3)}, {seq: 2, entries: mk(4, 6)}}
	n.queue = mk(7, 10)
	for _, e := range n.queue {
		e.sent = false
	}
	// Four other segments hold 1..5: PGCL = 5.
	for _, o := range nodes[:4] {
		c.mu.Lock()
		c.tracker.Ack(0, quorum.SegmentID(o.m.NodeID), 5)
		c.mu.Unlock()
	}
	c.mu.Lock()
	pgcl := c.tracker.PGCL(0)
	c.mu.Unlock()
	if pgcl != 5 {
		t.Fatalf("PGCL %d", pgcl)
	}
	n.connect()
	var lsns []uint64
	for _, e := range n.queue {
		lsns = append(lsns, e.lsn)
	}
	if len(lsns) != 5 || lsns[0] != 6 || lsns[4] != 10 {
		t.Fatalf("queue after reconnect %v, want 6..10", lsns)
	}
	if got := c.st.dropped.Load(); got != 5 {
		t.Fatalf("dropped %d, want 5", got)
	}
	req := n.build(time.Now())
	if req == nil || len(req.Declare) != 1 || len(req.Batches) != 1 || len(req.Batches[0].Records) != 5 {
		t.Fatalf("first request after reconnect: %v", req)
	}
	if got := c.st.resent.Load(); got != 1 {
		t.Fatalf("resent %d, want 1 (only LSN 6 had been sent)", got)
	}
	if len(n.inflight) != 1 || n.build(time.Now()) != nil {
		t.Fatalf("inflight %d", len(n.inflight))
	}
}

func TestQueueBoundDropsOnlyDurable(t *testing.T) {
	c, p, nodes := newTestClient(t)
	n := nodes[0]
	c.mu.Lock()
	for _, o := range nodes[1:5] {
		c.tracker.Ack(0, quorum.SegmentID(o.m.NodeID), 4)
	}
	big := maxQueueBytes / 8
	var es []*entry
	for l := uint64(1); l <= 10; l++ {
		es = append(es, &entry{pg: p, lsn: l, data: make([]byte, big)})
	}
	n.enqueue(es)
	c.mu.Unlock()
	// 10 x 1/8 of the bound: over it, so 1..4 (durable) went, 5..10 stay
	// even though they still exceed the bound.
	if len(n.queue) != 6 || n.queue[0].lsn != 5 || n.queueBytes != 6*big {
		t.Fatalf("queue len %d first %d bytes %d", len(n.queue), n.queue[0].lsn, n.queueBytes)
	}
}

func TestPGTail(t *testing.T) {
	c, p, _ := newTestClient(t)
	p.lsns = []uint64{3, 7, 9}
	for _, tc := range []struct{ r, want uint64 }{{2, 0}, {3, 3}, {6, 3}, {7, 7}, {8, 7}, {100, 9}} {
		if got := c.pgTailLocked(p, tc.r); got != tc.want {
			t.Errorf("tail at %d = %d, want %d", tc.r, got, tc.want)
		}
	}
}
