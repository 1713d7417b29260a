package control

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// Repair (DESIGN.md §3, Repair) replaces the segment of a failed, removed or
// drained node in each PG that has one: ABCDEF becomes {ABCDEF, ABCDEG}
// under a new membership epoch, G hydrates from a peer, and once G is
// complete the PG becomes ABCDEG under another; if F comes back healthy
// first, the PG goes back to ABCDEF. PlanRepair decides; the leader's loop
// (repairer) reads the view, runs what it decides and reads again.

// DefaultRepairAfter is how long a node may be down before repair replaces
// its segments.
const DefaultRepairAfter = 60 * time.Second

// writeQuorum and readQuorum are a PG's quorums over its six segments.
const (
	writeQuorum = 4
	readQuorum  = 3
)

// RepairNode is what repair knows of a storage node.
type RepairNode struct {
	ID, AZ, Addr string
	// Live: the node heartbeats (its alive key exists).
	Live bool
	// LastHeartbeat is when it last heartbeat (zero: never). A node that is
	// not live and has not heartbeat for RepairAfter has failed.
	LastHeartbeat time.Time
	// Admin is Node.Admin: "", AdminDraining or AdminRemoved.
	Admin string
	// Load is the segments it holds (the load record).
	Load int
}

// PGKey names a PG in every volume.
type PGKey struct {
	Volume uint64
	PG     uint32
}

func (k PGKey) String() string { return fmt.Sprintf("%d/%d", k.Volume, k.PG) }

// Key is the PG's PGKey.
func (p PG) Key() PGKey { return PGKey{p.VolumeID, p.PG} }

// DeclaredState is where a node said one of its segments stands, in its
// answer to Declare (pb.DeclaredSegment).
type DeclaredState struct {
	// Epoch is the membership epoch the node holds for the PG.
	Epoch     uint64
	SCL       uint64
	Highest   uint64
	Hydrating bool
	Retired   bool
}

// RepairView is what PlanRepair decides on.
type RepairView struct {
	Now         time.Time
	RepairAfter time.Duration
	// MaxChanges bounds the PGs in a change at once (0: no bound), so that a
	// failed node's thousands of segments do not all hydrate at once.
	MaxChanges int
	Nodes      []RepairNode
	// PGs are those with a segment on a failed, draining or removed node,
	// and those in a change; others may be given and are left alone.
	PGs []PG
	// Reports are the latest Declare answers, by PG and node.
	Reports map[PGKey]map[string]DeclaredState
}

// Repair action kinds.
const (
	// ActBegin: BeginChange(PG, Leaving, Joining, Reason) at Epoch.
	ActBegin = "begin"
	// ActRetarget: RetargetChange(PG, Epoch, Joining); Leaving is the
	// joining node that failed.
	ActRetarget = "retarget"
	// ActComplete: CompleteChange(PG, Epoch); the joining member reached
	// Target.
	ActComplete = "complete"
	// ActRollback: RollbackChange(PG, Epoch).
	ActRollback = "rollback"
	// ActDeclare: Declare the PG's membership at Epoch to Nodes, with
	// hydrate for the one named Hydrate.
	ActDeclare = "declare"
	// ActWait: the PG stays degraded: no live node of AZ can take the
	// segment of Leaving.
	ActWait = "wait"
)

// RepairAction is one step PlanRepair decides.
type RepairAction struct {
	Kind string
	PG   PGKey
	// Epoch is the PG's membership epoch the action was decided on.
	Epoch            uint64
	Leaving, Joining Segment
	Reason           string
	// AZ (ActWait) is the AZ that has no spare node.
	AZ string
	// Target (ActComplete) is the highest LSN the old set held when it
	// learned of the change; the joining member is complete through it.
	Target uint64
	// Nodes and Hydrate (ActDeclare).
	Nodes   []string
	Hydrate string
}

func (a RepairAction) String() string {
	switch a.Kind {
	case ActBegin:
		return fmt.Sprintf("begin %s epoch=%d %s>%s reason=%s", a.PG, a.Epoch, a.Leaving.Node, a.Joining.Node, a.Reason)
	case ActRetarget:
		return fmt.Sprintf("retarget %s epoch=%d %s>%s", a.PG, a.Epoch, a.Leaving.Node, a.Joining.Node)
	case ActComplete:
		return fmt.Sprintf("complete %s epoch=%d %s>%s target=%d", a.PG, a.Epoch, a.Leaving.Node, a.Joining.Node, a.Target)
	case ActRollback:
		return fmt.Sprintf("rollback %s epoch=%d %s>%s", a.PG, a.Epoch, a.Leaving.Node, a.Joining.Node)
	case ActDeclare:
		s := fmt.Sprintf("declare %s epoch=%d to=%s", a.PG, a.Epoch, joinIDs(a.Nodes))
		if a.Hydrate != "" {
			s += " hydrate=" + a.Hydrate
		}
		return s
	case ActWait:
		return fmt.Sprintf("wait %s epoch=%d %s az=%s", a.PG, a.Epoch, a.Leaving.Node, a.AZ)
	}
	return a.Kind
}

