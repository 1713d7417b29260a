package storage

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/redo"
	"github.com/borealis-db/borealis/internal/segment"
)

// Repair of damaged items: a record or page version that fails its CRC32C,
// met by the scrub or by a read, is queued here; repairLoop fetches it
// again from a peer (repairFor decides how). Until then no read serves it:
// every read checks what it uses, and refuses with SEGMENT_CORRUPT, which
// sends the reader to another segment.

// metCorruption reports whether err is a damaged item or store, and if it
// is an item, counts and logs it, tells Config.OnCorruption and queues its
// repair (once while it is queued or under repair).
func (n *Node) metCorruption(err error) bool {
	var ce *errCorrupt
	if !errors.As(err, &ce) {
		// A damaged store file: the DataCorruption event marked the store.
		return err != nil && isCorruption(err)
	}
	if s := n.segment(ce.seg.vol, ce.seg.pg); s != nil && s.hydrating.Load() {
		// Met in a view from before the segment began its copy, which
		// replaces it.
		return true
	}
	n.repairMu.Lock()
	queued := n.repairing[ce.corruptItem]
	if !queued {
		n.repairing[ce.corruptItem] = true
	}
	n.repairMu.Unlock()
	if queued {
		return true
	}
	n.stats.corruptionsFound.Add(1)
	n.log.Error("stored item is corrupt; it is served to no one and is repaired from a peer", "item", ce.item.String(),
		"segment", ce.seg.String(), "page", ce.page, "lsn", ce.lsn, "err", ce.err)
	n.tellCorruption(CorruptionInfo{Item: ce.item, Volume: ce.seg.vol, PG: ce.seg.pg, Page: ce.page, LSN: ce.lsn, Err: ce.err})
	select {
	case n.repairs <- ce.corruptItem:
	default:
		// The queue is full: a later scrub pass meets it again.
		n.repairMu.Lock()
		delete(n.repairing, ce.corruptItem)
		n.repairMu.Unlock()
	}
	return true
}

// refuseCorrupt is the refusal of a request to s that met damage.
func refuseCorrupt(n *Node, s *seg, err error) *refusal {
	var ce *errCorrupt
	if errors.As(err, &ce) {
		return refuse(pb.Reason_SEGMENT_CORRUPT, ce.seg.vol, ce.seg.pg, ce.lsn, "node %s: %v; it is being repaired from a peer, read from another segment", n.cfg.ID, ce)
	}
	return refuse(pb.Reason_SEGMENT_CORRUPT, s.key.vol, s.key.pg, 0, "node %s: its store is damaged where the request to %s needed it (%v); read from another segment", n.cfg.ID, s.key, err)
}

func (n *Node) repairLoop() {
	for {
		var it corruptItem
		select {
		case <-n.stop:
			return
		case it = <-n.repairs:
		}
		n.repair1(it)
		n.repairMu.Lock()
		delete(n.repairing, it)
		n.repairMu.Unlock()
	}
}

// repair1 repairs one damaged item, or starts the copy that will.
func (n *Node) repair1(it corruptItem) {
	s := n.segment(it.seg.vol, it.seg.pg)
	if s == nil || s.dropped.Load() {
		return
	}
	act := repairFor(it.item, it.lsn, s.logFloor.Load(), s.hydrating.Load(), false)
	if act == repairFetchRecord {
		err := n.fetchRecord(s, it.page, it.lsn)
		if err == nil {
			n.stats.corruptionsFixed.Add(1)
			n.log.Info("corrupt record repaired from a peer", "segment", s.key.String(), "page", it.page, "lsn", it.lsn)
			return
		}
		n.log.Warn("no peer could give the corrupt record again", "segment", s.key.String(), "page", it.page, "lsn", it.lsn, "err", err)
		act = repairFor(it.item, it.lsn, s.logFloor.Load(), s.hydrating.Load(), true)
	}
	if act == repairRehydrate {
		if err := n.rehydrate(s, fmt.Errorf("corrupt %s of page %d at LSN %d", it.item, it.page, it.lsn)); err != nil {
			n.log.Error("cannot start copying the segment again; the scrub meets the damage again", "segment", s.key.String(), "err", err)
		}
	}
}

// fetchRecord pulls the record of s at lsn from a peer and rewrites it.
func (n *Node) fetchRecord(s *seg, page, lsn uint64) error {
	n.mu.Lock()
	peers := slices.Clone(s.peers)
	n.mu.Unlock()
	if len(peers) == 0 {
		return fmt.Errorf("%s has no peer", s.key)
	}
	var errs []error
	for _, p := range peers {
		raw, err := n.pullRecord(s, p, page, lsn)
		if err == nil {
			return n.rewriteRecord(s, page, lsn, raw)
		}
		errs = append(errs, fmt.Errorf("%s: %w", p.NodeId, err))
	}
	return errors.Join(errs...)
}

