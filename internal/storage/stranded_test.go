package storage

import (
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/wait"
)

func TestStranded(t *testing.T) {
	held := logHorizon{answered: true}
	gone := logHorizon{answered: true, collected: true}
	silent := logHorizon{}
	for _, tc := range []struct {
		peers []logHorizon
		want  bool
	}{
		{nil, false},                          // no peer: nothing to copy from
		{[]logHorizon{silent, silent}, false}, // none answered: nothing known
		{[]logHorizon{gone}, true},
		{[]logHorizon{gone, gone, silent}, true}, // the silent one may hold it, but copying is correct anyway
		{[]logHorizon{gone, held}, false},        // gossip completes it from the one that holds it
		{[]logHorizon{held, silent}, false},
	} {
		if got := stranded(tc.peers); got != tc.want {
			t.Errorf("stranded(%+v) = %v, want %v", tc.peers, got, tc.want)
		}
	}
}

// A member that comes back with its old data after its peers collected
// the log it lacks (the writer's retain LSN had left it out) copies the PG's
// pages again by itself, with no membership change, and is then complete
// and serves the same pages as its peers.
func TestStrandedSegmentRehydrates(t *testing.T) {
	smallChunks(t)
	a, c, b := newHydNode(t, "s1"), newHydNode(t, "s3"), newHydNode(t, "s2")
	w := &hydWriter{t: t}
	spec := hydSpec(1, []*pb.Member{a.member(), b.member(), c.member()})
	w.write(spec, 40, a, b, c)
	b.close()
	for range 5 {
		w.write(spec, 40, a, c)
	}
	waitCollectedTo(t, a, w.last)
	waitCollectedTo(t, c, w.last)
	b.open()
	wait.For(t, 60*time.Second, "s2 to rehydrate and be complete", func() bool {
		in := segInfo(t, b)
		return !in.Hydrating && in.Scl >= w.last
	})
	if st := b.n.segment(1, 0).hyd; !st.Done || st.Base < 40 {
		t.Fatalf("s2's hydration state %+v: want a copy done, at a base above the 40 records it held", st)
	}
	samePages(t, a, b, w.last)
	w.write(spec, 5, a, b, c)
	wait.For(t, 10*time.Second, "s2 to take new writes", func() bool { return segInfo(t, b).Scl >= w.last })
}

// A stranded segment's rehydration survives a crash of its node: closed
// after a few chunks, the node opens again, resumes the copy, and ends
// complete with its peers' pages.
func TestStrandedRehydrationResumesAfterARestart(t *testing.T) {
	smallChunks(t)
	a, b := newHydNode(t, "s1"), newHydNode(t, "s2")
	w := &hydWriter{t: t}
	spec := hydSpec(1, []*pb.Member{a.member(), b.member()})
	w.write(spec, 40, a, b)
	b.close()
	for range 5 {
		w.write(spec, 40, a)
	}
	waitCollectedTo(t, a, w.last)
	b.open()
	stopped := make(chan hydrateState)
	var count atomic.Int32
	bn := b.n
	stored := func(_ *seg, st hydrateState) {
		if count.Add(1) == 3 {
			stopped <- st
			<-bn.stop
		}
	}
	b.n.hooks.hydrateStored.Store(&stored)
	st := <-stopped
	b.close()
	if st.Cursor == 0 || st.PagesDone {
		t.Fatalf("progress when s2 closed: %+v", st)
	}
	b.open()
	wait.For(t, 60*time.Second, "s2 to resume its rehydration and be complete", func() bool {
		in := segInfo(t, b)
		return !in.Hydrating && in.Scl >= w.last
	})
	samePages(t, a, b, w.last)
}
