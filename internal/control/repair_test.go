package control

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// repairSim is what a repair transcript acts on: the nodes, the PGs as the
// catalog would hold them (changed by apply with the catalog's own
// functions), the Declare reports, the load record and the clock.
type repairSim struct {
	view  RepairView
	pgs   map[PGKey]*PG
	order []PGKey
	load  Load
}

// TestRepairTranscript runs testdata/repair.txt. Each block is commands,
// "----", and what the printing ones print; the state carries from block to
// block until the next "new". Commands:
//
//	new repair-after=DUR [max-changes=N]
//	node ID AZ up|down=DUR [drain|removed]   (down=DUR: last heartbeat DUR ago)
//	pg VOL/PG set=ID,ID,...                   (epoch 1, no change)
//	report VOL/PG ID scl=N highest=N [epoch=N] [hydrating] [retired]
//	                                          (epoch: the PG's current one unless given)
//	tick DUR                                  (the clock moves on; down nodes' last heartbeats stay)
//	plan                                      (prints PlanRepair's actions)
//	apply                                     (plan, print, and apply the catalog actions)
//	show VOL/PG                               (prints the PG)
//	loads                                     (prints the load record)
//	forget ID                                 (the node's record is gone from the catalog)
//
// On every plan the runner checks what the leader's loop relies on: the
// same view gives the same actions, and the view is not changed.
func TestRepairTranscript(t *testing.T) {
	const file = "testdata/repair.txt"
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var sim *repairSim
	cases, line := 0, 1
	// BOREALIS_REWRITE=1 writes what the commands print back into the file
	// (to review with git diff), as etcd raft's datadriven -rewrite does.
	rewrite := os.Getenv("BOREALIS_REWRITE") != ""
	var blocks []string
	for _, block := range strings.Split(string(data), "\n\n") {
		at := line
		line += strings.Count(block, "\n") + 2
		var lines []string
		for _, l := range strings.Split(block, "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				lines = append(lines, l)
			}
		}
		if len(lines) == 0 {
			blocks = append(blocks, block)
			continue
		}
		cases++
		sep := slices.Index(lines, "----")
		if sep < 1 {
			t.Fatalf("%s:%d: %q: want commands, ----, then their output", file, at, lines[0])
		}
		var out []string
		for _, cmd := range lines[:sep] {
			if strings.Fields(cmd)[0] == "new" {
				sim = &repairSim{pgs: map[PGKey]*PG{}, load: Load{Version: RecordVersion, Segments: map[string]int{}}}
			} else if sim == nil {
				t.Fatalf("%s:%d: %q before any new", file, at, cmd)
			}
			got, err := sim.run(cmd)
			if err != nil {
				t.Fatalf("%s:%d: %q: %v", file, at, cmd, err)
			}
			if got != "" {
				out = append(out, got)
			}
		}
		got, want := strings.Join(out, "\n"), strings.Join(lines[sep+1:], "\n")
		if rewrite {
			head, _, _ := strings.Cut(block, "----")
			blocks = append(blocks, head+"----\n"+got)
			continue
		}
		if got != want {
			t.Errorf("%s:%d: %s\ngot\n  %s\nwant\n  %s", file, at, strings.Join(lines[:sep], "; "),
				strings.ReplaceAll(got, "\n", "\n  "), strings.ReplaceAll(want, "\n", "\n  "))
		}
	}
	if rewrite {
		if err := os.WriteFile(file, []byte(strings.Join(blocks, "\n\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if cases == 0 {
		t.Fatalf("%s has no cases", file)
	}
}

var repairBase = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func parseKey(s string) (PGKey, error) {
	v, p, ok := strings.Cut(s, "/")
	if !ok {
		return PGKey{}, fmt.Errorf("PG %q: want VOL/PG", s)
	}
	vol, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return PGKey{}, err
	}
	pg, err := strconv.ParseUint(p, 10, 32)
	return PGKey{vol, uint32(pg)}, err
}

func (s *repairSim) node(id string) *RepairNode {
	for i := range s.view.Nodes {
		if s.view.Nodes[i].ID == id {
			return &s.view.Nodes[i]
		}
	}
	return nil
}

func (s *repairSim) seg(id string) (Segment, error) {
	n := s.node(id)
	if n == nil {
		return Segment{}, fmt.Errorf("node %s is not defined", id)
	}
	return Segment{Node: n.ID, AZ: n.AZ, Addr: n.Addr}, nil
}

func (s *repairSim) run(cmd string) (string, error) {
	f := strings.Fields(cmd)
	args := map[string]string{}
	flags := map[string]bool{}
	for _, a := range f[1:] {
		if k, v, ok := strings.Cut(a, "="); ok {
			args[k] = v
		} else {
			flags[a] = true
		}
	}
	dur := func(k string) (time.Duration, error) { return time.ParseDuration(args[k]) }
	num := func(k string) (uint64, error) {
		if args[k] == "" {
			return 0, nil
		}
		return strconv.ParseUint(args[k], 10, 64)
	}
	switch f[0] {
	case "new":
		d, err := dur("repair-after")
		if err != nil {
			return "", err
		}
		mc, err := num("max-changes")
		if err != nil {
			return "", err
		}
		s.view = RepairView{Now: repairBase, RepairAfter: d, MaxChanges: int(mc), Reports: map[PGKey]map[string]DeclaredState{}}
	case "node":
		if len(f) < 4 {
			return "", fmt.Errorf("want node ID AZ up|down=DUR")
		}
		n := RepairNode{ID: f[1], AZ: f[2], Addr: "addr-" + f[1], Live: flags["up"], LastHeartbeat: s.view.Now}
		if v, ok := args["down"]; ok {
			d, err := time.ParseDuration(v)
			if err != nil {
				return "", err
			}
			n.LastHeartbeat = s.view.Now.Add(-d)
		} else if !n.Live {
			return "", fmt.Errorf("node %s: say up or down=DUR", n.ID)
		}
		if flags["drain"] {
			n.Admin = AdminDraining
		}
		if flags["removed"] {
			n.Admin = AdminRemoved
		}
		if old := s.node(n.ID); old != nil {
			*old = n
		} else {
			s.view.Nodes = append(s.view.Nodes, n)
		}
	case "pg":
		k, err := parseKey(f[1])
		if err != nil {
			return "", err
		}
		pg := &PG{Version: RecordVersion, VolumeID: k.Volume, PG: k.PG, MembershipEpoch: 1, GeometryEpoch: 1}
		for _, id := range strings.Split(args["set"], ",") {
			sg, err := s.seg(id)
			if err != nil {
				return "", err
			}
			pg.Segments = append(pg.Segments, sg)
		}
		s.pgs[k] = pg
		s.order = append(s.order, k)
		s.load = s.load.with(pg.Segments, 1)
	case "report":
		k, err := parseKey(f[1])
		if err != nil {
			return "", err
		}
		pg := s.pgs[k]
		if pg == nil {
			return "", fmt.Errorf("no PG %s", k)
		}
		r := DeclaredState{Epoch: pg.MembershipEpoch, Hydrating: flags["hydrating"], Retired: flags["retired"]}
		if args["epoch"] != "" {
			if r.Epoch, err = num("epoch"); err != nil {
				return "", err
			}
		}
		if r.SCL, err = num("scl"); err != nil {
			return "", err
		}
		if r.Highest, err = num("highest"); err != nil {
			return "", err
		}
		if s.view.Reports[k] == nil {
			s.view.Reports[k] = map[string]DeclaredState{}
		}
		s.view.Reports[k][f[2]] = r
	case "forget":
		s.view.Nodes = slices.DeleteFunc(s.view.Nodes, func(n RepairNode) bool { return n.ID == f[1] })
	case "tick":
		d, err := time.ParseDuration(f[1])
		if err != nil {
			return "", err
		}
		s.view.Now = s.view.Now.Add(d)
		for i := range s.view.Nodes {
			if n := &s.view.Nodes[i]; n.Live {
				n.LastHeartbeat = s.view.Now
			}
		}
	case "plan", "apply":
		acts := s.plan()
		again := s.plan()
		if fmt.Sprint(acts) != fmt.Sprint(again) {
			return "", fmt.Errorf("the same view planned\n%v\nthen\n%v", acts, again)
		}
		lines := make([]string, len(acts))
		for i, a := range acts {
			lines[i] = a.String()
		}
		if f[0] == "apply" {
			for _, a := range acts {
				if err := s.apply(a); err != nil {
					return "", fmt.Errorf("%s: %w", a, err)
				}
			}
		}
		if len(lines) == 0 {
			return "nothing", nil
		}
		return strings.Join(lines, "\n"), nil
	case "show":
		k, err := parseKey(f[1])
		if err != nil {
			return "", err
		}
		return showPG(s.pgs[k]), nil
	case "loads":
		ids := make([]string, 0, len(s.load.Segments))
		for id := range s.load.Segments {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		parts := make([]string, len(ids))
		for i, id := range ids {
			parts[i] = fmt.Sprintf("%s=%d", id, s.load.Segments[id])
		}
		return "loads " + strings.Join(parts, " "), nil
	default:
		return "", fmt.Errorf("unknown command %q", f[0])
	}
	return "", nil
}

// plan runs PlanRepair on the view, with the PGs and loads as they stand,
// and checks that it left the view alone.
func (s *repairSim) plan() []RepairAction {
	v := s.view
	v.PGs = nil
	for _, k := range s.order {
		v.PGs = append(v.PGs, *s.pgs[k])
	}
	v.Nodes = slices.Clone(s.view.Nodes)
	for i := range v.Nodes {
		v.Nodes[i].Load = s.load.Segments[v.Nodes[i].ID]
	}
	before := fmt.Sprint(v.PGs, v.Nodes)
	acts := PlanRepair(v)
	if after := fmt.Sprint(v.PGs, v.Nodes); after != before {
		panic("PlanRepair changed its view")
	}
	return acts
}

// apply runs a catalog action on the sim's PG with the catalog's functions.
func (s *repairSim) apply(a RepairAction) error {
	pg := s.pgs[a.PG]
	if pg.MembershipEpoch != a.Epoch {
		return fmt.Errorf("decided at epoch %d, the PG is at %d", a.Epoch, pg.MembershipEpoch)
	}
	now := s.view.Now
	var (
		next PG
		l    Load
		err  error
	)
	switch a.Kind {
	case ActBegin:
		next, l, err = ApplyBegin(*pg, s.load, a.Leaving, a.Joining, a.Reason, now)
	case ActRetarget:
		next, l, err = ApplyRetarget(*pg, s.load, a.Epoch, a.Joining, now)
	case ActComplete:
		next, l, err = ApplyComplete(*pg, s.load, a.Epoch)
	case ActRollback:
		next, l, err = ApplyRollback(*pg, s.load, a.Epoch)
	default:
		return nil
	}
	if err != nil {
		return err
	}
	*pg, s.load = next, l
	return nil
}

func showPG(pg *PG) string {
	if pg == nil {
		return "no such PG"
	}
	s := fmt.Sprintf("%s epoch=%d set=%s", pg.Key(), pg.MembershipEpoch, joinIDs(memberNodes(pg.Segments)))
	if pg.Change != nil {
		s += fmt.Sprintf(" next=%s change=%s>%s:%s", joinIDs(memberNodes(pg.Next)), pg.Change.Leaving, pg.Change.Joining, pg.Change.Reason)
	}
	return s
}

// TestMissingSegments: a node lacks a PG that a peer holds data of, or
// holds it with nothing complete; a PG no one has written, or one it holds
// complete through some LSN, is not missing.
func TestMissingSegments(t *testing.T) {
	seg := func(ids ...string) []Segment {
		out := make([]Segment, len(ids))
		for i, id := range ids {
			out[i] = Segment{Node: id}
		}
		return out
	}
	pgs := []PG{
		{PG: 0, Segments: seg("n", "a", "b")},
		{PG: 1, Segments: seg("n", "a", "b")},
		{PG: 2, Segments: seg("n", "a", "b")},
		{PG: 3, Segments: seg("a", "b", "c"), Next: seg("a", "b", "n"), Change: &MembershipChange{Leaving: "c", Joining: "n"}},
	}
	peers := map[string]HostedSCLs{"a": {0: 10, 1: 0, 3: 7}, "b": {0: 10}}
	for _, tc := range []struct {
		own  HostedSCLs
		want []uint32
	}{
		{HostedSCLs{}, []uint32{0, 3}},
		{HostedSCLs{0: 10}, []uint32{3}},
		{HostedSCLs{0: 3, 3: 1}, nil},
		// Held again with nothing complete (the writer's records since, above
		// a hole): missing as well.
		{HostedSCLs{0: 0, 3: 1}, []uint32{0}},
	} {
		if got := MissingSegments("n", pgs, tc.own, peers); !slices.Equal(got, tc.want) {
			t.Errorf("own %v: missing %v, want %v", tc.own, got, tc.want)
		}
	}
}

// TestStraySegments: a segment of a PG the node is in no set of is stray;
// one of a PG it joins, or that the catalog does not have, is not.
func TestStraySegments(t *testing.T) {
	seg := func(ids ...string) []Segment {
		out := make([]Segment, len(ids))
		for i, id := range ids {
			out[i] = Segment{Node: id}
		}
		return out
	}
	pgs := map[uint32]PG{
		0: {PG: 0, Segments: seg("n", "a")},
		1: {PG: 1, Segments: seg("a", "b")},
		2: {PG: 2, Segments: seg("a", "b"), Next: seg("a", "n"), Change: &MembershipChange{Leaving: "b", Joining: "n"}},
		3: {PG: 3, Segments: seg("b", "c")},
	}
	got := StraySegments("n", HostedSCLs{0: 5, 1: 5, 2: 0, 3: 9, 4: 1}, pgs)
	if !slices.Equal(got, []uint32{1, 3}) {
		t.Fatalf("stray %v, want [1 3]", got)
	}
}
