package storage

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/wait"
)

// TestDropOnlyItsIncarnation: a tombstone drops the segments of its own
// nonzero incarnation and nothing else: not a segment of the same volume id
// under another incarnation (another catalog's volume), not one declared
// without an incarnation (before incarnations). A node refuses to host a
// second incarnation of an id beside the one it holds (BAD_DECLARATION),
// keeps a segment's incarnation whatever later declarations say, and
// remembers it across a restart.
func TestDropOnlyItsIncarnation(t *testing.T) {
	dir := t.TempDir()
	n, err := Open(Config{ID: "s1", AZ: "a", Dir: dir, GossipInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { n.Close() }()
	rng := rand.New(rand.NewPCG(3, 4))
	a := &dropWriter{n: n, vol: 1, inc: 0xa, rng: rng}
	legacy := &dropWriter{n: n, vol: 2, rng: rng} // declared before incarnations
	c := &dropWriter{n: n, vol: 3, inc: 0xc, rng: rng}
	for _, w := range []*dropWriter{a, legacy, c} {
		if err := w.append(100); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := hostedString(n), "1/a 2/0 3/c | []"; got != want {
		t.Fatalf("HostedVolumes = %q, want %q", got, want)
	}
	keys1, keys2 := volumeKeyCount(t, n, 1), volumeKeyCount(t, n, 2)

	// Tombstones of volumes 1 and 2 from another catalog (other
	// incarnations), one without an incarnation, and volume 3's own.
	if err := n.DropVolumes([]*pb.VolumeIncarnation{ref(1, 0xb), ref(2, 0), ref(2, 0xe), ref(3, 0xc)}); err != nil {
		t.Fatal(err)
	}
	if got, want := hostedString(n), "1/a 2/0 | []"; got != want {
		t.Fatalf("HostedVolumes after the drop = %q, want %q (only 3/c dropped)", got, want)
	}
	if k := volumeKeyCount(t, n, 1); k != keys1 {
		t.Fatalf("volume 1 has %d keys after a tombstone of another incarnation, had %d", k, keys1)
	}
	if k := volumeKeyCount(t, n, 2); k != keys2 {
		t.Fatalf("volume 2 (no incarnation) has %d keys after tombstones, had %d", k, keys2)
	}
	if k := volumeKeyCount(t, n, 3); k != 0 {
		t.Fatalf("volume 3 has %d keys after its tombstone", k)
	}
	for _, w := range []*dropWriter{a, legacy} {
		if err := w.append(1); err != nil {
			t.Fatalf("volume %d after the drop: %v", w.vol, err)
		}
	}

	// Another incarnation of volume 1 is refused, on its PGs and others.
	for _, pg := range []uint32{0, 7} {
		intruder := &dropWriter{n: n, vol: 1, inc: 0xb, pg: pg, last: a.last, rng: rng}
		if err := intruder.append(1); storageReason(err) != pb.Reason_BAD_DECLARATION {
			t.Fatalf("a declaration of PG %d of volume 1 under another incarnation: %v, want BAD_DECLARATION", pg, err)
		}
	}
	// A declaration without an incarnation (a recovery's, say) is taken,
	// and changes no segment's: nor does a newer membership without one.
	a.inc = 0
	if err := a.append(1); err != nil {
		t.Fatalf("volume 1 declared without an incarnation: %v", err)
	}
	spec := a.spec()
	spec.MembershipEpoch = 2
	if _, _, err := n.ingest(&incoming{volume: 1, epoch: 1, declare: []*pb.SegmentSpec{spec}}); err != nil {
		t.Fatal(err)
	}
	if s := n.segment(1, 0); s.spec.GetIncarnation() != 0xa || s.spec.GetMembershipEpoch() != 2 {
		t.Fatalf("volume 1 PG 0 after a new membership without an incarnation: %v", s.spec)
	}
	// An older membership than the one held is refused from now on.
	a.inc = 0xa
	if err := a.append(1); storageReason(err) != pb.Reason_STALE_MEMBERSHIP {
		t.Fatalf("a declaration of membership epoch 1 after epoch 2: %v, want STALE_MEMBERSHIP", err)
	}
	a.membership = 2

	// The segment of no incarnation takes no incarnation from a
	// declaration; a new PG of volume 2 is hosted under the one it has,
	// and a tombstone of it drops that PG alone.
	legacy.inc = 0xf
	if err := legacy.append(1); err != nil {
		t.Fatal(err)
	}
	if s := n.segment(2, 0); s.spec.GetIncarnation() != 0 {
		t.Fatalf("volume 2 PG 0, declared before incarnations, took incarnation %x", s.spec.GetIncarnation())
	}
	pg1 := &dropWriter{n: n, vol: 2, inc: 0xf, pg: 1, rng: rng}
	if err := pg1.append(10); err != nil {
		t.Fatal(err)
	}
	if got, want := hostedString(n), "1/a 2/0 2/f | []"; got != want {
		t.Fatalf("HostedVolumes = %q, want %q", got, want)
	}
	// The materializer folds and collects records in the background: count
	// once volume 2's keys have stopped changing.
	var keysPG1 int
	keys2 = -1
	wait.For(t, 10*time.Second, "volume 2's keys to stop changing", func() bool {
		before := keys2
		keys2, keysPG1 = volumeKeyCount(t, n, 2), segKeyCount(t, n, 2, 1)
		return keys2 == before
	})
	if err := n.DropVolumes([]*pb.VolumeIncarnation{ref(2, 0xf)}); err != nil {
		t.Fatal(err)
	}
	if got, want := hostedString(n), "1/a 2/0 | []"; got != want {
		t.Fatalf("HostedVolumes after dropping 2/f = %q, want %q", got, want)
	}
	// PG 1's keys went; PG 0's and the epoch stayed.
	if k := segKeyCount(t, n, 2, 1); k != 0 || keysPG1 < 20 {
		t.Fatalf("volume 2 PG 1 has %d keys after its drop (%d before)", k, keysPG1)
	}
	if k := volumeKeyCount(t, n, 2); k != keys2-keysPG1 {
		t.Fatalf("volume 2 has %d keys after dropping its PG 1, want %d", k, keys2-keysPG1)
	}
	// That incarnation is refused from now on; PG 0 is still written to.
	if err := legacy.append(1); storageReason(err) != pb.Reason_VOLUME_DELETED {
		t.Fatalf("a declaration of the dropped incarnation of volume 2: %v, want VOLUME_DELETED", err)
	}
	legacy.inc = 0
	if err := legacy.append(1); err != nil {
		t.Fatalf("volume 2 PG 0 after the drop of PG 1's incarnation: %v", err)
	}

	// After a restart, the node knows each segment's incarnation.
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	n, err = Open(Config{ID: "s1", AZ: "a", Dir: dir, GossipInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := hostedString(n), "1/a 2/0 | []"; got != want {
		t.Fatalf("HostedVolumes after a restart = %q, want %q", got, want)
	}
	intruder := &dropWriter{n: n, vol: 1, inc: 0xb, pg: 7, rng: rng}
	if err := intruder.append(1); storageReason(err) != pb.Reason_BAD_DECLARATION {
		t.Fatalf("another incarnation of volume 1 after a restart: %v, want BAD_DECLARATION", err)
	}
	a.n = n
	if err := a.append(1); err != nil {
		t.Fatalf("volume 1 after a restart: %v", err)
	}
}

// segKeyCount counts the keys of one segment in every family that holds it.
func segKeyCount(t *testing.T, n *Node, vol uint64, pg uint32) int {
	t.Helper()
	count := 0
	for _, fam := range volumeFamilies {
		p := segPrefix(fam, vol, pg)
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
