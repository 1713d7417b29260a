package volume

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/quorum"
)

// Membership is a PG's segments as the catalog has them: one quorum set
// normally, two during a membership change (ABCDEF, then {ABCDEF, ABCDEG}
// while G hydrates, then ABCDEG). A write is durable once it is on a write
// quorum of every set.
type Membership struct {
	// Epoch rises with every change of the PG's membership; a later
	// membership of a PG replaces an earlier one only if its epoch is
	// higher.
	Epoch uint64
	Sets  [][]Member
	// Joining is the member a change under way adds, if any: it copies the
	// PG from its peers, so the log it lacks is not kept for it.
	Joining string
}

// OneSet is the membership of a PG whose placement never changes: members
// as its one set, at membership epoch 1.
func OneSet(members []Member) Membership {
	return Membership{Epoch: 1, Sets: [][]Member{members}}
}

// Members returns every member of any set, in order of first appearance.
func (m Membership) Members() []Member {
	var out []Member
	for _, s := range m.Sets {
		for _, mem := range s {
			if !slices.ContainsFunc(out, func(o Member) bool { return o.NodeID == mem.NodeID }) {
				out = append(out, mem)
			}
		}
	}
	return out
}

// validate checks what the client relies on: at least one set, every set
// non-empty, on distinct nodes, and a node's address the same in every set.
func (m Membership) validate() error {
	if len(m.Sets) == 0 {
		return errors.New("no quorum set; every PG needs its 6 segments")
	}
	addr := map[string]string{}
	for i, s := range m.Sets {
		if len(s) == 0 {
			return fmt.Errorf("quorum set %d has no segments; every PG needs its 6", i)
		}
		seen := map[string]bool{}
		for _, mem := range s {
			if mem.NodeID == "" {
				return fmt.Errorf("a segment without a node id (address %q)", mem.Addr)
			}
			if seen[mem.NodeID] {
				return fmt.Errorf("node %s twice in one set; the segments of a PG must be on distinct nodes", mem.NodeID)
			}
			seen[mem.NodeID] = true
			if a, ok := addr[mem.NodeID]; ok && a != mem.Addr {
				return fmt.Errorf("node %s at two addresses, %s and %s", mem.NodeID, a, mem.Addr)
			}
			addr[mem.NodeID] = mem.Addr
		}
	}
	return nil
}

// pgMembership is one membership of a PG as the client uses it. It is
// immutable once published in pgState.mem, so that reads route by it
// without the client's lock; a change publishes a new one.
type pgMembership struct {
	epoch   uint64
	members []Member // every member of any set
	nodes   []*node  // parallel to members
	joining string
	spec    *pb.SegmentSpec // what a declaration to a member sends
	qcfg    quorum.Config
}

// newMembershipLocked builds the client's form of ms for PG p, connecting to
// nodes it has not met. Called under Client.mu.
func (c *Client) newMembershipLocked(p *pgState, ms Membership) *pgMembership {
	pm := &pgMembership{epoch: ms.Epoch, members: ms.Members(), joining: ms.Joining}
	spec := &pb.SegmentSpec{
		Volume:          c.cfg.VolumeID,
		Incarnation:     c.cfg.Incarnation,
		Pg:              p.idx,
		PageSize:        uint32(c.cfg.PageSize),
		PagesPerPg:      c.cfg.PagesPerPG,
		MembershipEpoch: ms.Epoch,
	}
	for _, t := range c.cfg.Truncations[p.idx] {
		spec.Truncations = append(spec.Truncations, &pb.Truncation{After: t.After, Through: t.Through, Epoch: t.Epoch, Tail: t.Tail})
	}
	pm.qcfg = quorum.Config{Epoch: ms.Epoch}
	for _, s := range ms.Sets {
		ids := make([]quorum.SegmentID, len(s))
		set := &pb.MemberSet{}
		for i, m := range s {
			ids[i] = quorum.SegmentID(m.NodeID)
			set.Members = append(set.Members, &pb.Member{NodeId: m.NodeID, Az: m.AZ, Addr: m.Addr})
		}
		pm.qcfg.Sets = append(pm.qcfg.Sets, quorum.Default(ids))
		spec.MemberSets = append(spec.MemberSets, set)
	}
	for _, m := range pm.members {
		n, ok := c.nodes[m.NodeID]
		if !ok {
			n = c.newNodeLocked(m)
			c.nodes[m.NodeID] = n
		}
		pm.nodes = append(pm.nodes, n)
	}
	pm.spec = spec
	return pm
}