func joinIDs(ids []string) string {
	out := ""
	for i, id := range ids {
		if i > 0 {
			out += ","
		}
		out += id
	}
	return out
}

// planner is one PlanRepair pass: the view, indexed, and the loads as
// changed by the begins it has decided.
type planner struct {
	v     RepairView
	nodes map[string]RepairNode
	load  map[string]int
}

// failed says whether a node's segments are to be replaced, and why: it is
// removed, draining, down for RepairAfter, or unknown to the catalog.
func (p *planner) failed(id string) (string, bool) {
	n, ok := p.nodes[id]
	return nodeFailed(n, ok, p.v.Now, p.v.RepairAfter)
}

// healthy: live and in service.
func (p *planner) healthy(id string) bool {
	n, ok := p.nodes[id]
	return ok && n.Live && n.Admin == ""
}

// spare picks the least-loaded healthy node of az that holds no segment of
// the PG (ties to the smaller id), counting the begins of this pass.
func (p *planner) spare(az string, pg PG) (Segment, bool) {
	var best *RepairNode
	for i := range p.v.Nodes {
		n := &p.v.Nodes[i]
		if n.AZ != az || !p.healthy(n.ID) || holds(pg, n.ID) {
			continue
		}
		if best == nil || p.load[n.ID] < p.load[best.ID] || p.load[n.ID] == p.load[best.ID] && n.ID < best.ID {
			best = n
		}
	}
	if best == nil {
		return Segment{}, false
	}
	return Segment{Node: best.ID, AZ: best.AZ, Addr: best.Addr}, true
}

// holds: the node has a segment of the PG in either set.
func holds(pg PG, node string) bool {
	has := func(s Segment) bool { return s.Node == node }
	return slices.ContainsFunc(pg.Segments, has) || slices.ContainsFunc(pg.Next, has)
}

// PlanRepair decides the next steps of repair. It is pure: the same view
// gives the same actions, in PG order.
//
// A PG in a change:
//   - rolls back if the change was for a node that was down, that node
//     heartbeats again and is in service, and the joining member is not
//     complete (F came back first);
//   - otherwise, if the joining node failed, moves to another spare of its
//     AZ (retarget), or rolls back if there is none (the PG then waits for
//     capacity, degraded);
//   - otherwise completes once the joining member is complete: its Declare
//     answer at the PG's epoch says it is not hydrating and its SCL is at
//     least the target, the highest LSN that a read quorum of the old set
//     reported once they held that epoch (a record acknowledged under the
//     old membership is on a write quorum of the old set, so on one of
//     those; and a node that holds the new epoch takes no more writes under
//     the old one, so none can be acknowledged above it);
//   - otherwise is declared to its members that have not answered at its
//     epoch, and to the joining one until it is complete (that is how its
//     progress is read); and to all its members once the joining one has
//     copied the PG but is below the target, so that the target follows
//     what they hold now (a recovery may have truncated what set it).
//
// A PG not in a change with a member that failed begins replacing the first
// such member that has a spare in its AZ (one change per PG at a time:
// another failed member waits until this change completes), least-loaded
// spare first; each failed member without one gives ActWait.
func PlanRepair(v RepairView) []RepairAction {
	p := &planner{v: v, nodes: map[string]RepairNode{}, load: map[string]int{}}
	for _, n := range v.Nodes {
		p.nodes[n.ID] = n
		p.load[n.ID] = n.Load
	}
	pgs := slices.Clone(v.PGs)
	slices.SortFunc(pgs, func(a, b PG) int {
		return cmp.Or(cmp.Compare(a.VolumeID, b.VolumeID), cmp.Compare(a.PG, b.PG))
	})
	inChange := 0
	for _, pg := range pgs {
		if pg.Change != nil {
			inChange++
		}
	}
	var out []RepairAction
	for _, pg := range pgs {
		if pg.Change != nil {
			out = append(out, p.planChange(pg)...)
			continue
		}
		acts, begun := p.planStable(pg, v.MaxChanges == 0 || inChange < v.MaxChanges)
		if begun {
			inChange++
		}
		out = append(out, acts...)
	}
	return out
}

