package storage

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// Dropping deleted volumes.
//
// A storage node learns its segments from writers' declarations, never from
// the catalog, so it cannot tell on its own that a volume is gone. The
// control plane tells it: each heartbeat carries the volumes the node holds
// segments of, each with the incarnation its segments carry, and the ids of
// those it holds only an epoch of (HostedVolumes); the answer names those
// the catalog has a tombstone for, with the tombstone's incarnation, and the
// node drops them (DropVolumes).
//
// A segment is dropped only on a tombstone of its own incarnation, never 0.
// Volume ids are unique in one catalog only: after the control plane's etcd
// is lost and replaced, or with a node pointed at another cluster's control
// plane, an id names another volume than the one whose segments the node
// holds, and a tombstone of that id must not drop them. A volume the catalog
// does not know at all is kept too: only an explicit tombstone drops data,
// so an etcd emptied or replaced by mistake cannot empty the storage nodes.
// Segments declared before incarnations (or by a declaration that gives
// none) carry 0 and are never dropped by a tombstone: nothing tells them from
// another cluster's volume of the same id, and leaking their disk space is
// better than dropping a live volume. A node that was down during the
// delete asks at its first heartbeat back, and tombstones are kept for good,
// so it drops the volume then.
//
// A dropped volume leaves its own tombstone on the node (x vol incarnation):
// declarations of that incarnation are refused from then on with
// VOLUME_DELETED, so that a writer that outlived its lease cannot bring the
// segments back; so are requests that carry no incarnation (reads, pulls,
// fences, undeclared appends) for a volume id the node dropped and holds no
// segment of since. Another incarnation of the id (another catalog's volume)
// is hosted as any volume.

// volPrefix is the prefix of every key of family fam for volume vol.
func volPrefix(fam byte, vol uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{fam}, vol)
}

// deletedKey is the node's tombstone of one incarnation of a volume. Nodes
// before incarnations wrote volPrefix(famDeleted, vol) alone, which load
// reads as incarnation 0.
func deletedKey(vol, inc uint64) []byte {
	return binary.BigEndian.AppendUint64(volPrefix(famDeleted, vol), inc)
}

// volumeFamilies are the key families that hold a volume's segments.
var volumeFamilies = []byte{famMeta, famChain, famRecord, famVersion}

// HostedVolumes returns the volumes the node holds segments of, each with
// the incarnation its segments carry (one entry per distinct pair), and the
// ids of the volumes it holds only an epoch of (which every heartbeat brings
// for every volume of the catalog). Both sorted.
func (n *Node) HostedVolumes() (hosted []*pb.VolumeIncarnation, epochOnly []uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	type ref struct{ vol, inc uint64 }
	set := map[ref]bool{}
	withSegs := map[uint64]bool{}
	for k, s := range n.segs {
		set[ref{k.vol, s.spec.GetIncarnation()}] = true
		withSegs[k.vol] = true
	}
	refs := make([]ref, 0, len(set))
	for r := range set {
		refs = append(refs, r)
	}
	slices.SortFunc(refs, func(a, b ref) int {
		if c := cmp.Compare(a.vol, b.vol); c != 0 {
			return c
		}
		return cmp.Compare(a.inc, b.inc)
	})
	for _, r := range refs {
		hosted = append(hosted, &pb.VolumeIncarnation{VolumeId: r.vol, Incarnation: r.inc})
	}
	for vol := range n.volEpochs {
		if !withSegs[vol] {
			epochOnly = append(epochOnly, vol)
		}
	}
	slices.Sort(epochOnly)
	return hosted, epochOnly
}

