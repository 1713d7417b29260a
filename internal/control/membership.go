package control

import (
	"context"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Reasons for a membership change (MembershipChange.Reason).
const (
	// ReasonDown: the leaving node has not heartbeat for --repair-after.
	ReasonDown = "down"
	// ReasonRemoved: the leaving node was removed (node remove).
	ReasonRemoved = "removed"
	// ReasonDrain: the leaving node is drained (node drain) and healthy.
	ReasonDrain = "drain"
)

// A membership change moves a PG from ABCDEF to the pair {ABCDEF, ABCDEG}
// (BeginChange), then to ABCDEG once G is complete (CompleteChange), or back
// to ABCDEF (RollbackChange); RetargetChange replaces G by another node when
// G fails before it is complete. Each is one etcd transaction guarded by the
// PG key's revision and the load record's, raises the PG's membership epoch
// by one (storage nodes refuse writes under an older one, so a writer that
// missed the change learns it from the refusal), and keeps the load record
// counting every segment a node holds: the joining one from the change's
// start (PG.hosts).
//
// Each op checks its precondition on the PG it read: a change decided on a
// stale view (the PG changed meanwhile) is refused with ErrInvalidState
// naming what differs, and a transaction that lost a race is retried from a
// fresh read.

// BeginChange starts replacing leaving by joining in a PG: Next becomes
// Segments with leaving replaced by joining. Refused if the PG is in a
// change already, if leaving is not a member, if joining is one, or if
// joining is in another AZ than leaving (a PG keeps two segments per AZ).
func (c *Catalog) BeginChange(ctx context.Context, volID uint64, pg uint32, leaving, joining Segment, reason string, guards ...clientv3.Cmp) (PG, error) {
	// Checked before the round trip too: a malformed request fails fast.
	if err := checkJoining(volID, pg, joining); err != nil {
		return PG{}, err
	}
	if err := checkReason(reason); err != nil {
		return PG{}, err
	}
	return c.changePG(ctx, volID, pg, guards, "begin a membership change of", func(p *PG, l Load) (Load, error) {
		return beginChange(p, l, leaving, joining, reason, time.Now().UTC())
	})
}

// checkJoining: a joining segment is placed, so it names its node, AZ and
// address.
func checkJoining(volID uint64, pg uint32, joining Segment) error {
	if joining.Node == "" || joining.AZ == "" || joining.Addr == "" {
		return fmt.Errorf("%w: the joining segment of PG %d of volume id %d needs a node, AZ and address, got %+v", ErrInvalid, pg, volID, joining)
	}
	return nil
}

func checkReason(reason string) error {
	switch reason {
	case ReasonDown, ReasonRemoved, ReasonDrain:
		return nil
	}
	return fmt.Errorf("%w: membership change reason %q; want %s, %s or %s", ErrInvalid, reason, ReasonDown, ReasonRemoved, ReasonDrain)
}

// beginChange is BeginChange on a PG read, and the load record's change.
func beginChange(p *PG, l Load, leaving, joining Segment, reason string, now time.Time) (Load, error) {
	pg, volID := p.PG, p.VolumeID
	if err := checkJoining(volID, pg, joining); err != nil {
		return l, err
	}
	if err := checkReason(reason); err != nil {
		return l, err
	}
	if p.Change != nil {
		return l, fmt.Errorf("%w: PG %d of volume id %d is already replacing %s by %s (epoch %d); one change at a time", ErrInvalidState, pg, volID, p.Change.Leaving, p.Change.Joining, p.MembershipEpoch)
	}
	i := slices.IndexFunc(p.Segments, func(s Segment) bool { return s.Node == leaving.Node })
	if i < 0 {
		return l, fmt.Errorf("%w: %s holds no segment of PG %d of volume id %d (epoch %d); it cannot leave it", ErrInvalidState, leaving.Node, pg, volID, p.MembershipEpoch)
	}
	if slices.ContainsFunc(p.Segments, func(s Segment) bool { return s.Node == joining.Node }) {
		return l, fmt.Errorf("%w: %s holds a segment of PG %d of volume id %d already; a PG has one segment per node", ErrInvalidState, joining.Node, pg, volID)
	}
	if p.Segments[i].AZ != joining.AZ {
		return l, fmt.Errorf("%w: %s is in AZ %s and %s in AZ %s; a replacement must be in the AZ of the segment it replaces", ErrInvalid, joining.Node, joining.AZ, leaving.Node, p.Segments[i].AZ)
	}
	p.Next = slices.Clone(p.Segments)
	p.Next[i] = joining
	p.Change = &MembershipChange{Leaving: leaving.Node, Joining: joining.Node, Reason: reason, StartedAt: now}
	return l.with([]Segment{joining}, 1), nil
}

// RetargetChange replaces the joining node of the PG's change under way at
// membership epoch epoch by joining (the one before failed while it
// hydrated): {ABCDEF, ABCDEG} becomes {ABCDEF, ABCDEH}.
func (c *Catalog) RetargetChange(ctx context.Context, volID uint64, pg uint32, epoch uint64, joining Segment, guards ...clientv3.Cmp) (PG, error) {
	if err := checkJoining(volID, pg, joining); err != nil {
		return PG{}, err
	}
	return c.changePG(ctx, volID, pg, guards, "choose another joining node for", func(p *PG, l Load) (Load, error) {
		return retargetChange(p, l, epoch, joining, time.Now().UTC())
	})
}

// retargetChange is RetargetChange on a PG read.
func retargetChange(p *PG, l Load, epoch uint64, joining Segment, now time.Time) (Load, error) {
	pg, volID := p.PG, p.VolumeID
	if err := inChange(p, epoch); err != nil {
		return l, err
	}
	if err := checkJoining(volID, pg, joining); err != nil {
		return l, err
	}
	if slices.ContainsFunc(p.Segments, func(s Segment) bool { return s.Node == joining.Node }) ||
		slices.ContainsFunc(p.Next, func(s Segment) bool { return s.Node == joining.Node }) {
		return l, fmt.Errorf("%w: %s holds a segment of PG %d of volume id %d already", ErrInvalidState, joining.Node, pg, volID)
	}
	i := slices.IndexFunc(p.Next, func(s Segment) bool { return s.Node == p.Change.Joining })
	if p.Next[i].AZ != joining.AZ {
		return l, fmt.Errorf("%w: %s is in AZ %s and the segment it would hold in AZ %s", ErrInvalid, joining.Node, joining.AZ, p.Next[i].AZ)
	}
	old := p.Next[i]
	p.Next = slices.Clone(p.Next)
	p.Next[i] = joining
	ch := *p.Change
	ch.Joining, ch.StartedAt = joining.Node, now
	p.Change = &ch
	return l.with([]Segment{old}, -1).with([]Segment{joining}, 1), nil
}

// CompleteChange ends the PG's change under way at membership epoch epoch:
// the PG's set becomes Next (ABCDEG), and the leaving node holds it no more.
func (c *Catalog) CompleteChange(ctx context.Context, volID uint64, pg uint32, epoch uint64, guards ...clientv3.Cmp) (PG, error) {
	return c.changePG(ctx, volID, pg, guards, "complete the membership change of", func(p *PG, l Load) (Load, error) {
		return completeChange(p, l, epoch)
	})
}

// completeChange is CompleteChange on a PG read.
func completeChange(p *PG, l Load, epoch uint64) (Load, error) {
	if err := inChange(p, epoch); err != nil {
		return l, err
	}
	leaving := p.Change.Leaving
	var gone []Segment
	for _, s := range p.Segments {
		if s.Node == leaving {
			gone = append(gone, s)
		}
	}
	p.Segments, p.Next, p.Change = p.Next, nil, nil
	return l.with(gone, -1), nil
}

// RollbackChange undoes the PG's change under way at membership epoch
// epoch: the PG's set stays Segments (ABCDEF), and the joining node holds it
// no more.
func (c *Catalog) RollbackChange(ctx context.Context, volID uint64, pg uint32, epoch uint64, guards ...clientv3.Cmp) (PG, error) {
	return c.changePG(ctx, volID, pg, guards, "roll back the membership change of", func(p *PG, l Load) (Load, error) {
		return rollbackChange(p, l, epoch)
	})
}

// rollbackChange is RollbackChange on a PG read.
func rollbackChange(p *PG, l Load, epoch uint64) (Load, error) {
	if err := inChange(p, epoch); err != nil {
		return l, err
	}
	var gone []Segment
	for _, s := range p.Next {
		if s.Node == p.Change.Joining {
			gone = append(gone, s)
		}
	}
	p.Next, p.Change = nil, nil
	return l.with(gone, -1), nil
}

// The catalog's membership transitions as pure functions: a PG and the load
// record in, the PG and load the catalog would store out (the membership
// epoch raised by one), or the refusal the catalog would give. The Catalog's
// BeginChange, RetargetChange, CompleteChange and RollbackChange run exactly
// these inside their etcd transactions; the simulator (internal/sim) drives
// PlanRepair's actions through them, so that it tests the catalog's rules
// and not a restatement of them. The PG given is not changed.

// ApplyBegin is BeginChange on p: ABCDEF becomes {ABCDEF, ABCDEG}. now is
// the change's StartedAt.
func ApplyBegin(p PG, l Load, leaving, joining Segment, reason string, now time.Time) (PG, Load, error) {
	return applyPure(p, l, func(p *PG, l Load) (Load, error) { return beginChange(p, l, leaving, joining, reason, now) })
}

// ApplyRetarget is RetargetChange on p: {ABCDEF, ABCDEG} becomes
// {ABCDEF, ABCDEH}.
func ApplyRetarget(p PG, l Load, epoch uint64, joining Segment, now time.Time) (PG, Load, error) {
	return applyPure(p, l, func(p *PG, l Load) (Load, error) { return retargetChange(p, l, epoch, joining, now) })
}

// ApplyComplete is CompleteChange on p: the PG becomes ABCDEG.
func ApplyComplete(p PG, l Load, epoch uint64) (PG, Load, error) {
	return applyPure(p, l, func(p *PG, l Load) (Load, error) { return completeChange(p, l, epoch) })
}

// ApplyRollback is RollbackChange on p: the PG stays ABCDEF.
func ApplyRollback(p PG, l Load, epoch uint64) (PG, Load, error) {
	return applyPure(p, l, func(p *PG, l Load) (Load, error) { return rollbackChange(p, l, epoch) })
}

func applyPure(p PG, l Load, change func(p *PG, l Load) (Load, error)) (PG, Load, error) {
	next := p
	out, err := applyChange(&next, l, change)
	if err != nil {
		return p, l, err
	}
	return next, out, nil
}

// sameRev: the key a Get answered for is at rev (0: absent).
func sameRev(r *etcdserverpb.ResponseOp, rev int64) bool {
	kvs := r.GetResponseRange().Kvs
	if len(kvs) == 0 {
		return rev == 0
	}
	return kvs[0].ModRevision == rev
}

// applyChange runs one of the changes above on a PG read and raises its
// membership epoch: what the catalog stores, and what tests replay.
func applyChange(p *PG, l Load, change func(p *PG, l Load) (Load, error)) (Load, error) {
	out, err := change(p, l)
	if err != nil {
		return l, err
	}
	p.MembershipEpoch++
	return out, nil
}

func inChange(p *PG, epoch uint64) error {
	if p.Change == nil {
		return fmt.Errorf("%w: PG %d of volume id %d has no membership change under way (epoch %d)", ErrInvalidState, p.PG, p.VolumeID, p.MembershipEpoch)
	}
	if p.MembershipEpoch != epoch {
		return fmt.Errorf("%w: PG %d of volume id %d is at membership epoch %d, not %d (replacing %s by %s): the change was decided on a stale view", ErrInvalidState, p.PG, p.VolumeID, p.MembershipEpoch, epoch, p.Change.Leaving, p.Change.Joining)
	}
	return nil
}

// changePG applies change to a PG and the load record, raising the PG's
// membership epoch, in one transaction guarded by both keys' revisions and
// by guards (the leader's election key, for the leader's repair), and
// retries from a fresh read when it loses a race. A guard that fails while
// neither key changed is refused with ErrNotLeader.
func (c *Catalog) changePG(ctx context.Context, volID uint64, pg uint32, guards []clientv3.Cmp, what string, change func(p *PG, l Load) (Load, error)) (PG, error) {
	pk := c.pgKey(volID, pg)
	desc := fmt.Sprintf("%s PG %d of volume id %d", what, pg, volID)
	for range maxAttempts {
		tr, err := c.cli.Txn(ctx).Then(clientv3.OpGet(pk), clientv3.OpGet(c.loadKey())).Commit()
		if err != nil {
			return PG{}, etcdErr(desc, err)
		}
		kvs := tr.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return PG{}, fmt.Errorf("%w: volume id %d has no PG %d (the volume was deleted, or never grew to it)", ErrNotFound, volID, pg)
		}
		cur, err := decode[PG](kvs[0])
		if err != nil {
			return PG{}, err
		}
		lr, ok, err := decodeLoad((*clientv3.GetResponse)(tr.Responses[1].GetResponseRange()))
		if err != nil {
			return PG{}, err
		}
		if !ok {
			if err := c.ensureLoad(ctx); err != nil {
				return PG{}, err
			}
			continue
		}
		next := cur
		load, err := applyChange(&next, lr.load, change)
		if err != nil {
			return PG{}, err
		}
		cmps := append([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(pk), "=", kvs[0].ModRevision), lr.guard(c.loadKey())}, guards...)
		wr, err := c.cli.Txn(ctx).
			If(cmps...).
			Then(clientv3.OpPut(pk, encode(next)), clientv3.OpPut(c.loadKey(), encode(load))).
			Else(clientv3.OpGet(pk), clientv3.OpGet(c.loadKey())).
			Commit()
		if err != nil {
			return PG{}, etcdErr(desc, err)
		}
		if wr.Succeeded {
			return next, nil
		}
		if len(guards) > 0 && sameRev(wr.Responses[0], kvs[0].ModRevision) && sameRev(wr.Responses[1], lr.rev) {
			return PG{}, fmt.Errorf("%w: could not %s: this control plane no longer leads", ErrNotLeader, desc)
		}
		// The PG or the load changed meanwhile: decide again on a fresh read.
	}
	return PG{}, fmt.Errorf("%w: trying to %s raced with other changes %d times; retry", ErrConflict, desc, maxAttempts)
}

