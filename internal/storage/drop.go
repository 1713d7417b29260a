package storage

import (
	"context"
	"encoding/binary"
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
// control plane tells it: each heartbeat carries the ids of the volumes the
// node holds anything of (HostedVolumes), and the answer names those the
// catalog has a tombstone for (a deleted volume; ids are never reused). The
// node then drops them (DropVolumes). A volume the catalog does not know at
// all is kept: only an explicit tombstone drops data, so an etcd emptied or
// replaced by mistake cannot empty the storage nodes. A node that was down
// during the delete asks at its first heartbeat back, and tombstones are
// kept for good, so it drops the volume then.
//
// A dropped volume leaves its own tombstone on the node (x vol): appends,
// declarations and fences for it are refused from then on with
// VOLUME_DELETED, so that a writer that outlived its lease cannot bring the
// segments back.

// volPrefix is the prefix of every key of family fam for volume vol.
func volPrefix(fam byte, vol uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{fam}, vol)
}

func deletedKey(vol uint64) []byte { return volPrefix(famDeleted, vol) }

// volumeFamilies are the key families that hold a volume's segments.
var volumeFamilies = []byte{famMeta, famChain, famRecord, famVersion}

// HostedVolumes returns the ids of the volumes the node holds anything of:
// a segment, or only the volume's epoch (which every heartbeat brings for
// every volume of the catalog). Sorted.
func (n *Node) HostedVolumes() []uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	set := map[uint64]bool{}
	for k := range n.segs {
		set[k.vol] = true
	}
	for vol := range n.volEpochs {
		set[vol] = true
	}
	out := make([]uint64, 0, len(set))
	for vol := range set {
		out = append(out, vol)
	}
	slices.Sort(out)
	return out
}

// DropVolumes deletes everything the node holds of the given volumes, which
// the control plane says were deleted: their segments (declarations, SCLs,
// chains, records, page versions) and epochs, and records their tombstones,
// in one synced batch. From then on the node refuses to host them again.
// Disk space comes back as the store compacts the deleted ranges, which it
// is asked to do in the background.
func (n *Node) DropVolumes(vols []uint64) error {
	// No materializer step may be running on a segment being dropped: its
	// batch would write page versions back after the deletion.
	n.dropMu.Lock()
	defer n.dropMu.Unlock()
	n.mu.Lock()
	type dropped struct {
		vol  uint64
		segs int
	}
	var todo []dropped
	for _, vol := range vols {
		if n.deleted[vol] {
			continue
		}
		d := dropped{vol: vol}
		for k, s := range n.segs {
			if k.vol == vol {
				s.dropped.Store(true)
				delete(n.segs, k)
				d.segs++
			}
		}
		n.deleted[vol] = true
		delete(n.volEpochs, vol)
		todo = append(todo, d)
	}
	if len(todo) == 0 {
		n.mu.Unlock()
		return nil
	}
	at := u64(uint64(time.Now().UnixNano()))
	// Through the committer: appends accepted before are in this group or
	// an earlier one, so the deletions cover them (a batch applies in order).
	g := n.commits.join(func(b *pebble.Batch, _ map[*seg]uint64) {
		for _, d := range todo {
			for _, fam := range volumeFamilies {
				p := volPrefix(fam, d.vol)
				b.DeleteRange(p, prefixEnd(p), nil)
			}
			b.Delete(epochKey(d.vol), nil)
			b.Set(deletedKey(d.vol), at, nil)
		}
	})
	n.mu.Unlock()
	<-g.done
	if g.err != nil {
		return g.err
	}
	for _, d := range todo {
		level := slog.LevelInfo
		if d.segs == 0 {
			// Every node holds every volume's epoch; most host no segment.
			level = slog.LevelDebug
		}
		n.log.Log(context.Background(), level, "dropped a deleted volume", "volume", d.vol, "segments", d.segs)
		for _, fam := range volumeFamilies {
			p := volPrefix(fam, d.vol)
			select {
			case n.compactions <- [2][]byte{p, prefixEnd(p)}:
			default:
				// The queue is full: Pebble compacts the ranges in time anyway.
			}
		}
	}
	return nil
}

// volumeDeleted refuses a request for a volume the node dropped. Called
// under Node.mu.
func (n *Node) volumeDeleted(vol uint64) error {
	if !n.deleted[vol] {
		return nil
	}
	return refuse(pb.Reason_VOLUME_DELETED, vol, 0, 0, "volume %d was deleted, and node %s dropped its segments; nothing was stored", vol, n.cfg.ID)
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
