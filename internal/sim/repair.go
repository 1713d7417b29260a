package sim

import (
	"fmt"
	"slices"
	"time"

	"github.com/borealis-db/borealis/internal/control"
	"github.com/borealis-db/borealis/internal/quorum"
	"github.com/borealis-db/borealis/internal/segment"
)

// The control plane's repair, simulated with its real code: storage nodes in
// three AZs (two members of every PG and one or two spares in each), a
// catalog of each PG (control.PG) and of the segments per node
// (control.Load), the nodes' heartbeats in simulated time, and the latest
// Declare answers. Every few steps a repair pass asks control.PlanRepair
// what to do, exactly as the leader's repairer does, and applies what it
// decides with the catalog's own transitions (control.ApplyBegin and the
// rest). Storage's part is modelled: a segment holds the membership epoch
// it was last declared (or a writer's request carried) and refuses a
// writer's request counted under an older one; a joining segment hydrates
// from a complete member and counts toward no quorum until it is done.

const (
	// stepTime is the simulated time one step takes.
	stepTime = 100 * time.Millisecond
	// repairAfter is --repair-after in simulated time.
	repairAfter = 30 * stepTime
	// repairEvery is how many steps apart the repair passes are.
	repairEvery = 5

	nodeFailPml = 6  // per step, in runs with changes: a node fails
	adminPml    = 1  // per step, in runs with changes: a node is drained, or one down for good removed
	maxDown     = 2  // nodes down at once, at most
	watchPct    = 20 // per step: the writer in office reads the catalog's memberships
	declareLost = 10 // percent of Declare calls that get no answer (a timeout)
)

// epochStart is simulated time zero.
var epochStart = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// node is a storage node: its segments (one per PG that placed one on it)
// go down and come back with it.
type node struct {
	id, az string
	down   bool
	// back is the step at which a down node returns (0: not before the
	// drain).
	back int
	last time.Time // last heartbeat
	// admin is control.AdminDraining or AdminRemoved once an operator
	// said so (at most one node of a run).
	admin string
}

// hydration is a joining segment's copy of its PG from a complete member:
// the member's records up to its SCL, with its truncations, as of when the
// copy began (pages as of that SCL, in the sim's terms), which land once the
// copy has taken left more steps of both sides being up.
type hydration struct {
	donor  *seg
	ents   []segment.Entry
	truncs []segment.Truncation
	left   int
}

func (w *world) now() time.Time { return epochStart.Add(time.Duration(w.step) * stepTime) }

// placeNodes creates the nodes and places each PG's six segments on two
// nodes of each AZ, filling the catalog.
func (w *world) placeNodes() {
	// Some runs bound the PGs in a change at once, as --repair's
	// MaxChanges does, to one.
	if w.rng.IntN(3) == 0 {
		w.maxChanges = 1
	}
	w.nodeByID = map[string]*node{}
	w.load = control.Load{Segments: map[string]int{}}
	w.reports = map[control.PGKey]map[string]control.DeclaredState{}
	byAZ := map[string][]*node{}
	for _, az := range []string{"a", "b", "c"} {
		for i := range 3 + w.rng.IntN(2) {
			n := &node{id: fmt.Sprintf("%s%d", az, i+1), az: az, last: w.now()}
			w.nodes = append(w.nodes, n)
			w.nodeByID[n.id] = n
			byAZ[az] = append(byAZ[az], n)
		}
	}
	for _, p := range w.pgs {
		p.onNode = map[string]*seg{}
		p.cat = control.PG{VolumeID: 1, PG: p.id, MembershipEpoch: 1}
		for _, az := range []string{"a", "b", "c"} {
			ns := byAZ[az]
			for _, i := range w.rng.Perm(len(ns))[:2] {
				p.cat.Segments = append(p.cat.Segments, control.Segment{Node: ns[i].id, AZ: az, Addr: ns[i].id})
				w.load.Segments[ns[i].id]++
			}
		}
	}
}

// segFor creates the segment of p on node id (not yet declared: down).
func (w *world) segFor(p *pg, id string, st segment.State) *seg {
	s := p.newSeg(st)
	delete(p.byID, s.id)
	s.node = w.nodeByID[id]
	s.id = quorum.SegmentID(fmt.Sprintf("%s.%s", s.id, id))
	p.byID[s.id] = s
	p.onNode[id] = s
	return s
}

