package storage

import (
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/redo"
	"github.com/borealis-db/borealis/internal/wait"
)

// dropWriter appends random full-page images to one segment through ingest,
// as a writer's appends arrive: each record to a page of its own, so that
// the materializer has as many pages to build as records.
type dropWriter struct {
	n    *Node
	vol  uint64
	pg   uint32
	last uint64
	rng  *rand.Rand
}

// Small pages and large PGs: many materializer steps (materializeChunk
// pages each) for little data.
const (
	dropPageSize = 512
	dropPages    = 1 << 16
)

func (w *dropWriter) spec() *pb.SegmentSpec {
	return &pb.SegmentSpec{Volume: w.vol, Pg: w.pg, PageSize: dropPageSize, PagesPerPg: dropPages, MembershipEpoch: 1,
		Members: []*pb.Member{{NodeId: "s1", Az: "a", Addr: "127.0.0.1:1"}}}
}

// append writes k records (random, so that they do not compress away) in
// one request and waits until they are synced.
func (w *dropWriter) append(k int) error {
	raw := make([][]byte, k)
	prev := w.last
	for i := range raw {
		img := make([]byte, dropPageSize)
		for j := range img {
			img[j] = byte(w.rng.Uint32())
		}
		lsn := prev + 1
		page := uint64(w.pg)*dropPages + 1 + lsn%dropPages
		r := redo.Record{Volume: w.vol, PG: w.pg, Page: page, LSN: lsn, PrevLSN: prev, Epoch: 1, CPL: true, Kind: redo.KindImage, Image: img}
		raw[i] = r.Encode()
		prev = lsn
	}
	in := &incoming{volume: w.vol, epoch: 1, minReadPoint: w.last, vdl: w.last,
		declare: []*pb.SegmentSpec{w.spec()},
		batches: []incomingBatch{{pg: w.pg, raw: raw, retain: w.last}}}
	g, _, err := w.n.ingest(in)
	if err != nil {
		return err
	}
	if g != nil {
		<-g.done
		if g.err != nil {
			return g.err
		}
	}
	w.last = prev
	return nil
}