// pullRecord asks peer for the one record of s at lsn.
func (n *Node) pullRecord(s *seg, peer *pb.Member, page, lsn uint64) ([]byte, error) {
	conn, err := n.peerConn(peer.Addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	// With max_bytes 1 the answer holds the first record after After.
	resp, err := pb.NewStorageClient(conn).Pull(ctx, &pb.PullRequest{Volume: s.key.vol, Pg: s.key.pg, After: lsn - 1, MaxBytes: 1})
	if err != nil {
		return nil, err
	}
	if len(resp.Records) == 0 {
		return nil, fmt.Errorf("it holds no record after LSN %d (log floor %d)", lsn-1, resp.LogFloor)
	}
	raw := resp.Records[0]
	r, err := redo.Decode(raw)
	if err != nil {
		return nil, fmt.Errorf("its record at LSN %d is corrupt too: %w", lsn, err)
	}
	if r.LSN != lsn || r.Volume != s.key.vol || r.PG != s.key.pg || r.Page != page {
		return nil, fmt.Errorf("it holds no record at LSN %d (its next is at LSN %d, page %d; log floor %d)", lsn, r.LSN, r.Page, resp.LogFloor)
	}
	return raw, nil
}

// rewriteRecord stores raw over the damaged record at lsn, unless it is
// gone since: collected (no materializer or GC step runs under dropMu),
// or truncated (truncations run under Node.mu).
func (n *Node) rewriteRecord(s *seg, page, lsn uint64, raw []byte) error {
	n.dropMu.Lock()
	defer n.dropMu.Unlock()
	if err := n.droppedSegment(s); err != nil {
		return err
	}
	if lsn <= s.logFloor.Load() {
		return nil
	}
	n.mu.Lock()
	ck, rk := chainKey(s.key.vol, s.key.pg, lsn), pageKey(famRecord, s.key.vol, s.key.pg, page, lsn)
	_, chained, err := n.get(ck)
	if err == nil && chained {
		_, chained, err = n.get(rk)
	}
	if err != nil || !chained {
		n.mu.Unlock()
		return err
	}
	g := n.commits.join(func(b *pebble.Batch, _ *group) { b.Set(rk, raw, nil) })
	n.mu.Unlock()
	<-g.done
	return g.err
}

// rehydrate drops what s holds and copies it again from a complete peer,
// as a segment whose node came back empty does: it holds nothing from
// then on (SCL 0, no log, no versions), serves no reads and counts toward
// no quorum until the copy is complete; the writer's records that reach it
// meanwhile are kept. Its peers hold every durable record of the PG. (A
// copy on top of what it holds would not do: the copy's pages may be older
// than the log this segment has already collected.)
func (n *Node) rehydrate(s *seg, why error) error {
	n.dropMu.Lock()
	defer n.dropMu.Unlock()
	n.mu.Lock()
	if err := n.droppedSegment(s); err != nil {
		n.mu.Unlock()
		return err
	}
	if s.hydrating.Load() || s.retired {
		n.mu.Unlock()
		return nil
	}
	// The open groups first, so that none raises the SCL again after it is
	// dropped, nor stores a record after the deletions.
	flush := n.commits.join(func(*pebble.Batch, *group) {})
	<-flush.done
	if flush.err != nil {
		n.mu.Unlock()
		return flush.err
	}
	old := s.chain.State()
	chain := segment.New(segment.State{Epoch: old.Epoch, Truncations: old.Truncations})
	decl, err := encodeDecl(s.spec, chain)
	if err != nil {
		n.mu.Unlock()
		return err
	}
	vol, pg := s.key.vol, s.key.pg
	st := hydrateState{}
	hyd := st.encode()
	g := n.commits.join(func(b *pebble.Batch, g *group) {
		for _, fam := range []byte{famChain, famRecord, famVersion} {
			b.DeleteRange(segPrefix(fam, vol, pg), prefixEnd(segPrefix(fam, vol, pg)), nil)
		}
		b.Delete(metaSubKey(vol, pg, metaMater), nil)
		b.Set(metaSubKey(vol, pg, metaDecl), decl, nil)
		b.Set(metaSubKey(vol, pg, metaHydrate), hyd, nil)
		g.scls[s] = 0
	})
	s.chain = chain
	s.durableSCL.Store(0)
	s.mat.Store(0)
	s.logFloor.Store(0)
	s.hydRecord = true
	s.hydrating.Store(true)
	s.hyd = st
	s.hydCopied.Store(0)
	s.hydRate.Store(0)
	s.hydTotal.Store(0)
	s.corruptCopy.Store(true)
	n.stats.repairsStarted.Add(1)
	n.mu.Unlock()
	<-g.done
	if g.err != nil {
		return g.err
	}
	n.log.Warn("segment dropped what it held and copies it again from a peer, to replace damaged data; it serves no reads until the copy is complete",
		"segment", s.key.String(), "scl_before", old.SCL, "reason", why.Error())
	n.startHydration(s)
	return nil
}
