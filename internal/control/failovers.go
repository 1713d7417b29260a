package control

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// failover reads a volume's failover record (nil if none) and its
// revision (0 if none).
func (c *Catalog) failover(ctx context.Context, volID uint64) (*Failover, int64, error) {
	resp, err := c.cli.Get(ctx, c.failoverKey(volID))
	if err != nil {
		return nil, 0, etcdErr("read the failover of volume "+fmt.Sprint(volID), err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	f, err := decode[Failover](resp.Kvs[0])
	if err != nil {
		return nil, 0, err
	}
	return &f, resp.Kvs[0].ModRevision, nil
}

// Failover returns a volume's current or last failover (nil if none).
func (c *Catalog) Failover(ctx context.Context, volName string) (*Failover, error) {
	vol, err := c.Volume(ctx, volName)
	if err != nil {
		return nil, err
	}
	f, _, err := c.failover(ctx, vol.ID)
	return f, err
}

// putFailover stores f if the record is still at rev (0: absent); it
// reports whether it did.
func (c *Catalog) putFailover(ctx context.Context, f *Failover, rev int64, also ...clientv3.Cmp) (bool, error) {
	k := c.failoverKey(f.VolumeID)
	cmp := clientv3.Compare(clientv3.ModRevision(k), "=", rev)
	if rev == 0 {
		cmp = clientv3.Compare(clientv3.CreateRevision(k), "=", 0)
	}
	// The volume must still exist: a delete removes the record with it.
	tr, err := c.cli.Txn(ctx).
		If(append([]clientv3.Cmp{cmp, clientv3.Compare(clientv3.CreateRevision(c.volIDKey(f.VolumeID)), ">", 0)}, also...)...).
		Then(clientv3.OpPut(k, encode(f))).
		Commit()
	if err != nil {
		return false, etcdErr("store the failover of volume "+fmt.Sprint(f.VolumeID), err)
	}
	return tr.Succeeded, nil
}

// updateFailover applies change to a volume's failover record until it is
// stored or change declines (returns false).
func (c *Catalog) updateFailover(ctx context.Context, volID uint64, change func(f *Failover) (bool, error)) (*Failover, error) {
	for range maxAttempts {
		f, rev, err := c.failover(ctx, volID)
		if err != nil {
			return nil, err
		}
		var next Failover
		if f != nil {
			next = *f
		}
		ok, err := change(&next)
		if err != nil || !ok {
			return f, err
		}
		stored, err := c.putFailover(ctx, &next, rev)
		if err != nil {
			return nil, err
		}
		if stored {
			return &next, nil
		}
	}
	return nil, fmt.Errorf("%w: the failover record of volume %d changed under every attempt; retry", ErrConflict, volID)
}

// failoverView reads what DecideFailover needs of a volume.
func (c *Catalog) failoverView(ctx context.Context, vol Volume, lastHolder string, nodes map[string]NodeState) (FailoverView, error) {
	v := FailoverView{Now: time.Now(), VolumeID: vol.ID, Epoch: vol.VolumeEpoch, LastHolder: lastHolder}
	w, err := c.cli.Get(ctx, c.writerKey(vol.ID))
	if err != nil {
		return v, etcdErr("read the writer of volume "+vol.Name, err)
	}
	if len(w.Kvs) > 0 {
		wr, err := decode[Writer](w.Kvs[0])
		if err != nil {
			return v, err
		}
		v.Holder, v.HolderEpoch = wr.Holder, wr.Epoch
	}
	ins, err := c.Instances(ctx, vol.Name)
	if err != nil {
		return v, err
	}
	up := map[string]int{}
	for _, n := range nodes {
		if n.State == StateUp {
			up[n.AZ]++
		}
	}
	for _, in := range ins {
		switch {
		case in.ID == v.Holder:
			if in.Role == RoleWriter && in.Epoch == v.HolderEpoch && in.State == "ready" {
				v.Ready = true
			}
		case in.Role == RoleReplica:
			v.Candidates = append(v.Candidates, PromotionCandidate{
				ID: in.ID, AZ: in.AZ, Tier: in.PromotionTier, Epoch: in.Epoch, Applied: in.VDL,
				Live: true, AZNodesUp: up[in.AZ],
			})
		}
	}
	return v, nil
}

// runFailovers is the leader's failover loop: it looks at every volume
// whenever a writer lease or a failover record changes, and once a second
// besides (a target's registration may go away, a deadline pass), and stores what
// DecideFailover says. The records are stored by compare-and-swap, so a
// deposed leader that still looks cannot undo a newer leader's step; and
// with guard (the leader's election key, see leaderCmp), only while this
// control plane still leads.
func runFailovers(ctx context.Context, cat *Catalog, t FailoverTiming, log *slog.Logger, guard func() (clientv3.Cmp, bool)) {
	wake := make(chan struct{}, 1)
	for _, p := range []string{cat.prefix + "writer/", cat.prefix + "failover/"} {
		go func() {
			for range cat.cli.Watch(clientv3.WithRequireLeader(ctx), p, clientv3.WithPrefix()) {
				select {
				case wake <- struct{}{}:
				default:
				}
			}
		}()
	}
	last := map[uint64]string{} // the holder seen last, by volume id
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if err := failoverPass(ctx, cat, t, last, log, guard); err != nil && ctx.Err() == nil {
			log.Debug("failover pass failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-wake:
		}
	}
}

func failoverPass(ctx context.Context, cat *Catalog, t FailoverTiming, last map[uint64]string, log *slog.Logger, guard func() (clientv3.Cmp, bool)) error {
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	vols, err := cat.Volumes(pctx)
	if err != nil {
		return err
	}
	var nodes map[string]NodeState
	for _, vol := range vols {
		rec, rev, err := cat.failover(pctx, vol.ID)
		if err != nil {
			return err
		}
		if nodes == nil {
			if nodes, err = cat.NodeStates(pctx); err != nil {
				return err
			}
		}
		v, err := cat.failoverView(pctx, vol, last[vol.ID], nodes)
		if err != nil {
			return err
		}
		if v.Holder != "" {
			last[vol.ID] = v.Holder
		}
		next := DecideFailover(rec, v, t)
		if next == nil {
			continue
		}
		var also []clientv3.Cmp
		if guard != nil {
			cmp, leading := guard()
			if !leading {
				return nil
			}
			also = append(also, cmp)
		}
		stored, err := cat.putFailover(pctx, next, rev, also...)
		if err != nil {
			return err
		}
		if !stored {
			continue // it changed meanwhile; the watch brings us back
		}
		logFailoverStep(log, vol.Name, rec, next)
	}
	return nil
}

func logFailoverStep(log *slog.Logger, vol string, prev, f *Failover) {
	attrs := []any{"volume", vol, "round", f.Round, "kind", f.Kind, "state", f.State, "from", f.From, "target", f.Target}
	if f.Why != "" {
		attrs = append(attrs, "why", f.Why)
	}
	switch {
	case prev == nil || prev.Round != f.Round:
		log.Warn("failover started: "+f.Reason, attrs...)
	case f.State == FailoverDone:
		log.Info("failover done", append(attrs, "epoch", f.Epoch, "took_ms", f.DoneMs-f.DetectedMs)...)
	case f.State == FailoverFailed:
		log.Error("failover failed", attrs...)
	default:
		log.Info("failover step", attrs...)
	}
}

// Switchover starts a planned failover of volume's writer role to the
// replica to (or the first in PromotionOrder when to is "").
func (c *Catalog) Switchover(ctx context.Context, volName, to string, t FailoverTiming) (*Failover, error) {
	vol, err := c.Volume(ctx, volName)
	if err != nil {
		return nil, err
	}
	nodes, err := c.NodeStates(ctx)
	if err != nil {
		return nil, err
	}
	v, err := c.failoverView(ctx, vol, "", nodes)
	if err != nil {
		return nil, err
	}
	if v.Holder == "" || !v.Ready {
		return nil, fmt.Errorf("%w: volume %s has no serving writer to switch over from; a failover brings one", ErrInvalidState, volName)
	}
	target := to
	if target == "" {
		order, err := PromotionOrder(v.Candidates)
		if err != nil {
			return nil, err
		}
		if len(order) == 0 {
			return nil, fmt.Errorf("%w: volume %s has no live replica to switch over to", ErrInvalidState, volName)
		}
		target = order[0].ID
	} else {
		found := false
		for _, cand := range v.Candidates {
			found = found || cand.ID == to
		}
		if !found {
			if to == v.Holder {
				return nil, fmt.Errorf("%w: %s is the writer of volume %s already", ErrInvalidState, to, volName)
			}
			return nil, fmt.Errorf("%w: %s is not a live replica of volume %s", ErrInvalidState, to, volName)
		}
	}
	now := time.Now().UnixMilli()
	return c.updateFailover(ctx, vol.ID, func(f *Failover) (bool, error) {
		if f.Pending() {
			return false, fmt.Errorf("%w: failover round %d of volume %s is under way (%s)", ErrInvalidState, f.Round, volName, f.State)
		}
		*f = Failover{
			Version: RecordVersion, VolumeID: vol.ID, Round: f.Round + 1, Kind: FailoverPlanned,
			Reason: "switchover requested", From: v.Holder, FromEpoch: v.HolderEpoch,
			State: FailoverDraining, Target: target, DetectedMs: now, DecidedMs: now,
			DeadlineMs: now + t.Drain.Milliseconds(),
		}
		return true, nil
	})
}

// FailoverReport is an instance's report of a failover's progress.
type FailoverReport struct {
	Round                                       uint64
	Instance, State, Why                        string
	Epoch, HandoverVDL, VDL                     uint64
	LeaseMs, EpochMs, RecoveryMs, OpenMs, Drain uint32
	Warm                                        bool
}

// Report states.
const (
	ReportWaiting    = "waiting"
	ReportDraining   = "draining"
	ReportHandedOver = "handed_over"
	ReportDone       = "done"
	ReportFailed     = "failed"
)

// ReportFailover records r in the volume's failover record of that round.
func (c *Catalog) ReportFailover(ctx context.Context, volName string, r FailoverReport) (*Failover, error) {
	vol, err := c.Volume(ctx, volName)
	if err != nil {
		return nil, err
	}
	now := time.Now().UnixMilli()
	return c.updateFailover(ctx, vol.ID, func(f *Failover) (bool, error) {
		if f.Round != r.Round || f.VolumeID == 0 {
			return false, fmt.Errorf("%w: volume %s has no failover round %d (its last is %d)", ErrNotFound, volName, r.Round, f.Round)
		}
		switch r.State {
		case ReportWaiting:
			if f.Why == r.Why || f.State == FailoverDone {
				return false, nil
			}
			f.Why = r.Why
		case ReportDraining:
			f.Why = r.Why
		case ReportHandedOver:
			f.HandoverVDL, f.DrainMs, f.Why = r.HandoverVDL, r.Drain, ""
		case ReportDone:
			if f.Target != "" && f.Target != r.Instance {
				return false, nil // not the one this round promotes
			}
			f.LeaseMs, f.EpochMs, f.RecoveryMs, f.OpenMs = r.LeaseMs, r.EpochMs, r.RecoveryMs, r.OpenMs
			f.VDL, f.Warm, f.Epoch, f.Target = r.VDL, r.Warm, r.Epoch, r.Instance
			if f.State != FailoverDone {
				f.State, f.DoneMs, f.Why = FailoverDone, now, ""
			}
		case ReportFailed:
			if f.State == FailoverDone || f.Target != r.Instance {
				return false, nil
			}
			f.Tried = appendOnce(f.Tried, r.Instance)
			f.State, f.Target, f.DeadlineMs = FailoverPromoting, "", 0
			f.Why = fmt.Sprintf("%s could not promote: %s", r.Instance, r.Why)
		default:
			return false, fmt.Errorf("%w: failover report state %q", ErrInvalid, r.State)
		}
		return true, nil
	})
}
