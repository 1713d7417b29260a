package storage

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"

	"github.com/cockroachdb/pebble/v2"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/segment"
)

// Truncate applies a new writer's recovery truncation (and any earlier ones
// of the PG the node lacks) and answers with the segment's SCL once it is
// synced.
func (r *rpcServer) Truncate(ctx context.Context, req *pb.TruncateRequest) (*pb.TruncateResponse, error) {
	ts := append(TruncationsFromPB(req.Prior), segment.Truncation{
		After: req.After, Through: req.Through, Epoch: req.Epoch, Tail: req.Tail,
	})
	scl, err := r.n.truncate(req.Volume, req.Pg, req.Epoch, ts)
	if err != nil {
		level := slog.LevelWarn
		if storageReason(err) == pb.Reason_PG_NOT_HOSTED {
			// Recovery asks every member; one that holds nothing is normal.
			level = slog.LevelDebug
		}
		r.n.log.Log(ctx, level, "truncate refused", "volume", req.Volume, "pg", req.Pg, "epoch", req.Epoch, "err", err)
		return nil, toStatus(err)
	}
	return &pb.TruncateResponse{Scl: scl}, nil
}

// storageReason is the refusal reason of an internal error, if it is one.
func storageReason(err error) pb.Reason {
	var r *refusal
	if errors.As(err, &r) {
		return r.reason
	}
	return pb.Reason_REASON_UNSPECIFIED
}

// TruncationsFromPB converts truncations from the wire.
func TruncationsFromPB(in []*pb.Truncation) []segment.Truncation {
	out := make([]segment.Truncation, len(in))
	for i, t := range in {
		out[i] = segment.Truncation{After: t.GetAfter(), Through: t.GetThrough(), Epoch: t.GetEpoch(), Tail: t.GetTail()}
	}
	return out
}

// TruncationsToPB converts truncations for the wire.
func TruncationsToPB(in []segment.Truncation) []*pb.Truncation {
	out := make([]*pb.Truncation, len(in))
	for i, t := range in {
		out[i] = &pb.Truncation{After: t.After, Through: t.Through, Epoch: t.Epoch, Tail: t.Tail}
	}
	return out
}

// lacksTruncation reports whether the chain has not applied some of ts.
// Called under Node.mu.
func lacksTruncation(c *segment.Chain, ts []segment.Truncation) bool {
	for _, t := range ts {
		if _, ok := c.TruncationFor(t.Epoch); !ok {
			return true
		}
	}
	return false
}