// syncDown sets s.down from its node and its place in the PG: a segment is
// down when its node is, when it is not declared yet, and once it retired.
func (s *seg) syncDown() {
	s.down = s.retired || !s.declared || (s.node != nil && s.node.down)
}

// cfgOf is the quorum config of the catalog's membership of p.
func (p *pg) cfgOf() quorum.Config {
	ids := func(ss []control.Segment) []quorum.SegmentID {
		var out []quorum.SegmentID
		for _, s := range ss {
			out = append(out, p.onNode[s.Node].id)
		}
		return out
	}
	c := quorum.Config{Epoch: p.cat.MembershipEpoch, Sets: []quorum.Set{quorum.Default(ids(p.cat.Segments))}}
	if len(p.cat.Next) > 0 {
		c.Sets = append(c.Sets, quorum.Default(ids(p.cat.Next)))
	}
	if err := c.Validate(); err != nil {
		panic(err)
	}
	return c
}

// nodesStep has the up nodes heartbeat, brings back those whose time is up,
// and in runs with changes now and then fails one: briefly (back before
// repair starts), for a while (repair starts, and the node may return in its
// middle), or for good. A third of the failures hit a joining node.
func (w *world) nodesStep() {
	now := w.now()
	down := 0
	for _, n := range w.nodes {
		if n.down && n.back > 0 && w.step >= n.back {
			w.setNodeDown(n, false)
		}
		if n.down {
			down++
		} else {
			n.last = now
		}
	}
	if w.changes && !w.admin && w.rng.IntN(1000) < adminPml {
		w.adminStep()
	}
	if !w.changes || down >= maxDown || w.rng.IntN(1000) >= nodeFailPml {
		return
	}
	var cands []*node
	if w.rng.IntN(3) == 0 {
		for _, p := range w.pgs {
			if ch := p.cat.Change; ch != nil && !w.nodeByID[ch.Joining].down {
				cands = append(cands, w.nodeByID[ch.Joining])
			}
		}
	}
	if len(cands) == 0 {
		for _, n := range w.nodes {
			if !n.down {
				cands = append(cands, n)
			}
		}
	}
	n := cands[w.rng.IntN(len(cands))]
	steps := int(repairAfter / stepTime)
	switch r := w.rng.IntN(10); {
	case r < 3:
		n.back = w.step + 1 + w.rng.IntN(steps/2)
	case r < 7:
		n.back = w.step + steps + w.rng.IntN(6*steps)
	default:
		n.back = 0
	}
	w.res.NodeFailures++
	w.setNodeDown(n, true)
}

// adminStep is an operator's node drain of a live node, or node remove of
// one that is down for good.
func (w *world) adminStep() {
	var gone, live []*node
	for _, n := range w.nodes {
		switch {
		case n.down && n.back == 0:
			gone = append(gone, n)
		case !n.down:
			live = append(live, n)
		}
	}
	var n *node
	if len(gone) > 0 && w.rng.IntN(2) == 0 {
		n = gone[w.rng.IntN(len(gone))]
		n.admin = control.AdminRemoved
	} else {
		n = live[w.rng.IntN(len(live))]
		n.admin = control.AdminDraining
	}
	w.admin = true
	w.log("node %s is %s", n.id, n.admin)
}

func (w *world) setNodeDown(n *node, down bool) {
	n.down = down
	for _, p := range w.pgs {
		for _, s := range p.segs {
			if s.node == n {
				s.syncDown()
			}
		}
	}
	w.log("node %s %s (back at step %d)", n.id, map[bool]string{true: "goes down", false: "comes back"}[down], n.back)
	if !down {
		for _, p := range w.pgs {
			if s := p.onNode[n.id]; s != nil && !s.down && s.crashed == 0 {
				w.heartbeat(p, s)
			}
		}
	}
}