// SetMembership installs a PG's new membership, as the catalog's watch or a
// refresh reports it. One whose epoch is not above the PG's current one is
// ignored, and so is a PG the client has not touched yet (it will ask for
// the current membership when it does). The tracker counts acks under the
// new sets from now on, members that joined get the PG's new records, and
// those still in a set declare the new membership on their next request.
// Members that left get no more of the PG's records; records already sent
// them are no longer waited for.
func (c *Client) SetMembership(pg uint32, ms Membership) error {
	if err := ms.validate(); err != nil {
		return fmt.Errorf("volume %d: membership of PG %d: %w", c.cfg.VolumeID, pg, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failedLocked() != nil {
		return nil
	}
	p, ok := c.pgs[pg]
	if !ok || ms.Epoch <= p.mem.Load().epoch {
		return nil
	}
	old := p.mem.Load()
	pm := c.newMembershipLocked(p, ms)
	p.mem.Store(pm)
	c.st.membershipChanges.Add(1)
	c.log.Info("PG membership changed", "pg", pg, "from_epoch", old.epoch, "epoch", pm.epoch,
		"sets", len(ms.Sets), "members", len(pm.members), "joining", ms.Joining)
	if !p.written {
		return nil
	}
	c.tracker.SetConfig(p.idx, pm.qcfg)
	for _, n := range pm.nodes {
		if slices.Contains(old.nodes, n) {
			n.redeclare(p.idx)
		} else {
			n.addPG(p)
		}
		n.signal()
	}
	for _, n := range old.nodes {
		if !slices.Contains(pm.nodes, n) {
			n.removePG(p.idx)
		}
	}
	p.trimPendingLocked(c.tracker.PGCL(p.idx))
	p.retain.Store(c.retainLocked(p, time.Now()))
	c.advancedLocked(time.Now())
	return nil
}

// retainDeadAfter: a member that has reported nothing for this long no
// longer holds the PG's log for itself (retain_lsn). Its peers may then
// collect records it lacks, and if it comes back it copies the PG from
// pages (hydration) rather than from their logs. Shorter outages, a
// restart, keep their log.
const retainDeadAfter = 60 * time.Second

// retainLocked is the lowest SCL among the PG's members that may still pull
// records from their peers' logs: every member but the one joining (it
// hydrates from pages) and those silent for retainDeadAfter. With none left
// it is the lowest of all, which keeps everything. Called under Client.mu.
func (c *Client) retainLocked(p *pgState, now time.Time) uint64 {
	pm := p.mem.Load()
	var lo, all uint64 = math.MaxUint64, math.MaxUint64
	for _, m := range pm.members {
		s := p.scl[m.NodeID]
		all = min(all, s)
		if m.NodeID == pm.joining {
			continue
		}
		at, ok := p.reportAt[m.NodeID]
		if !ok {
			at = p.since
		}
		if now.Sub(at) > retainDeadAfter {
			continue
		}
		lo = min(lo, s)
	}
	if lo == math.MaxUint64 {
		return all
	}
	return lo
}

// trimPendingLocked drops the PG's pending LSNs at or below pgcl.
func (p *pgState) trimPendingLocked(pgcl uint64) {
	k := 0
	for k < len(p.pending) && p.pending[k] <= pgcl {
		k++
	}
	if k > 0 {
		p.pending = p.pending[k:]
		if len(p.pending) == 0 {
			p.pending = nil
		}
	}
}

// refreshMembership asks for a PG's current membership after node nodeID
// refused this client's for an older epoch than it holds (refused), and
// installs it. Called from the node's sender, outside the client's locks.
func (c *Client) refreshMembership(nodeID string, pg uint32, refused error) {
	get := c.cfg.Refresh
	if get == nil {
		get = c.cfg.Placement
	}
	c.mu.Lock()
	p, ok := c.pgs[pg]
	c.mu.Unlock()
	if !ok {
		return
	}
	c.st.staleMemberships.Add(1)
	held := detailOf(refused).GetMembershipEpoch()
	ms, err := get(pg)
	if err == nil {
		err = c.SetMembership(pg, ms)
	}
	switch {
	case err != nil:
		c.log.Warn("a storage node holds a newer membership of the PG, and it could not be fetched; retrying", "node", nodeID, "pg", pg, "node_epoch", held, "err", err)
	case ms.Epoch < held:
		c.log.Warn("a storage node holds a newer membership of the PG than its source gave; retrying", "node", nodeID, "pg", pg, "node_epoch", held, "epoch", ms.Epoch)
	default:
		c.log.Info("took a PG's newer membership that a storage node holds", "node", nodeID, "pg", pg, "epoch", p.mem.Load().epoch)
	}
}

// MembershipEpoch returns the membership epoch the client counts the PG's
// acks under (0: a PG it has not touched).
func (c *Client) MembershipEpoch(pg uint32) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.pgs[pg]; ok {
		return p.mem.Load().epoch
	}
	return 0
}