// SetNodeAdmin marks a registered node draining (AdminDraining) or removed
// (AdminRemoved), and returns it as it was before. Removing a draining node
// is allowed; draining a removed one is refused (it is on its way out
// already). Placement puts nothing on it from then on, and the leader's
// repair moves its segments off it.
func (c *Catalog) SetNodeAdmin(ctx context.Context, id, admin string) (Node, error) {
	if err := checkName("node id", id); err != nil {
		return Node{}, err
	}
	if admin != AdminDraining && admin != AdminRemoved {
		return Node{}, fmt.Errorf("%w: node state %q; want %s or %s", ErrInvalid, admin, AdminDraining, AdminRemoved)
	}
	key := c.nodeKey(id)
	for range maxAttempts {
		resp, err := c.cli.Get(ctx, key)
		if err != nil {
			return Node{}, etcdErr("mark node "+id+" "+admin, err)
		}
		if len(resp.Kvs) == 0 {
			return Node{}, fmt.Errorf("%w: no storage node %s is registered; borealis status lists the nodes", ErrNotFound, id)
		}
		old, err := decode[Node](resp.Kvs[0])
		if err != nil {
			return Node{}, err
		}
		if old.Admin == admin {
			return old, nil
		}
		if old.Admin == AdminRemoved {
			return old, fmt.Errorf("%w: node %s is removed already; its segments are moving off it", ErrInvalidState, id)
		}
		rec := old
		rec.Admin = admin
		tr, err := c.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision)).
			Then(clientv3.OpPut(key, encode(rec))).
			Commit()
		if err != nil {
			return Node{}, etcdErr("mark node "+id+" "+admin, err)
		}
		if tr.Succeeded {
			return old, nil
		}
	}
	return Node{}, fmt.Errorf("%w: marking node %s %s raced with other changes %d times; retry", ErrConflict, id, admin, maxAttempts)
}