// repairPass is one pass of the leader's repair loop: the view, PlanRepair,
// and its actions applied to the catalog and declared to the nodes.
func (w *world) repairPass() {
	view := control.RepairView{Now: w.now(), RepairAfter: repairAfter, MaxChanges: w.maxChanges, Reports: w.reports}
	for _, n := range w.nodes {
		view.Nodes = append(view.Nodes, control.RepairNode{ID: n.id, AZ: n.az, Addr: n.id, Live: !n.down, LastHeartbeat: n.last, Admin: n.admin, Load: w.load.Segments[n.id]})
	}
	w.sendRetires()
	// As the repairer does: only PGs with a segment on a node that is down
	// (PlanRepair judges whether it failed) and PGs in a change; none, no
	// plan. The reports of PGs not given are forgotten.
	byKey := map[control.PGKey]*pg{}
	for _, p := range w.pgs {
		if p.cat.Change != nil || slices.ContainsFunc(p.cat.Segments, func(s control.Segment) bool { n := w.nodeByID[s.Node]; return n.down || n.admin != "" }) {
			view.PGs = append(view.PGs, p.cat)
			byKey[p.cat.Key()] = p
		}
	}
	for k := range w.reports {
		if byKey[k] == nil {
			delete(w.reports, k)
		}
	}
	if len(view.PGs) == 0 {
		return
	}
	for _, a := range control.PlanRepair(view) {
		p := byKey[a.PG]
		if p.cat.MembershipEpoch != a.Epoch {
			continue // decided before an earlier action of this pass changed the PG
		}
		w.log("repair: %v", a)
		if err := w.apply(p, a); err != nil {
			w.fail(fmt.Errorf("repair: the catalog refused %v, which PlanRepair decided on the catalog as it stood: %v", a, err))
			return
		}
	}
}

// apply runs one of PlanRepair's actions.
func (w *world) apply(p *pg, a control.RepairAction) error {
	var (
		next control.PG
		load control.Load
		err  error
		gone string // the node that left the PG
	)
	switch a.Kind {
	case control.ActDeclare:
		for _, id := range a.Nodes {
			w.declare(p, id, id == a.Hydrate)
		}
		return nil
	case control.ActWait:
		w.res.Waits++
		return nil
	case control.ActBegin:
		next, load, err = control.ApplyBegin(p.cat, w.load, a.Leaving, a.Joining, a.Reason, w.now())
		w.res.Changes++
	case control.ActRetarget:
		next, load, err = control.ApplyRetarget(p.cat, w.load, a.Epoch, a.Joining, w.now())
		gone = a.Leaving.Node
		w.res.Retargets++
	case control.ActComplete:
		next, load, err = control.ApplyComplete(p.cat, w.load, a.Epoch)
		gone = a.Leaving.Node
		w.res.Completes++
	case control.ActRollback:
		next, load, err = control.ApplyRollback(p.cat, w.load, a.Epoch)
		gone = a.Joining.Node
		w.res.Rollbacks++
	default:
		return fmt.Errorf("unknown action %q", a.Kind)
	}
	if err != nil {
		return err
	}
	p.cat, w.load = next, load
	if a.Kind == control.ActBegin || a.Kind == control.ActRetarget {
		w.segFor(p, a.Joining.Node, segment.State{})
	}
	if gone != "" {
		if s := p.onNode[gone]; s != nil {
			// The final declaration goes to it when it is live; until it
			// answers, it holds the membership it had.
			s.retireOwed = true
			delete(p.onNode, gone)
		}
	}
	p.cfg = p.cfgOf()
	w.log("pg%d catalog epoch %d: config %v", p.id, p.cat.MembershipEpoch, p.cfg)
	if a.Kind == control.ActComplete && w.cur != nil {
		// The new set alone must hold every commit acknowledged so far,
		// and every record the writer in office counts durable (its
		// PGCL never goes back, so it will not count them again): the
		// target PlanRepair completed at is to guarantee it.
		on := func(e segment.Entry) bool {
			return p.cfg.WriteQuorum(func(id quorum.SegmentID) bool { return p.byID[id].holds(e) })
		}
		vdl := w.cur.tr.VDL()
		for l, h := range w.hist {
			if h.pg == p && l <= vdl && !on(h.e) {
				return fmt.Errorf("completed at target %d, but LSN %d <= VDL %d is on no write quorum of %v (%s)", a.Target, l, vdl, p.cfg, p.scls())
			}
		}
		wp, pgcl := w.cur.pgs[p.idx], w.cur.tr.PGCL(p.id)
		for _, e := range wp.ents {
			if e.LSN <= pgcl && !on(e) {
				return fmt.Errorf("completed at target %d, but LSN %d <= PGCL %d of writer %d is on no write quorum of %v (%s)", a.Target, e.LSN, pgcl, w.cur.epoch, p.cfg, p.scls())
			}
		}
	}
	// The new membership goes to its live members at once.
	for _, s := range p.catHosts() {
		if !w.nodeByID[s.Node].down {
			w.declare(p, s.Node, p.cat.Change != nil && s.Node == p.cat.Change.Joining)
		}
	}
	return nil
}

