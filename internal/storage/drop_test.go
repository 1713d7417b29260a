package storage

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
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
// the materializer has as many pages to build as records. inc is the
// incarnation its declarations carry.
type dropWriter struct {
	n    *Node
	vol  uint64
	inc  uint64
	pg   uint32
	last uint64
	rng  *rand.Rand
	// membership is the membership epoch its declarations carry (0: 1).
	membership uint64
}

// Small pages and large PGs: many materializer steps (materializeChunk
// pages each) for little data.
const (
	dropPageSize = 512
	dropPages    = 1 << 16
)

func (w *dropWriter) spec() *pb.SegmentSpec {
	return &pb.SegmentSpec{Volume: w.vol, Incarnation: w.inc, Pg: w.pg, PageSize: dropPageSize, PagesPerPg: dropPages, MembershipEpoch: max(w.membership, 1),
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

// ref is a volume incarnation, as heartbeats carry them.
func ref(vol, inc uint64) *pb.VolumeIncarnation {
	return &pb.VolumeIncarnation{VolumeId: vol, Incarnation: inc}
}

// hostedString prints HostedVolumes as "vol/inc ... | epoch-only ...".
func hostedString(n *Node) string {
	hosted, epochOnly := n.HostedVolumes()
	var b strings.Builder
	for _, h := range hosted {
		fmt.Fprintf(&b, "%d/%x ", h.VolumeId, h.Incarnation)
	}
	fmt.Fprintf(&b, "| %v", epochOnly)
	return b.String()
}

// stepDuringDrop makes the next materializer step of volume vol that has a
// batch to commit stop just before it commits, and returns a function
// that waits for that, then drops vols while the step is stopped, and lets
// the step go on only once the drop waits for it (DropVolumes' dropMu), or,
// were the drop not to wait, once the drop is done. So the step's batch,
// page versions of vol, commits before the drop's deletions, or after them.
func stepDuringDrop(t *testing.T, n *Node, vol uint64) func(vols ...*pb.VolumeIncarnation) {
	t.Helper()
	inStep, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hook := func(s *seg) {
		if s.key.vol == vol {
			once.Do(func() { close(inStep); <-release })
		}
	}
	n.hooks.materializeCommit.Store(&hook)
	var releaseOnce sync.Once
	letGo := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(letGo) // a test that fails early must not leave the step stopped
	return func(vols ...*pb.VolumeIncarnation) {
		t.Helper()
		wait.For(t, 20*time.Second, fmt.Sprintf("a materializer step of volume %d", vol), func() bool {
			select {
			case <-inStep:
				return true
			default:
				return false
			}
		})
		waits := make(chan struct{})
		var waitsOnce sync.Once
		dw := func() { waitsOnce.Do(func() { close(waits) }) }
		n.hooks.dropWaits.Store(&dw)
		done := make(chan error, 1)
		go func() { done <- n.DropVolumes(vols) }()
		var err error
		dropped := false
		select {
		case <-waits:
		case err = <-done:
			dropped = true
		case <-time.After(20 * time.Second):
			t.Fatal("DropVolumes neither waited for the materializer step nor returned")
		}
		letGo()
		if !dropped {
			err = <-done
		}
		// The step holds dropMu until it has committed (or given up).
		n.dropMu.Lock()
		n.dropMu.Unlock()
		n.hooks.materializeCommit.Store(nil)
		n.hooks.dropWaits.Store(nil)
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestDropVolumes: a node drops a deleted volume whole, while a writer keeps
// appending to it and a materializer step is stopped in the middle of
// writing page versions of it: nothing of the volume is left in the store
// (the step, which holds dropMu, commits before the deletions), its disk
// space comes back once compacted, the other volume is untouched, and that
// incarnation of the volume can never be hosted again, not after a restart
// either; reads, pulls and segment infos of it answer VOLUME_DELETED, until
// another incarnation of the id (another catalog's volume) is declared.
func TestDropVolumes(t *testing.T) {
	dir := t.TempDir()
	n, err := Open(Config{ID: "s1", AZ: "a", Dir: dir, MaterializeInterval: time.Millisecond, GossipInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { n.Close() }()
	// Armed before any record is written: the first step of volume 1 that
	// has page versions to write stops before it commits.
	dropDuringStep := stepDuringDrop(t, n, 1)
	rng := rand.New(rand.NewPCG(1, 2))
	const inc1, inc2, inc3 = 0xa1, 0xb2, 0xc3
	gone := []*dropWriter{{n: n, vol: 1, inc: inc1, pg: 0, rng: rng}, {n: n, vol: 1, inc: inc1, pg: 1, rng: rng}}
	kept := &dropWriter{n: n, vol: 2, inc: inc2, pg: 0, rng: rng}
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
	if got, want := hostedString(n), "1/a1 2/b2 | [3]"; got != want {
		t.Fatalf("HostedVolumes = %q, want %q (3 only by its epoch)", got, want)
	}

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
	// Volume 3's tombstone names its incarnation; the node held only its
	// epoch.
	dropDuringStep(ref(1, inc1), ref(3, inc3))
	wg.Wait()
	if storageReason(appendErr) != pb.Reason_VOLUME_DELETED {
		t.Fatalf("the writer's append after the drop: %v; want VOLUME_DELETED", appendErr)
	}
	if c := volumeKeyCount(t, n, 1); c != 0 {
		t.Fatalf("%d keys of volume 1 left after the drop (a materializer step wrote them back?)", c)
	}
	if c := volumeKeyCount(t, n, 3); c != 0 {
		t.Fatalf("%d keys of volume 3 left after the drop", c)
	}
	if s := n.segment(2, 0); s == nil || s.durableSCL.Load() != 1000 {
		t.Fatalf("volume 2 after the drop: %+v", s)
	}
	if got, want := hostedString(n), "2/b2 | []"; got != want {
		t.Fatalf("HostedVolumes after the drop = %q, want %q", got, want)
	}
	if n.segment(1, 0) != nil || n.segment(1, 1) != nil || n.segment(2, 0) == nil {
		t.Fatal("the drop left the wrong segments hosted")
	}
	// Neither a heartbeat's late epochs, a recovery's fence nor a new
	// declaration (of the dropped incarnation, or of none) brings it back.
	if err := n.ObserveEpochs(map[uint64]uint64{1: 9}); err != nil {
		t.Fatal(err)
	}
	if err := n.fence(1, 9); storageReason(err) != pb.Reason_VOLUME_DELETED {
		t.Fatalf("fence of a dropped volume: %v", err)
	}
	fresh := &dropWriter{n: n, vol: 1, inc: inc1, pg: 5, rng: rng}
	if err := fresh.append(1); storageReason(err) != pb.Reason_VOLUME_DELETED {
		t.Fatalf("a new declaration of a dropped volume: %v", err)
	}
	unsaid := &dropWriter{n: n, vol: 1, pg: 5, rng: rng}
	if err := unsaid.append(1); storageReason(err) != pb.Reason_VOLUME_DELETED {
		t.Fatalf("a declaration without an incarnation of a dropped volume: %v", err)
	}
	if got, want := hostedString(n), "2/b2 | []"; got != want {
		t.Fatalf("HostedVolumes after the refusals = %q, want %q", got, want)
	}
	checkDeletedReads(t, n, 1)
	// Dropping again is a no-op.
	if err := n.DropVolumes([]*pb.VolumeIncarnation{ref(1, inc1)}); err != nil {
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
	if got, want := hostedString(n), "2/b2 | []"; got != want {
		t.Fatalf("HostedVolumes after a restart = %q, want %q", got, want)
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
	checkDeletedReads(t, n, 1)

	// Another incarnation of id 1, another catalog's volume, is hosted as
	// any volume: reads of its PGs not hosted here are PG_NOT_HOSTED again.
	other := &dropWriter{n: n, vol: 1, inc: 0xd4, pg: 5, rng: rng}
	if err := other.append(1); err != nil {
		t.Fatalf("another incarnation of a dropped volume id: %v", err)
	}
	if got, want := hostedString(n), "1/d4 2/b2 | []"; got != want {
		t.Fatalf("HostedVolumes with another incarnation of volume 1 = %q, want %q", got, want)
	}
	if _, _, _, err := n.readPage(&pb.GetPageRequest{Volume: 1, Pg: 0, Page: 1, ReadLsn: 1}); storageReason(err) != pb.Reason_PG_NOT_HOSTED {
		t.Fatalf("a read of a PG that the new volume 1 has not here: %v, want PG_NOT_HOSTED", err)
	}
	if _, _, _, err := n.readPage(&pb.GetPageRequest{Volume: 1, Pg: 5, Page: 5*dropPages + 2, ReadLsn: 1}); err != nil {
		t.Fatalf("a read of the new volume 1: %v", err)
	}
}

// checkDeletedReads: every request for volume vol that names no
// incarnation (reads, pulls, segment infos, truncations) is refused with
// VOLUME_DELETED, not PG_NOT_HOSTED (which a reader takes for a PG never
// written, whose pages are zeros).
func checkDeletedReads(t *testing.T, n *Node, vol uint64) {
	t.Helper()
	ctx := context.Background()
	r := &rpcServer{n: n}
	if _, _, _, err := n.readPage(&pb.GetPageRequest{Volume: vol, Pg: 0, Page: 1, ReadLsn: 1}); storageReason(err) != pb.Reason_VOLUME_DELETED {
		t.Fatalf("GetPage of the dropped volume: %v, want VOLUME_DELETED", err)
	}
	if _, err := r.GetPage(ctx, &pb.GetPageRequest{Volume: vol, Pg: 0, Page: 1, ReadLsn: 1}); ReasonOf(err) != pb.Reason_VOLUME_DELETED {
		t.Fatalf("GetPage RPC of the dropped volume: %v, want VOLUME_DELETED", err)
	}
	if _, err := r.SegmentInfo(ctx, &pb.SegmentInfoRequest{Volume: vol, Pg: 0}); ReasonOf(err) != pb.Reason_VOLUME_DELETED {
		t.Fatalf("SegmentInfo of the dropped volume: %v, want VOLUME_DELETED", err)
	}
	if _, err := r.Pull(ctx, &pb.PullRequest{Volume: vol, Pg: 1, FromNode: "s2"}); ReasonOf(err) != pb.Reason_VOLUME_DELETED {
		t.Fatalf("Pull of the dropped volume: %v, want VOLUME_DELETED", err)
	}
	if _, err := r.Truncate(ctx, &pb.TruncateRequest{Volume: vol, Pg: 0, Epoch: 9, After: 1, Through: 2, Tail: 1}); ReasonOf(err) != pb.Reason_VOLUME_DELETED {
		t.Fatalf("Truncate of the dropped volume: %v, want VOLUME_DELETED", err)
	}
}