// DropVolumes deletes what the node holds of the given volumes, which the
// control plane says were deleted: the segments (declarations, SCLs, chains,
// records, page versions) that carry the given nonzero incarnation, and,
// once no segment of the volume id is left, its epoch; it records each
// tombstone, all in one synced batch. From then on the node refuses to host
// that incarnation again. A segment of another incarnation, or of none (0),
// is kept. Disk space comes back as the store compacts the deleted ranges,
// which it is asked to do in the background.
func (n *Node) DropVolumes(vols []*pb.VolumeIncarnation) error {
	// No materializer step may be running on a segment being dropped: its
	// batch would write page versions back after the deletion.
	if !n.dropMu.TryLock() {
		if h := n.hooks.dropWaits.Load(); h != nil {
			(*h)()
		}
		n.dropMu.Lock()
	}
	defer n.dropMu.Unlock()
	n.mu.Lock()
	var todo []dropping
	for _, ref := range vols {
		vol, inc := ref.GetVolumeId(), ref.GetIncarnation()
		if n.deleted[vol][inc] {
			continue
		}
		d := dropping{vol: vol, inc: inc, whole: true}
		for k, s := range n.segs {
			if k.vol != vol {
				continue
			}
			if inc != 0 && s.spec.GetIncarnation() == inc {
				s.dropped.Store(true)
				delete(n.segs, k)
				d.pgs = append(d.pgs, k.pg)
			} else {
				d.whole = false
			}
		}
		if len(d.pgs) == 0 && !d.whole {
			// Nothing of this incarnation is here, and the node keeps
			// hosting the volume's segments of another one, or of none
			// (which no tombstone drops): nothing changes.
			continue
		}
		if n.deleted[vol] == nil {
			n.deleted[vol] = map[uint64]bool{}
		}
		n.deleted[vol][inc] = true
		if inc != 0 && n.incs[vol] == inc {
			delete(n.incs, vol)
		}
		if d.whole {
			delete(n.volEpochs, vol)
		}
		todo = append(todo, d)
	}
	if len(todo) == 0 {
		n.mu.Unlock()
		return nil
	}
	at := u64(uint64(time.Now().UnixNano()))
	// Through the committer: appends accepted before are in this group or
	// an earlier one, so the deletions cover them (a batch applies in order).
	g := n.commits.join(func(b *pebble.Batch, _ *group) {
		for _, d := range todo {
			for _, p := range d.ranges() {
				b.DeleteRange(p, prefixEnd(p), nil)
			}
			if d.whole {
				b.Delete(epochKey(d.vol), nil)
			}
			b.Set(deletedKey(d.vol, d.inc), at, nil)
		}
	})
	n.mu.Unlock()
	<-g.done
	if g.err != nil {
		return g.err
	}
	for _, d := range todo {
		level := slog.LevelInfo
		if len(d.pgs) == 0 {
			// Every node holds every volume's epoch; most host no segment.
			level = slog.LevelDebug
		}
		n.log.Log(context.Background(), level, "dropped a deleted volume", "volume", d.vol, "incarnation", fmt.Sprintf("%016x", d.inc), "segments", len(d.pgs), "kept_other_segments", !d.whole)
		for _, p := range d.ranges() {
			select {
			case n.compactions <- [2][]byte{p, prefixEnd(p)}:
			default:
				// The queue is full: Pebble compacts the ranges in time anyway.
			}
		}
	}
	return nil
}

// dropping is one volume incarnation DropVolumes drops.
type dropping struct {
	vol, inc uint64
	// whole: no segment of the volume id is left, so every key of it goes,
	// and its epoch; else only the dropped segments' keys.
	whole bool
	pgs   []uint32
}

// ranges are the key prefixes a drop deletes: the volume's in every family,
// or, when the node keeps segments of another incarnation, the dropped
// segments'.
func (d dropping) ranges() [][]byte {
	var out [][]byte
	for _, fam := range volumeFamilies {
		if d.whole {
			out = append(out, volPrefix(fam, d.vol))
			continue
		}
		for _, pg := range d.pgs {
			out = append(out, segPrefix(fam, d.vol, pg))
		}
	}
	return out
}

// volumeGone reports whether the node dropped volume vol (some incarnation
// of it) and holds no segment of it since: requests that carry no
// incarnation are refused for it with VOLUME_DELETED. Called under Node.mu.
func (n *Node) volumeGone(vol uint64) bool {
	if len(n.deleted[vol]) == 0 {
		return false
	}
	for k := range n.segs {
		if k.vol == vol {
			return false
		}
	}
	return true
}

// volumeDeleted refuses a request that carries no incarnation for a volume
// the node dropped and holds nothing of since (volumeGone). Called under
// Node.mu.
func (n *Node) volumeDeleted(vol uint64) error {
	if !n.volumeGone(vol) {
		return nil
	}
	return refuse(pb.Reason_VOLUME_DELETED, vol, 0, 0, "volume %d was deleted, and node %s dropped its segments; nothing was stored", vol, n.cfg.ID)
}

// volumeDeletedOrNotHosted is the refusal of a request for a PG the node
// holds no segment of: VOLUME_DELETED if it dropped the volume, else
// PG_NOT_HOSTED.
func (n *Node) volumeDeletedOrNotHosted(vol uint64, pg uint32) error {
	n.mu.Lock()
	err := n.volumeDeleted(vol)
	n.mu.Unlock()
	if err != nil {
		return err
	}
	return refuse(pb.Reason_PG_NOT_HOSTED, vol, pg, 0, "node %s hosts no segment of volume %d PG %d", n.cfg.ID, vol, pg)
}

// droppedSegment refuses a request served from a segment that a drop took
// away meanwhile: the view it read may already lack the segment's keys, and
// would answer as if the pages were zeros.
func (n *Node) droppedSegment(s *seg) error {
	if !s.dropped.Load() {
		return nil
	}
	return refuse(pb.Reason_VOLUME_DELETED, s.key.vol, s.key.pg, 0, "volume %d was deleted, and node %s dropped its segments", s.key.vol, n.cfg.ID)
}

// compactLoop compacts the key ranges of dropped volumes, so that their
// disk space comes back soon rather than whenever compactions pass by.
func (n *Node) compactLoop() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-n.stop
		cancel()
	}()
	for {
		select {
		case <-n.stop:
			return
		case r := <-n.compactions:
			if err := n.db.Compact(ctx, r[0], r[1], false); err != nil && ctx.Err() == nil {
				n.log.Warn("compacting a dropped volume's keys failed; the store will reclaim them in its own time", "err", err)
			}
		}
	}
}