func (p *planner) planChange(pg PG) []RepairAction {
	ch := pg.Change
	key := pg.Key()
	leaving, joining := segmentOf(pg.Segments, ch.Leaving), segmentOf(pg.Next, ch.Joining)
	reports := p.v.Reports[key]
	target, known := p.target(pg)
	jr, jok := reports[ch.Joining]
	complete := known && jok && jr.Epoch == pg.MembershipEpoch && !jr.Hydrating && !jr.Retired && jr.SCL >= target
	act := RepairAction{PG: key, Epoch: pg.MembershipEpoch, Leaving: leaving, Joining: joining, Reason: ch.Reason}

	if ch.Reason == ReasonDown && p.healthy(ch.Leaving) && !complete {
		act.Kind = ActRollback
		return []RepairAction{act}
	}
	if _, bad := p.failed(ch.Joining); bad && !complete {
		if g, ok := p.spare(joining.AZ, pg); ok {
			p.load[g.Node]++
			return []RepairAction{{Kind: ActRetarget, PG: key, Epoch: pg.MembershipEpoch, Leaving: joining, Joining: g, Reason: ch.Reason}}
		}
		act.Kind = ActRollback
		return []RepairAction{act}
	}
	if complete {
		act.Kind, act.Target = ActComplete, target
		return []RepairAction{act}
	}
	// A joining member that has copied the PG but is below the target may
	// wait for records that will never come: the target is the old set's
	// highest LSN as first reported, and a recovery since may have
	// truncated what was above its VDL (an idle PG then never grows past
	// it). Asking the old set again lowers the target to what its members
	// hold now, which still bounds every record acknowledged under the old
	// membership: such a record is on a write quorum of the old set, which
	// meets every read quorum, and no member drops it.
	stale := known && jok && jr.Epoch == pg.MembershipEpoch && !jr.Hydrating && jr.SCL < target
	var to []string
	for _, s := range pg.hosts() {
		// A node that does not heartbeat is not asked; one that does is,
		// draining or removed too: it takes writes until it is retired.
		if !p.nodes[s.Node].Live {
			continue
		}
		r, ok := reports[s.Node]
		if s.Node == ch.Joining || !ok || r.Epoch < pg.MembershipEpoch || stale {
			to = append(to, s.Node)
		}
	}
	if len(to) == 0 {
		return nil
	}
	act.Kind, act.Nodes, act.Hydrate = ActDeclare, to, ch.Joining
	return []RepairAction{act}
}

// target is the highest LSN a read quorum of the PG's old set reported at
// its current membership epoch, if that many did.
func (p *planner) target(pg PG) (uint64, bool) {
	n, hi := 0, uint64(0)
	for _, s := range pg.Segments {
		r, ok := p.v.Reports[pg.Key()][s.Node]
		if !ok || r.Epoch < pg.MembershipEpoch {
			continue
		}
		n++
		hi = max(hi, r.Highest)
	}
	return hi, n >= readQuorum
}

func (p *planner) planStable(pg PG, mayBegin bool) (acts []RepairAction, begun bool) {
	for _, s := range pg.Segments {
		reason, bad := p.failed(s.Node)
		if !bad {
			continue
		}
		if begun {
			// One change at a time; this member's turn comes after.
			continue
		}
		g, ok := p.spare(s.AZ, pg)
		if !ok {
			acts = append(acts, RepairAction{Kind: ActWait, PG: pg.Key(), Epoch: pg.MembershipEpoch, Leaving: s, Reason: reason, AZ: s.AZ})
			continue
		}
		if !mayBegin {
			return acts, false
		}
		p.load[g.Node]++
		acts = append(acts, RepairAction{Kind: ActBegin, PG: pg.Key(), Epoch: pg.MembershipEpoch, Leaving: s, Joining: g, Reason: reason})
		begun = true
	}
	return acts, begun
}

func segmentOf(segs []Segment, node string) Segment {
	for _, s := range segs {
		if s.Node == node {
			return s
		}
	}
	return Segment{Node: node}
}

// HostedSCLs is what a node said it holds of one volume (Storage.
// SegmentSCLs): PG -> SCL; a PG it does not hold is absent.
type HostedSCLs map[uint32]uint64

// MissingSegments says which PGs of pgs, all of one volume and each with a
// segment on node, the node lacks while a peer holds data of them: a node
// that came back without its data, which must hydrate those segments
// (Declare with hydrate). It lacks a PG it does not hold, and one it holds
// with an SCL of 0: the writer's stream may have created the segment again
// with the records written since, above a hole gossip may not be able to
// fill (the peers' log below it collected). own is the node's SegmentSCLs
// answer; peers, each peer's that answered. A PG no peer holds data of (a
// PG not written yet) is not missing: there is nothing to copy.
func MissingSegments(node string, pgs []PG, own HostedSCLs, peers map[string]HostedSCLs) []uint32 {
	var out []uint32
	for _, pg := range pgs {
		if scl, ok := own[pg.PG]; ok && scl > 0 {
			continue
		}
		for _, s := range pg.hosts() {
			if s.Node == node {
				continue
			}
			if scl := peers[s.Node][pg.PG]; scl > 0 {
				out = append(out, pg.PG)
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

// StraySegments says which PGs a node holds a segment of (own, its
// SegmentSCLs answer for one volume) while being in no set of the PG's
// membership (pgs, the catalog's PGs of that volume; a PG the catalog does
// not have is not judged here). Such a node left the PG while it was away
// and must be told the membership that retires it.
func StraySegments(node string, own HostedSCLs, pgs map[uint32]PG) []uint32 {
	var out []uint32
	for p := range own {
		if pg, ok := pgs[p]; ok && !holds(pg, node) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}