// truncate applies to one segment the truncations of ts it has not applied
// yet, oldest epoch first, and returns its SCL once the result is synced.
//
// epoch is the epoch of the writer (or recovery) that asks: it is refused if
// older than the node's epoch for the volume, and becomes it. Truncations
// learnt from a peer pass epoch 0: they record what past recoveries decided,
// which holds whoever the current writer is.
//
// Records of an older epoch in a truncation's range are deleted from the
// store, including those at or below the old SCL that the chain only
// summarizes. Node.mu is held throughout, so nothing is accepted meanwhile,
// and the commit groups still open when it starts are synced first, so that
// the scan of the store sees every record accepted before.
func (n *Node) truncate(vol uint64, pg uint32, epoch uint64, ts []segment.Truncation) (uint64, error) {
	ts = slices.Clone(ts)
	slices.SortStableFunc(ts, func(a, b segment.Truncation) int { return cmp.Compare(a.Epoch, b.Epoch) })
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.failure(); err != nil {
		return 0, err
	}
	volEpoch := n.volEpochs[vol]
	if epoch > 0 && epoch < volEpoch {
		return 0, refuse(pb.Reason_STALE_EPOCH, vol, pg, 0, "volume %d: truncation with epoch %d is older than epoch %d already seen; a newer writer has taken over", vol, epoch, volEpoch)
	}
	s := n.segs[segKey{vol, pg}]
	if s == nil {
		if err := n.volumeDeleted(vol); err != nil {
			return 0, err
		}
		return 0, refuse(pb.Reason_PG_NOT_HOSTED, vol, pg, 0, "node %s hosts no segment of volume %d PG %d", n.cfg.ID, vol, pg)
	}
	if epoch > 0 && epoch < s.chain.Epoch() {
		return 0, refuse(pb.Reason_STALE_EPOCH, vol, pg, 0, "volume %d PG %d: truncation with epoch %d is older than epoch %d already seen; a newer writer has taken over", vol, pg, epoch, s.chain.Epoch())
	}
	newest := uint64(0)
	for _, t := range s.chain.State().Truncations {
		newest = max(newest, t.Epoch)
	}
	var missing []segment.Truncation
	for i, t := range ts {
		if err := checkTruncation(vol, pg, t, epoch); err != nil {
			return 0, err
		}
		if i > 0 && ts[i-1].Epoch == t.Epoch && ts[i-1] != t {
			return 0, refuse(pb.Reason_BAD_REQUEST, vol, pg, 0, "volume %d PG %d: two different truncations for epoch %d: %s and %s", vol, pg, t.Epoch, fmtTrunc(ts[i-1]), fmtTrunc(t))
		}
		if have, ok := s.chain.TruncationFor(t.Epoch); ok {
			if have != t {
				return 0, refuse(pb.Reason_BAD_REQUEST, vol, pg, 0, "volume %d PG %d was truncated for epoch %d as %s; a different %s cannot replace it (recover again under a new epoch)", vol, pg, t.Epoch, fmtTrunc(have), fmtTrunc(t))
			}
			continue
		}
		if len(missing) > 0 && missing[len(missing)-1] == t {
			continue
		}
		// A truncation resets SCL unless a newer one was applied before;
		// then it must not cut below page versions already built, which
		// cannot happen when the recovery was right (the materializer
		// stays at or below the old writer's VDL, and After is at least
		// that).
		if t.Epoch > newest {
			if mat := s.mat.Load(); mat > t.After {
				return 0, refuse(pb.Reason_BAD_REQUEST, vol, pg, 0, "volume %d PG %d: node %s has built page versions up to LSN %d, above the truncation's %s; the recovery that chose it missed durable records", vol, pg, n.cfg.ID, mat, fmtTrunc(t))
			}
		}
		missing = append(missing, t)
	}
	raiseTo := epoch
	for _, t := range missing {
		raiseTo = max(raiseTo, t.Epoch)
	}
	if len(missing) == 0 && raiseTo <= volEpoch && raiseTo <= s.chain.Epoch() {
		return s.durableSCL.Load(), nil
	}

	// Whatever earlier groups hold must be in the store before it is
	// scanned: groups commit in order, so once this empty one is synced,
	// so is every one opened before.
	flush := n.commits.join(func(*pebble.Batch, *group) {})
	<-flush.done
	if flush.err != nil {
		return 0, flush.err
	}

	var deletes [][]byte
	dropped := 0
	for _, t := range missing {
		upper := prefixEnd(segPrefix(famChain, vol, pg))
		if t.Through < math.MaxUint64 {
			upper = chainKey(vol, pg, t.Through+1)
		}
		it, err := n.db.NewIter(&pebble.IterOptions{LowerBound: chainKey(vol, pg, t.After+1), UpperBound: upper})
		if err != nil {
			return 0, err
		}
		for it.First(); it.Valid(); it.Next() {
			lsn := lastUint64(it.Key())
			e, ok := decodeChainEntry(it.Value())
			if !ok {
				it.Close()
				return 0, errCorruptChain(s, lsn)
			}
			if e.epoch >= t.Epoch {
				continue
			}
			deletes = append(deletes, chainKey(vol, pg, lsn), pageKey(famRecord, vol, pg, e.page, lsn))
			dropped++
		}
		if err := it.Close(); err != nil {
			return 0, err
		}
	}
	before := s.chain.SCL()
	for _, t := range missing {
		// The store scan above covers what the chain returns here: every
		// held record was synced by the flush.
		s.chain.Truncate(t)
	}
	if epoch > 0 {
		s.chain.ObserveEpoch(epoch)
	}
	if raiseTo > volEpoch {
		n.volEpochs[vol] = raiseTo
	}
	decl, err := encodeDecl(s.spec, s.chain)
	if err != nil {
		return 0, err
	}
	scl := s.chain.SCL()
	g := n.commits.join(func(b *pebble.Batch, g *group) {
		for _, k := range deletes {
			b.Delete(k, nil)
		}
		if raiseTo > volEpoch {
			b.Set(epochKey(vol), u64(raiseTo), nil)
		}
		b.Set(metaSubKey(vol, pg, metaDecl), decl, nil)
		// Set, not raised: the SCL may have gone down, and an append
		// earlier in this group must not persist the higher one.
		g.scls[s] = scl
	})
	<-g.done
	if g.err != nil {
		return 0, g.err
	}
	// The SCL may have gone down: set, not raised.
	s.durableSCL.Store(scl)
	// Peers' SCLs heard before may count records this truncation dropped.
	s.peerSCLs.Store(nil)
	n.noteWant(s)
	if len(missing) > 0 {
		last := missing[len(missing)-1]
		n.log.Info("segment truncated", "volume", vol, "pg", pg, "epoch", last.Epoch,
			"after", last.After, "through", last.Through, "tail", last.Tail, "truncations", len(missing),
			"records_dropped", dropped, "scl_before", before, "scl", scl)
	}
	return scl, nil
}

// noteWant remembers the newest truncation's tail when the segment lacks
// records up to it, and wakes gossip to fetch them. Called under Node.mu.
func (n *Node) noteWant(s *seg) {
	var tail, newest uint64
	for _, t := range s.chain.State().Truncations {
		if t.Epoch >= newest {
			newest, tail = t.Epoch, t.Tail
		}
	}
	if tail > s.chain.SCL() {
		raise(&s.want, tail)
		select {
		case n.holeFound <- struct{}{}:
		default:
		}
	}
}

func checkTruncation(vol uint64, pg uint32, t segment.Truncation, epoch uint64) error {
	switch {
	case t.Epoch == 0:
		return refuse(pb.Reason_BAD_REQUEST, vol, pg, 0, "volume %d PG %d: truncation %s has no epoch", vol, pg, fmtTrunc(t))
	case t.Through < t.After || t.Tail > t.After:
		return refuse(pb.Reason_BAD_REQUEST, vol, pg, 0, "volume %d PG %d: truncation %s contradicts itself (it needs tail <= after <= through)", vol, pg, fmtTrunc(t))
	case epoch > 0 && t.Epoch > epoch:
		return refuse(pb.Reason_BAD_REQUEST, vol, pg, 0, "volume %d PG %d: truncation %s is of an epoch newer than the request's %d", vol, pg, fmtTrunc(t), epoch)
	}
	return nil
}

func fmtTrunc(t segment.Truncation) string {
	return fmt.Sprintf("(%d, %d] of epoch %d with tail %d", t.After, t.Through, t.Epoch, t.Tail)
}