// sendRetires sends the final declarations owed to segments that left
// their PG, to those whose node is live and process up: each takes the
// PG's membership, which leaves it out, and retires.
func (w *world) sendRetires() {
	for _, p := range w.pgs {
		for _, s := range p.segs {
			if !s.retireOwed || s.node.down || s.crashed > 0 {
				continue
			}
			s.retireOwed, s.retired, s.hyd = false, true, nil
			s.mem = max(s.mem, p.cat.MembershipEpoch)
			s.syncDown()
			w.log("pg%d %s on node %s retires at membership epoch %d", p.id, s.id, s.node.id, s.mem)
		}
	}
}

// catHosts is every segment of the PG's membership: its set and the joining
// one.
func (p *pg) catHosts() []control.Segment {
	out := slices.Clone(p.cat.Segments)
	for _, s := range p.cat.Next {
		if !slices.ContainsFunc(out, func(o control.Segment) bool { return o.Node == s.Node }) {
			out = append(out, s)
		}
	}
	return out
}

// declare is the control plane's Declare of p's membership to node id, and
// the node's answer recorded as the repairer records it (membership epoch,
// SCL, highest, hydrating). A node that is down, or whose segment's process
// is (crashed), does not answer. The joining segment, declared with
// hydrate, starts hydrating.
func (w *world) declare(p *pg, id string, hydrate bool) {
	if w.nodeByID[id].down || !w.draining && w.rng.IntN(100) < declareLost {
		return
	}
	s := p.onNode[id]
	if s == nil || s.crashed > 0 {
		return
	}
	if !s.declared {
		s.declared = true
		s.hydrating = hydrate
		s.syncDown()
		w.log("pg%d %s declared on node %s (hydrate %v)", p.id, s.id, id, hydrate)
	}
	s.mem = max(s.mem, p.cat.MembershipEpoch)
	k := p.cat.Key()
	if w.reports[k] == nil {
		w.reports[k] = map[string]control.DeclaredState{}
	}
	w.reports[k][id] = control.DeclaredState{Epoch: s.mem, SCL: s.chain.SCL(), Highest: s.chain.Highest(), Hydrating: s.hydrating}
}

// follow has wr take the catalog's membership of p, as a writer does when a
// segment refuses its request under an older membership epoch or the
// catalog's watch tells it.
func (w *world) follow(wr *writer, p *pg) bool {
	if wr.dead {
		return false
	}
	if cfg, ok := wr.tr.Config(p.id); ok && cfg.Epoch >= p.cfg.Epoch {
		return false
	}
	// What the PGCL covers so far is judged by the config it was reached
	// under.
	if err := w.checkWriter(wr); err != nil {
		w.fail(err)
		return false
	}
	wr.tr.SetConfig(p.id, p.cfg)
	if got, ok := wr.tr.Config(p.id); !ok || got.String() != p.cfg.String() {
		w.fail(fmt.Errorf("tracker config %v, want %v", got, p.cfg))
	}
	w.log("writer %d follows pg%d to %v", wr.epoch, p.id, p.cfg)
	return true
}

