package storage

import (
	"errors"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/redo"
	"github.com/borealis-db/borealis/internal/segment"
)

// incoming is an append to ingest: from the writer (epoch set) or from a
// peer's gossip (fromPeer).
type incoming struct {
	volume       uint64
	epoch        uint64
	minReadPoint uint64
	vdl          uint64
	declare      []*pb.SegmentSpec
	batches      []incomingBatch
	fromPeer     bool
}

type incomingBatch struct {
	pg     uint32
	raw    [][]byte
	recs   []redo.Record
	retain uint64
	// membership is the membership epoch the writer counts the batch's
	// acks under (0: not said).
	membership uint64
}

func fromAppendRequest(req *pb.AppendRequest) *incoming {
	in := &incoming{volume: req.Volume, epoch: req.Epoch, minReadPoint: req.MinReadPoint, vdl: req.Vdl, declare: req.Declare}
	for _, b := range req.Batches {
		in.batches = append(in.batches, incomingBatch{pg: b.Pg, raw: b.Records, retain: b.RetainLsn, membership: b.MembershipEpoch})
	}
	return in
}

// decode checks every record's CRC and structure before anything is touched,
// so a refused request stores nothing.
func (in *incoming) decode() error {
	for i := range in.batches {
		b := &in.batches[i]
		b.recs = make([]redo.Record, len(b.raw))
		for j, raw := range b.raw {
			r, err := redo.Decode(raw)
			if err != nil {
				reason := pb.Reason_MALFORMED_RECORD
				if errors.Is(err, redo.ErrBadCRC) {
					reason = pb.Reason_BAD_CRC
				}
				return refuse(reason, in.volume, b.pg, 0, "record %d of PG %d refused: %v", j, b.pg, err)
			}
			if r.Volume != in.volume {
				return refuse(pb.Reason_WRONG_VOLUME, in.volume, b.pg, r.LSN, "record at LSN %d belongs to volume %d, but the request is for volume %d", r.LSN, r.Volume, in.volume)
			}
			if r.PG != b.pg {
				return refuse(pb.Reason_MALFORMED_RECORD, in.volume, b.pg, r.LSN, "record at LSN %d names PG %d but was sent in the batch for PG %d", r.LSN, r.PG, b.pg)
			}
			// A writer sends only records it made, under its own epoch.
			if !in.fromPeer && r.Epoch != in.epoch {
				return refuse(pb.Reason_MALFORMED_RECORD, in.volume, b.pg, r.LSN, "record at LSN %d carries epoch %d, but its request's epoch is %d", r.LSN, r.Epoch, in.epoch)
			}
			b.recs[j] = r
		}
	}
	return nil
}

