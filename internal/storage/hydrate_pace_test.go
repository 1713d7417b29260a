package storage

import (
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/wait"
)

func TestHydrationRoom(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		free, reserve, n uint64
		want             bool
	}{
		{1000 * mib, 64 * mib, mib, true},
		{129 * mib, 64 * mib, mib, true},
		{128 * mib, 64 * mib, mib, false}, // the chunk would eat into twice the reserve
		{100 * mib, 64 * mib, mib, false}, // below twice the reserve already
		{10 * mib, 64 * mib, 0, false},
	} {
		if got := hydrationRoom(tc.free, tc.reserve, tc.n); got != tc.want {
			t.Errorf("hydrationRoom(%d, %d, %d) = %v, want %v", tc.free, tc.reserve, tc.n, got, tc.want)
		}
	}
}

// A node whose disk has less free space than twice its append reserve
// stores no page of a hydration: the copy waits for room rather than take
// the space the PGs it serves need.
func TestHydrationWaitsForDiskRoom(t *testing.T) {
	smallChunks(t)
	a := newHydNode(t, "s1")
	w := &hydWriter{t: t}
	old := hydSpec(1, []*pb.Member{a.member()})
	for range 3 {
		w.write(old, 40, a)
	}
	waitCollectedTo(t, a, w.last)
	// A reserve larger than the disk: the disk is as good as full.
	b := newTunedHydNode(t, "s2", func(cfg *Config) { cfg.MinFreeBytes = 1 << 60 })
	change := hydSpec(2, []*pb.Member{a.member()}, []*pb.Member{a.member(), b.member()})
	declare(t, a, change)
	joining := cloneSpec(change)
	joining.Hydrate = true
	declare(t, b, joining)
	wait.For(t, 10*time.Second, "s2's hydration to wait for disk room", func() bool { return b.n.stats.hydrateDiskWaits.Load() >= 2 })
	d := declare(t, b, joining)
	if !d.Hydrating || d.BytesCopied != 0 {
		t.Fatalf("s2 with a full disk: hydrating %v, %d bytes copied; want a hydration that stored nothing", d.Hydrating, d.BytesCopied)
	}
	if keys := segKeyCount(t, b.n, 1, 0); keys > 2 {
		t.Fatalf("s2 with a full disk holds %d keys of the PG", keys)
	}
}

func TestHydrationPace(t *testing.T) {
	for _, tc := range []struct {
		copied, total uint64
		elapsed       time.Duration
		rate          float64
		eta           time.Duration
		ok            bool
	}{
		{0, 100, time.Second, 0, 0, false},
		{10, 0, time.Second, 0, 0, false},
		{10, 100, 0, 0, 0, false},
		{25 << 20, 100 << 20, 5 * time.Second, 5 << 20, 15 * time.Second, true},
		{100, 100, time.Second, 100, 0, true},
	} {
		rate, eta, ok := HydrationPace(tc.copied, tc.total, tc.elapsed)
		if ok != tc.ok || rate != tc.rate || eta != tc.eta {
			t.Errorf("HydrationPace(%d, %d, %s) = %v, %s, %v; want %v, %s, %v", tc.copied, tc.total, tc.elapsed, rate, eta, ok, tc.rate, tc.eta, tc.ok)
		}
	}
}