// volumeKeyCount counts the keys of volume vol in every family that holds
// its data or its epoch.
func volumeKeyCount(t *testing.T, n *Node, vol uint64) int {
	t.Helper()
	count := 0
	for _, fam := range append([]byte{famEpoch}, volumeFamilies...) {
		p := volPrefix(fam, vol)
		it, err := n.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
		if err != nil {
			t.Fatal(err)
		}
		for it.First(); it.Valid(); it.Next() {
			count++
		}
		if err := it.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return count
}

// TestDropVolumes: a node drops a deleted volume whole, while a writer keeps
// appending to it and the materializer works on it: nothing of the volume is
// left in the store (no step writes it back), its disk space comes back once
// compacted, the other volume is untouched, and the volume can never be
// hosted again, not after a restart either.
func TestDropVolumes(t *testing.T) {
	dir := t.TempDir()
	n, err := Open(Config{ID: "s1", AZ: "a", Dir: dir, MaterializeInterval: time.Millisecond, GossipInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { n.Close() }()
	rng := rand.New(rand.NewPCG(1, 2))
	gone := []*dropWriter{{n: n, vol: 1, pg: 0, rng: rng}, {n: n, vol: 1, pg: 1, rng: rng}}
	kept := &dropWriter{n: n, vol: 2, pg: 0, rng: rng}
	for range 20 {
		for _, w := range gone {
			if err := w.append(1000); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := kept.append(1000); err != nil {
		t.Fatal(err)
	}
	if err := n.ObserveEpochs(map[uint64]uint64{1: 1, 2: 1, 3: 1}); err != nil {
		t.Fatal(err)
	}
	if got := n.HostedVolumes(); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Fatalf("HostedVolumes = %v, want [1 2 3] (3 only by its epoch)", got)
	}
	// Dropped while the materializer is at work on it: 40 steps' worth of
	// pages in each of its PGs.
	wait.For(t, 20*time.Second, "volume 1 materializing", func() bool { return n.segment(1, 0).mat.Load() > 0 })

	// A writer keeps appending to volume 1 until it is refused.
	var wg sync.WaitGroup
	var appendErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		w := gone[0]
		for {
			if appendErr = w.append(10); appendErr != nil {
				return
			}
		}
	}()
	if err := n.DropVolumes([]uint64{1, 3}); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if storageReason(appendErr) != pb.Reason_VOLUME_DELETED {
		t.Fatalf("the writer's append after the drop: %v; want VOLUME_DELETED", appendErr)
	}
	if c := volumeKeyCount(t, n, 1); c != 0 {
		t.Fatalf("%d keys of volume 1 left after the drop", c)
	}
	if c := volumeKeyCount(t, n, 3); c != 0 {
		t.Fatalf("%d keys of volume 3 left after the drop", c)
	}
	if s := n.segment(2, 0); s == nil || s.durableSCL.Load() != 1000 {
		t.Fatalf("volume 2 after the drop: %+v", s)
	}
	if got := n.HostedVolumes(); !slices.Equal(got, []uint64{2}) {
		t.Fatalf("HostedVolumes after the drop = %v, want [2]", got)
	}
	if n.segment(1, 0) != nil || n.segment(1, 1) != nil || n.segment(2, 0) == nil {
		t.Fatal("the drop left the wrong segments hosted")
	}
	// Neither a heartbeat's late epochs, a recovery's fence nor a new
	// declaration brings it back.
	if err := n.ObserveEpochs(map[uint64]uint64{1: 9}); err != nil {
		t.Fatal(err)
	}
	if err := n.fence(1, 9); storageReason(err) != pb.Reason_VOLUME_DELETED {
		t.Fatalf("fence of a dropped volume: %v", err)
	}
	fresh := &dropWriter{n: n, vol: 1, pg: 5, rng: rng}
	if err := fresh.append(1); storageReason(err) != pb.Reason_VOLUME_DELETED {
		t.Fatalf("a new declaration of a dropped volume: %v", err)
	}
	if got := n.HostedVolumes(); !slices.Equal(got, []uint64{2}) {
		t.Fatalf("HostedVolumes after the refusals = %v, want [2]", got)
	}
	// Dropping again is a no-op.
	if err := n.DropVolumes([]uint64{1}); err != nil {
		t.Fatal(err)
	}

	if err := n.Compact(); err != nil {
		t.Fatal(err)
	}
	after := n.TableBytes()
	// Volume 1 had 40,000 records of 512 random bytes, volume 2 has 1,000.
	const written = 40_000 * dropPageSize
	t.Logf("table bytes after the drop and a compaction: %d (volume 1 had %d bytes of records)", after, written)
	if after > written/8 {
		t.Fatalf("table bytes %d after the drop: volume 1's %d bytes did not leave the disk", after, written)
	}

	// After a restart: the same, and volume 2 reads as written.
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	n, err = Open(Config{ID: "s1", AZ: "a", Dir: dir, GossipInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if got := n.HostedVolumes(); !slices.Equal(got, []uint64{2}) {
		t.Fatalf("HostedVolumes after a restart = %v, want [2]", got)
	}
	if c := volumeKeyCount(t, n, 1); c != 0 {
		t.Fatalf("%d keys of volume 1 after a restart", c)
	}
	if s := n.segment(2, 0); s == nil || s.durableSCL.Load() != 1000 {
		t.Fatalf("volume 2 after a restart: %+v", s)
	}
	fresh.n = n
	if err := fresh.append(1); storageReason(err) != pb.Reason_VOLUME_DELETED {
		t.Fatalf("a declaration of the dropped volume after a restart: %v", err)
	}
	kept.n = n
	if err := kept.append(1); err != nil {
		t.Fatalf("volume 2 after a restart: %v", err)
	}
	if _, _, _, err := n.readPage(&pb.GetPageRequest{Volume: 1, Pg: 0, Page: 1, ReadLsn: 1}); storageReason(err) != pb.Reason_PG_NOT_HOSTED {
		t.Fatalf("a read of the dropped volume: %v", err)
	}
}