// hydrateStep moves every hydration on by a step: a joining segment that is
// up and has no copy under way takes one from a complete member (up, in the
// PG's set, not hydrating); a copy whose donor went away starts over; one
// whose time is up lands: the donor's truncations, then its records in LSN
// order, and the segment then counts like any other and gossips the rest.
// force (the drain) lands copies at once.
func (w *world) hydrateStep(force bool) {
	for _, p := range w.pgs {
		for _, s := range p.segs {
			if !s.hydrating || s.down || s.crashed > 0 {
				continue
			}
			h := s.hyd
			if h != nil && (h.donor.down || h.donor.crashed > 0 || h.donor.retired) {
				w.log("pg%d %s: hydration from %s stops: the donor went away", p.id, s.id, h.donor.id)
				h, s.hyd = nil, nil
			}
			if h == nil {
				var donors []*seg
				for _, m := range p.cat.Segments {
					d := p.onNode[m.Node]
					if d != nil && d != s && !d.down && d.crashed == 0 && !d.hydrating {
						donors = append(donors, d)
					}
				}
				if len(donors) == 0 {
					continue
				}
				d := donors[w.rng.IntN(len(donors))]
				h = &hydration{donor: d, truncs: d.chain.State().Truncations, left: 2 + w.rng.IntN(20)}
				for _, e := range d.list {
					if e.LSN <= d.chain.SCL() {
						h.ents = append(h.ents, e)
					}
				}
				slices.SortFunc(h.ents, cmpLSN)
				s.hyd = h
				w.log("pg%d %s hydrates from %s as of its SCL %d: %d records", p.id, s.id, d.id, d.chain.SCL(), len(h.ents))
			}
			if h.left--; h.left > 0 && !force {
				continue
			}
			if len(h.truncs) > 0 {
				w.truncate(p, s, 0, h.truncs)
			}
			n := 0
			for _, e := range h.ents {
				if e.LSN > s.chain.SCL() && w.offer(s, e) == segment.Accepted {
					n++
				}
			}
			s.saved = s.chain.State()
			s.hydrating, s.hyd = false, nil
			w.res.Hydrations++
			s.dirty(w)
			w.log("pg%d %s hydrated from %s: %d records, scl %d", p.id, s.id, h.donor.id, n, s.chain.SCL())
			w.heartbeat(p, s)
		}
	}
}

// readAt is a read of one PG at read point R, the VDL of the writer in
// office, routed as the volume's ReadPage routes it: the writer's members in
// quorum.ReadOrder for what the read needs (quorum.ReadNeed of the PG's
// tail), by the SCLs the writer's tracker knows. A segment that hydrates,
// or is not complete through what the read needs, refuses and the next is
// asked; one the tracker knows complete must be. What the serving segment
// holds of the PG at or below R must be exactly the history's records of the
// PG at or below R: the page as of R is then the oracle's.
func (w *world) readAt() {
	wr := w.cur
	if wr == nil {
		return
	}
	p := w.pgs[w.rng.IntN(len(w.pgs))]
	r := wr.tr.VDL()
	want, tail := 0, uint64(0)
	for l, h := range w.hist {
		if h.pg == p && l <= r {
			want++
			tail = max(tail, l)
		}
	}
	need := quorum.ReadNeed(r, tail)
	cfg, _ := wr.tr.Config(p.id)
	var cands []quorum.ReadCandidate
	for _, id := range cfg.Members() {
		s := p.byID[id]
		cands = append(cands, quorum.ReadCandidate{ID: id, SCL: wr.tr.SCL(p.id, id), Reachable: !s.down && s.crashed == 0})
	}
	for _, i := range quorum.ReadOrder(cands, need) {
		s := p.byID[cands[i].ID]
		if s.down || s.crashed > 0 || s.hydrating {
			continue
		}
		if s.chain.SCL() < need {
			if cands[i].SCL >= need {
				w.fail(fmt.Errorf("read of pg%d at %d: %s acked SCL %d to writer %d but is complete only through %d, below the %d the read needs", p.id, r, s.id, cands[i].SCL, wr.epoch, s.chain.SCL(), need))
			}
			continue
		}
		w.res.Reads++
		got := 0
		for _, e := range s.list {
			if e.LSN > r {
				continue
			}
			got++
			if h, ok := w.hist[e.LSN]; !ok || h.e != e || h.pg != p {
				w.fail(fmt.Errorf("read of pg%d at %d from %s sees %+v, which the history does not have at that LSN (%+v, %v)", p.id, r, s.id, e, h.e, ok))
				return
			}
		}
		if got != want {
			w.fail(fmt.Errorf("read of pg%d at %d from %s sees %d records, the history has %d (%s)", p.id, r, s.id, got, want, p.scls()))
			return
		}
		w.log("read pg%d at %d from %s: %d records, as the history", p.id, r, s.id, got)
		return
	}
}