// ingest validates in against the node's state and, if it is acceptable,
// writes it into the open commit group. It returns the group to wait for (nil
// if nothing needs syncing) and the segments the append touched.
func (n *Node) ingest(in *incoming) (*group, []*seg, error) {
	if err := in.decode(); err != nil {
		return nil, nil, err
	}
	if !in.fromPeer {
		if err := n.applyDeclaredTruncations(in); err != nil {
			return nil, nil, err
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()

	// Validation: nothing below here may change state until it all passes.
	if err := n.failure(); err != nil {
		return nil, nil, err
	}
	if len(in.declare) == 0 {
		// A request without declarations carries no incarnation: it is
		// refused if the node dropped the volume and hosts nothing of it
		// since. Declarations are judged each by its own (checkDeclaration).
		if err := n.volumeDeleted(in.volume); err != nil {
			return nil, nil, err
		}
	}
	if free := n.diskFree.Load(); free < n.cfg.MinFreeBytes {
		return nil, nil, refuse(pb.Reason_DISK_FULL, in.volume, 0, 0, "storage node %s: only %d bytes free in %s, below the %d kept in reserve; nothing was stored", n.cfg.ID, free, n.cfg.Dir, n.cfg.MinFreeBytes)
	}
	volEpoch := n.volEpochs[in.volume]
	if !in.fromPeer && in.epoch < volEpoch {
		return nil, nil, refuse(pb.Reason_STALE_EPOCH, in.volume, 0, 0, "volume %d: request epoch %d is older than epoch %d already seen; a newer writer has taken over", in.volume, in.epoch, volEpoch)
	}
	declared := map[uint32]*pb.SegmentSpec{}
	var inc uint64
	for _, spec := range in.declare {
		if err := n.checkDeclaration(in.volume, spec); err != nil {
			return nil, nil, err
		}
		if i := spec.GetIncarnation(); i != 0 && inc != 0 && i != inc {
			return nil, nil, refuse(pb.Reason_BAD_DECLARATION, in.volume, spec.Pg, 0, "the request declares PGs of volume %d under two incarnations, %016x and %016x", in.volume, inc, i)
		} else if i != 0 {
			inc = i
		}
		declared[spec.Pg] = spec
	}
	touched := make([]*seg, len(in.batches))
	for i, b := range in.batches {
		s := n.segs[segKey{in.volume, b.pg}]
		var pages uint64
		var pageSize uint32
		if spec := declared[b.pg]; s == nil && spec != nil {
			pages, pageSize = spec.PagesPerPg, spec.PageSize
		} else if s != nil {
			pages, pageSize = s.pages.Load(), s.pageSize.Load()
		} else {
			if err := n.volumeDeleted(in.volume); err != nil {
				return nil, nil, err
			}
			return nil, nil, refuse(pb.Reason_PG_NOT_HOSTED, in.volume, b.pg, 0, "node %s hosts no segment of volume %d PG %d", n.cfg.ID, in.volume, b.pg)
		}
		first := uint64(b.pg)*pages + 1
		for _, r := range b.recs {
			if r.Page < first || r.Page >= first+pages {
				return nil, nil, refuse(pb.Reason_MALFORMED_RECORD, in.volume, b.pg, r.LSN, "record at LSN %d is for page %d, outside PG %d (pages %d-%d)", r.LSN, r.Page, b.pg, first, first+pages-1)
			}
			if err := checkPayloadFits(&r, int(pageSize)); err != nil {
				return nil, nil, refuse(pb.Reason_MALFORMED_RECORD, in.volume, b.pg, r.LSN, "record at LSN %d: %v", r.LSN, err)
			}
			if !in.fromPeer && r.Epoch < volEpoch {
				return nil, nil, refuse(pb.Reason_STALE_EPOCH, in.volume, b.pg, r.LSN, "record at LSN %d carries epoch %d, older than epoch %d already seen", r.LSN, r.Epoch, volEpoch)
			}
		}
		if !in.fromPeer {
			if err := n.checkMembership(in.volume, b, s, declared[b.pg]); err != nil {
				return nil, nil, err
			}
			if err := n.checkChain(in, b, s, declared[b.pg], volEpoch); err != nil {
				return nil, nil, err
			}
		}
		touched[i] = s
	}

	// Mutation.
	n.stats.appendRequests.Add(1)
	var writes []func(*pebble.Batch)
	newest := in.epoch
	if in.fromPeer {
		// Records from peers carry the epoch of the writer that made them.
		for _, b := range in.batches {
			for _, r := range b.recs {
				newest = max(newest, r.Epoch)
			}
		}
	}
	if newest > volEpoch {
		n.volEpochs[in.volume] = newest
		epoch := newest
		writes = append(writes, func(b *pebble.Batch) { b.Set(epochKey(in.volume), u64(epoch), nil) })
	}
	for _, spec := range in.declare {
		s, decl, err := n.applyDeclaration(in.volume, spec)
		if err != nil {
			return nil, nil, err
		}
		if decl != nil {
			key := metaSubKey(in.volume, spec.Pg, metaDecl)
			writes = append(writes, func(b *pebble.Batch) { b.Set(key, decl, nil) })
		}
		for i, b := range in.batches {
			if b.pg == spec.Pg {
				touched[i] = s
			}
		}
	}
	sclWrites := map[*seg]uint64{}
	vdlWrites := map[*seg]uint64{}
	var accepted uint64
	for i, b := range in.batches {
		s := touched[i]
		if in.epoch > 0 {
			s.chain.ObserveEpoch(in.epoch)
		}
		if in.minReadPoint > 0 {
			raise(&s.readPoint, in.minReadPoint)
		}
		if !in.fromPeer && in.vdl > s.vdlSeen.Load() {
			// Synced with this request's group, so recovery may trust it.
			s.vdlSeen.Store(in.vdl)
			vdlWrites[s] = in.vdl
		}
		if b.retain > 0 {
			raise(&s.retain, b.retain)
		}
		hadHoles := s.chain.HeldAbove() > 0
		for j := range b.recs {
			r := &b.recs[j]
			v := s.chain.Offer(segment.Entry{LSN: r.LSN, PrevLSN: r.PrevLSN, Epoch: r.Epoch})
			if v != segment.Accepted {
				continue
			}
			accepted++
			raw := b.raw[j]
			ck := chainKey(in.volume, b.pg, r.LSN)
			ce := chainEntry{prev: r.PrevLSN, epoch: r.Epoch, page: r.Page}.encode()
			rk := pageKey(famRecord, in.volume, b.pg, r.Page, r.LSN)
			writes = append(writes, func(b *pebble.Batch) {
				b.Set(ck, ce, nil)
				b.Set(rk, raw, nil)
			})
		}
		if scl := s.chain.SCL(); scl > s.durableSCL.Load() {
			sclWrites[s] = scl
		}
		if !in.fromPeer && !hadHoles && s.chain.HeldAbove() > 0 {
			// Records the writer sent while this node was away are missing;
			// until they are pulled the segment does not count toward the
			// write quorum, so gossip starts now rather than on its tick.
			select {
			case n.holeFound <- struct{}{}:
			default:
			}
		}
	}
	if in.fromPeer {
		n.stats.recordsPulled.Add(accepted)
	} else {
		n.stats.recordsAppended.Add(accepted)
	}
	if accepted > 0 {
		n.lastAppend.Store(time.Now().UnixNano())
	}
	if len(writes) == 0 && len(sclWrites) == 0 && len(vdlWrites) == 0 {
		return nil, touched, nil
	}
	g := n.commits.join(func(b *pebble.Batch, g *group) {
		for _, w := range writes {
			w(b)
		}
		for s, scl := range sclWrites {
			g.scls[s] = scl
		}
		for s, vdl := range vdlWrites {
			g.vdls[s] = max(g.vdls[s], vdl)
		}
	})
	return g, touched, nil
}

// checkChain refuses a writer's batch that the segment's chain would not
// take whole: records from an older epoch (a fenced writer), inside a
// truncated range, or whose backlinks contradict the chain. Acking such a
// batch without storing it would leave the writer waiting for an SCL that
// never comes.
func (n *Node) checkChain(in *incoming, b incomingBatch, s *seg, spec *pb.SegmentSpec, volEpoch uint64) error {
	var chain *segment.Chain
	if s == nil {
		chain = segment.New(newSegmentState(spec, volEpoch))
	} else {
		chain = s.chain
		// A segment may have learned a newer epoch by gossip alone.
		if in.epoch < chain.Epoch() {
			return refuse(pb.Reason_STALE_EPOCH, in.volume, b.pg, 0, "volume %d PG %d: request epoch %d is older than epoch %d already seen; a newer writer has taken over", in.volume, b.pg, in.epoch, chain.Epoch())
		}
	}
	entries := make([]segment.Entry, len(b.recs))
	for j, r := range b.recs {
		entries[j] = segment.Entry{LSN: r.LSN, PrevLSN: r.PrevLSN, Epoch: r.Epoch}
	}
	i, v := chain.Check(entries)
	switch v {
	case segment.Accepted:
		return nil
	case segment.StaleEpoch, segment.Truncated:
		return refuse(pb.Reason_STALE_EPOCH, in.volume, b.pg, entries[i].LSN, "volume %d PG %d: record at LSN %d of epoch %d is %v for this segment; a newer writer has taken over", in.volume, b.pg, entries[i].LSN, entries[i].Epoch, v)
	default:
		return refuse(pb.Reason_MALFORMED_RECORD, in.volume, b.pg, entries[i].LSN, "volume %d PG %d: record at LSN %d links back to LSN %d, which contradicts the segment's chain (complete to LSN %d)", in.volume, b.pg, entries[i].LSN, entries[i].PrevLSN, chain.SCL())
	}
}

func checkPayloadFits(r *redo.Record, pageSize int) error {
	switch r.Kind {
	case redo.KindImage:
		if len(r.Image) != pageSize {
			return fmt.Errorf("page image is %d bytes, but the page size is %d", len(r.Image), pageSize)
		}
	case redo.KindDiff:
		for _, rg := range r.Ranges {
			if int(rg.Offset)+len(rg.Data) > pageSize {
				return fmt.Errorf("range at offset %d of %d bytes overruns the %d-byte page", rg.Offset, len(rg.Data), pageSize)
			}
		}
	}
	return nil
}

// newSegmentState is the chain state of a segment a declaration creates: it
// holds nothing yet, so the declared truncations need no deletions, only to
// be known, so that the older records it will copy by gossip are judged
// against them.
func newSegmentState(spec *pb.SegmentSpec, volEpoch uint64) segment.State {
	st := segment.State{Epoch: volEpoch}
	if spec != nil {
		st.Truncations = TruncationsFromPB(spec.Truncations)
		for _, t := range st.Truncations {
			st.Epoch = max(st.Epoch, t.Epoch)
		}
	}
	return st
}

// applyDeclaredTruncations applies, before anything else of a writer's
// request, the truncations its declarations carry that a hosted segment
// lacks: the request's records continue the chain from the truncation's
// tail and would be refused against the old chain. A segment the request
// creates gets them in newSegmentState instead.
func (n *Node) applyDeclaredTruncations(in *incoming) error {
	for _, spec := range in.declare {
		if len(spec.Truncations) == 0 {
			continue
		}
		ts := TruncationsFromPB(spec.Truncations)
		for _, t := range ts {
			if err := checkTruncation(in.volume, spec.Pg, t, in.epoch); err != nil {
				return err
			}
		}
		n.mu.Lock()
		err := n.checkDeclaration(in.volume, spec)
		s := n.segs[segKey{in.volume, spec.Pg}]
		lacks := s != nil && lacksTruncation(s.chain, ts)
		n.mu.Unlock()
		if err != nil {
			return err
		}
		if !lacks {
			continue
		}
		if _, err := n.truncate(in.volume, spec.Pg, in.epoch, ts); err != nil {
			return err
		}
	}
	return nil
}

func (n *Node) checkDeclaration(vol uint64, spec *pb.SegmentSpec) error {
	if err := n.checkDeclaredSegment(vol, spec); err != nil {
		return err
	}
	return n.checkDeclaredMembership(vol, spec)
}

// checkDeclaredSegment refuses a declaration that contradicts the segment
// or the volume the node holds: another volume than the request's, no page
// geometry or another one, another incarnation, a deleted volume. Called
// under Node.mu.
func (n *Node) checkDeclaredSegment(vol uint64, spec *pb.SegmentSpec) error {
	if spec.Volume != vol {
		return refuse(pb.Reason_WRONG_VOLUME, vol, spec.Pg, 0, "declaration of PG %d names volume %d, but the request is for volume %d", spec.Pg, spec.Volume, vol)
	}
	if spec.PageSize == 0 || spec.PagesPerPg == 0 {
		return refuse(pb.Reason_BAD_DECLARATION, vol, spec.Pg, 0, "declaration of volume %d PG %d needs a page size and pages per PG", vol, spec.Pg)
	}
	if inc := spec.GetIncarnation(); inc == 0 {
		// A declaration that does not say which volume of the id it is:
		// refused if the node dropped the id and holds nothing of it since.
		if err := n.volumeDeleted(vol); err != nil {
			return err
		}
	} else if n.deleted[vol][inc] {
		return refuse(pb.Reason_VOLUME_DELETED, vol, spec.Pg, 0, "volume %d (incarnation %016x) was deleted, and node %s dropped its segments; nothing was stored", vol, inc, n.cfg.ID)
	} else if held := n.incs[vol]; held != 0 && held != inc {
		return refuse(pb.Reason_BAD_DECLARATION, vol, spec.Pg, 0, "node %s holds volume %d as incarnation %016x, not %016x: another volume had this id in another catalog (a lost etcd replaced, or another cluster's); nothing was stored", n.cfg.ID, vol, held, inc)
	}
	if s := n.segs[segKey{vol, spec.Pg}]; s != nil {
		if s.spec.PageSize != spec.PageSize || s.spec.PagesPerPg != spec.PagesPerPg {
			return refuse(pb.Reason_BAD_DECLARATION, vol, spec.Pg, 0, "volume %d PG %d is hosted with %d-byte pages and %d pages per PG; the declaration says %d and %d", vol, spec.Pg, s.spec.PageSize, s.spec.PagesPerPg, spec.PageSize, spec.PagesPerPg)
		}
	}
	return nil
}

// checkDeclaredMembership refuses a declaration of an older membership
// than the segment holds (its sender acts on a membership that changed),
// and one that does not list this node unless it is a newer membership of
// a segment the node holds: then the node is being removed from the PG and
// the segment retires. An epoch of 0 says nothing and is not judged by it.
// Called under Node.mu.
func (n *Node) checkDeclaredMembership(vol uint64, spec *pb.SegmentSpec) error {
	s := n.segs[segKey{vol, spec.Pg}]
	if s != nil && spec.MembershipEpoch != 0 && spec.MembershipEpoch < s.spec.MembershipEpoch {
		return refuseMembership(vol, spec.Pg, s.spec.MembershipEpoch, "declaration of volume %d PG %d is of membership epoch %d, older than epoch %d that node %s holds; take the PG's membership from the catalog again", vol, spec.Pg, spec.MembershipEpoch, s.spec.MembershipEpoch, n.cfg.ID)
	}
	if inSomeSet(spec, n.cfg.ID) {
		return nil
	}
	switch {
	case s == nil:
		return refuse(pb.Reason_BAD_DECLARATION, vol, spec.Pg, 0, "declaration of volume %d PG %d does not list this node (%s) in any member set, and the node hosts no segment of it", vol, spec.Pg, n.cfg.ID)
	case spec.MembershipEpoch > s.spec.MembershipEpoch, s.retired:
		return nil
	default:
		return refuse(pb.Reason_BAD_DECLARATION, vol, spec.Pg, 0, "declaration of volume %d PG %d leaves this node (%s) out of every member set under membership epoch %d, the one under which the node is a member; a removal needs a newer epoch", vol, spec.Pg, n.cfg.ID, spec.MembershipEpoch)
	}
}

// checkMembership refuses a writer's batch for a segment that is retired
// (the node is in no set of the membership it holds, or of the one the
// request declares), or whose acks the writer counts under an older
// membership epoch than the node holds: counted so, a record could miss
// the write quorum of a newer set. Called under Node.mu.
func (n *Node) checkMembership(vol uint64, b incomingBatch, s *seg, declared *pb.SegmentSpec) error {
	spec := declared
	if s != nil && (declared == nil || declared.MembershipEpoch <= s.spec.MembershipEpoch) {
		spec = s.spec
	}
	if spec == nil {
		return nil
	}
	if !inSomeSet(spec, n.cfg.ID) {
		return refuseMembership(vol, b.pg, spec.MembershipEpoch, "node %s is in no member set of volume %d PG %d under membership epoch %d: it takes no more of the PG's writes", n.cfg.ID, vol, b.pg, spec.MembershipEpoch)
	}
	if b.membership != 0 && b.membership < spec.MembershipEpoch {
		return refuseMembership(vol, b.pg, spec.MembershipEpoch, "batch for volume %d PG %d counts its acks under membership epoch %d, older than epoch %d that node %s holds; nothing was stored", vol, b.pg, b.membership, spec.MembershipEpoch, n.cfg.ID)
	}
	return nil
}

// applyDeclaration creates the segment or takes a newer membership. It returns
// the declaration to persist, or nil when nothing changed.
func (n *Node) applyDeclaration(vol uint64, spec *pb.SegmentSpec) (*seg, []byte, error) {
	key := segKey{vol, spec.Pg}
	s := n.segs[key]
	if s == nil {
		s = n.newSeg(key, spec, segment.New(newSegmentState(spec, n.volEpochs[vol])))
		n.segs[key] = s
		n.noteIncarnation(s)
		n.noteWant(s)
		n.log.Info("hosting new segment", "volume", vol, "pg", spec.Pg, "incarnation", fmt.Sprintf("%016x", spec.GetIncarnation()), "members", len(memberUnion(spec)), "sets", len(memberSets(spec)), "truncations", len(spec.Truncations))
	} else if spec.MembershipEpoch > s.spec.MembershipEpoch {
		// A segment keeps the incarnation it was created with: a
		// declaration of another one was refused, and one of none (or of
		// one where the segment has none) does not change it.
		wasRetired := s.retired
		n.setSpec(s, withIncarnation(spec, s.spec.GetIncarnation()))
		if s.retired && !wasRetired {
			n.log.Info("segment retired: the node is in no member set of the PG's new membership; it refuses the PG's writes and still serves its peers", "volume", vol, "pg", spec.Pg, "membership_epoch", spec.MembershipEpoch)
		} else {
			n.log.Info("segment took a new membership", "volume", vol, "pg", spec.Pg, "membership_epoch", spec.MembershipEpoch, "sets", len(memberSets(spec)))
		}
	} else {
		return s, nil, nil
	}
	decl, err := encodeDecl(s.spec, s.chain)
	return s, decl, err
}
