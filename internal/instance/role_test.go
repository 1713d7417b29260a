package instance

import (
	"testing"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

func TestMemberDecisions(t *testing.T) {
	fo := func(kind, state, from, target string) *pb.FailoverInfo {
		return &pb.FailoverInfo{Round: 7, Kind: kind, State: state, From: from, Target: target}
	}
	for _, c := range []struct {
		name     string
		st       *pb.WriterState
		me       string
		yield    bool
		promote  bool
		handOver bool
	}{
		{name: "no state yet", st: nil, me: "writer"},
		{name: "first start, nobody holds the lease", st: &pb.WriterState{}, me: "writer"},
		{name: "another holds the lease", st: &pb.WriterState{Holder: "r1"}, me: "writer", yield: true},
		{name: "my own old lease (a restart within the TTL)", st: &pb.WriterState{Holder: "writer"}, me: "writer"},
		{name: "a failover promotes another", st: &pb.WriterState{Failover: fo("unplanned", "promoting", "writer", "r1")}, me: "writer", yield: true},
		{name: "a failover promotes me, lease free", st: &pb.WriterState{Failover: fo("unplanned", "promoting", "writer", "r1")}, me: "r1", promote: true},
		{name: "a failover promotes me, old lease not gone yet", st: &pb.WriterState{Holder: "writer", Failover: fo("planned", "draining", "writer", "r1")}, me: "r1", yield: true},
		{name: "planned: the old writer released", st: &pb.WriterState{Failover: fo("planned", "draining", "writer", "r1")}, me: "r1", promote: true},
		// The writer asked to hand over must not take the lease again after it.
		{name: "planned: I am asked to hand over", st: &pb.WriterState{Holder: "writer", Failover: fo("planned", "draining", "writer", "r1")}, me: "writer", yield: true, handOver: true},
		{name: "choosing with no target: anyone may start", st: &pb.WriterState{Failover: fo("unplanned", "choosing", "writer", "")}, me: "writer"},
		{name: "done: the failover is over", st: &pb.WriterState{Holder: "r1", Failover: fo("unplanned", "done", "writer", "r1")}, me: "r1"},
		{name: "failed planned: the old writer stays", st: &pb.WriterState{Holder: "writer", Failover: fo("planned", "failed", "writer", "r1")}, me: "writer"},
	} {
		if got := OtherIsWriter(c.st, c.me); got != c.yield {
			t.Errorf("%s: OtherIsWriter = %v, want %v", c.name, got, c.yield)
		}
		round, promote := ChosenToPromote(c.st, c.me)
		if promote != c.promote || (promote && round != 7) {
			t.Errorf("%s: ChosenToPromote = %d, %v, want %v", c.name, round, promote, c.promote)
		}
		if got := AskedToHandOver(c.st, c.me) != nil; got != c.handOver {
			t.Errorf("%s: AskedToHandOver = %v, want %v", c.name, got, c.handOver)
		}
	}
}