// checkedRecord is the boot of a node whose segments the leader's repair
// checked (checked/<node-id>): a node that heartbeats with another boot id
// restarted since, and is checked again.
type checkedRecord struct {
	Version int       `json:"version"`
	Node    string    `json:"node"`
	BootID  string    `json:"boot_id"`
	At      time.Time `json:"at"`
}

func (c *Catalog) checkedPrefix() string { return c.prefix + "checked/" }

// CheckedBoots returns, by node, the boot id the leader's repair last
// checked the node's segments under.
func (c *Catalog) CheckedBoots(ctx context.Context) (map[string]string, error) {
	resp, err := c.cli.Get(ctx, c.checkedPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, etcdErr("read the nodes' checked boots", err)
	}
	recs, err := decodeAll[checkedRecord](resp.Kvs)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(recs))
	for _, r := range recs {
		out[r.Node] = r.BootID
	}
	return out, nil
}

// SetCheckedBoot records that the node's segments were checked under boot.
func (c *Catalog) SetCheckedBoot(ctx context.Context, node, boot string) error {
	rec := checkedRecord{Version: RecordVersion, Node: node, BootID: boot, At: time.Now().UTC()}
	if _, err := c.cli.Put(ctx, c.checkedPrefix()+node, encode(rec)); err != nil {
		return etcdErr("record the checked boot of node "+node, err)
	}
	return nil
}
