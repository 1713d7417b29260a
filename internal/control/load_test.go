package control

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// recount is the load computed the slow way, from every PG of the catalog.
func recount(t testing.TB, c *Catalog) map[string]int {
	t.Helper()
	resp, err := c.cli.Get(context.Background(), c.pgsPrefix(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	pgs, err := decodeAll[PG](resp.Kvs)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, pg := range pgs {
		for _, s := range pg.hosts() {
			out[s.Node]++
		}
	}
	return out
}

func checkLoad(t testing.TB, c *Catalog, when string) {
	t.Helper()
	l, err := c.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := recount(t, c); !maps.Equal(l.Segments, want) {
		t.Fatalf("%s: the load record says %v, the PGs hold %v", when, l.Segments, want)
	}
}

func nineNodes(t *testing.T, c *Catalog) {
	addNodes(t, c, "s1", "a", "s2", "a", "s7", "a", "s3", "b", "s4", "b", "s8", "b", "s5", "c", "s6", "c", "s9", "c")
}

// TestLoadFollowsEveryChange creates, grows and deletes volumes, and checks
// after each step that the load record is what the PGs add up to, and that
// placement, which now reads only the record, still spreads the segments.
func TestLoadFollowsEveryChange(t *testing.T) {
	c := newCatalog(t)
	ctx := ctxT(t)
	nineNodes(t, c)
	checkLoad(t, c, "empty catalog")
	for _, name := range []string{"v1", "v2"} {
		if _, err := c.CreateVolume(ctx, name, 4096, 1<<20); err != nil {
			t.Fatal(err)
		}
		checkLoad(t, c, "created "+name)
	}
	for pg := uint32(1); pg < 8; pg++ {
		if _, err := c.AddPG(ctx, "v1", pg); err != nil {
			t.Fatal(err)
		}
		// Adding an existing PG again changes nothing.
		if _, err := c.AddPG(ctx, "v1", pg); err != nil {
			t.Fatal(err)
		}
	}
	checkLoad(t, c, "grew v1 to 8 PGs")
	l, err := c.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// 9 PGs of 6 segments over 9 nodes, least loaded first: 6 each.
	for _, id := range []string{"s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9"} {
		if l.Segments[id] != 6 {
			t.Fatalf("placement from the load record is uneven: %v", l.Segments)
		}
	}
	if _, _, err := c.DeleteVolume(ctx, "v1"); err != nil {
		t.Fatal(err)
	}
	checkLoad(t, c, "deleted v1")
	if _, _, err := c.DeleteVolume(ctx, "v2"); err != nil {
		t.Fatal(err)
	}
	checkLoad(t, c, "deleted v2")
	if l, _ := c.Load(ctx); len(l.Segments) != 0 {
		t.Fatalf("no volume is left, yet the load is %v", l.Segments)
	}
}

// TestLoadBuiltForAnOlderCatalog starts from PGs written without a load
// record, as a catalog from before it has them: the first placement builds
// the record from the PGs, and it is right from then on.
func TestLoadBuiltForAnOlderCatalog(t *testing.T) {
	c := newCatalog(t)
	ctx := ctxT(t)
	nineNodes(t, c)
	if _, err := c.CreateVolume(ctx, "old", 4096, 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddPG(ctx, "old", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := c.cli.Delete(ctx, c.loadKey()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddPG(ctx, "old", 2); err != nil {
		t.Fatal(err)
	}
	checkLoad(t, c, "built on AddPG")
	if _, err := c.cli.Delete(ctx, c.loadKey()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.DeleteVolume(ctx, "old"); err != nil {
		t.Fatal(err)
	}
	checkLoad(t, c, "built on DeleteVolume")
}

// TestLoadUnderRacingPlacements grows several volumes at once from separate
// catalog clients, and creates and deletes others meanwhile: every update of
// the one load record is guarded, so the count stays exact.
func TestLoadUnderRacingPlacements(t *testing.T) {
	c := newCatalog(t)
	ctx := ctxT(t)
	nineNodes(t, c)
	const vols = 4
	for i := range vols {
		if _, err := c.CreateVolume(ctx, fmt.Sprintf("g%d", i), 4096, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for i := range vols {
		cc, err := Open(ctx, testURLs, c.Prefix())
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		wg.Go(func() {
			for pg := uint32(1); pg <= 5; pg++ {
				if _, err := cc.AddPG(ctx, fmt.Sprintf("g%d", i), pg); err != nil {
					t.Error(err)
					return
				}
			}
		})
		wg.Go(func() {
			name := fmt.Sprintf("t%d", i)
			for range 3 {
				if _, err := cc.CreateVolume(ctx, name, 4096, 1<<20); err != nil {
					t.Error(err)
					return
				}
				if _, _, err := cc.DeleteVolume(ctx, name); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	checkLoad(t, c, "after the races")
}

// bulkPGs writes n catalog-only PGs into volume name (PGs 1..n-1 after the
// PG 0 that CreateVolume placed) with their load, as a volume grown to n PGs
// would have, without running n placements.
func bulkPGs(t testing.TB, c *Catalog, name string, n int) {
	t.Helper()
	ctx := context.Background()
	vol, err := c.Volume(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	first, err := c.PG(ctx, vol.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	l, err := c.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const perTxn = 100 // etcd takes at most 128 operations a transaction
	for start := 1; start < n; start += perTxn {
		var ops []clientv3.Op
		for pg := start; pg < min(start+perTxn, n); pg++ {
			rec := first
			rec.PG = uint32(pg)
			ops = append(ops, clientv3.OpPut(c.pgKey(vol.ID, uint32(pg)), encode(rec)))
			l = l.with(rec.Segments, 1)
		}
		if _, err := c.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	vol.PGs = uint32(n)
	if _, err := c.cli.Txn(ctx).Then(clientv3.OpPut(c.volKey(name), encode(vol)), clientv3.OpPut(c.loadKey(), encode(l))).Commit(); err != nil {
		t.Fatal(err)
	}
}

// hugePGs is a 128 TiB volume's PG count at 10 GiB per PG.
const hugePGs = 13108

// TestPlacementAtFullVolumeSize places new PGs and a new volume beside a
// volume of 13,108 PGs, with the load record counting all of them, and
// checks the result against a recount of every PG.
func TestPlacementAtFullVolumeSize(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 13,108 PG records")
	}
	c := newCatalog(t)
	ctx := ctxT(t)
	nineNodes(t, c)
	if _, err := c.CreateVolume(ctx, "huge", 4096, 1<<20); err != nil {
		t.Fatal(err)
	}
	bulkPGs(t, c, "huge", hugePGs)
	checkLoad(t, c, "13,108 PGs written")
	for pg := uint32(hugePGs); pg < hugePGs+3; pg++ {
		if _, err := c.AddPG(ctx, "huge", pg); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.CreateVolume(ctx, "beside", 4096, 1<<20); err != nil {
		t.Fatal(err)
	}
	checkLoad(t, c, "placed beside 13,108 PGs")
}

// BenchmarkAddPG times one growth step of a volume of 10 PGs and of one of
// 13,108: with the load record, placement reads the same few keys at both.
func BenchmarkAddPG(b *testing.B) {
	for _, size := range []int{10, hugePGs} {
		b.Run(fmt.Sprintf("pgs=%d", size), func(b *testing.B) {
			prefix := fmt.Sprintf("/bench/%s/%d/", b.Name(), prefixSeq.Add(1))
			c, err := Open(context.Background(), testURLs, prefix)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			ctx := context.Background()
			for i, az := range []string{"a", "a", "a", "b", "b", "b", "c", "c", "c"} {
				id := fmt.Sprintf("s%d", i+1)
				if err := c.RegisterNode(ctx, Node{ID: id, AZ: az, Addr: "127.0.0.1:7" + id}); err != nil {
					b.Fatal(err)
				}
				if err := c.Heartbeat(ctx, id, 60e9); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := c.CreateVolume(ctx, "v", 4096, 1<<20); err != nil {
				b.Fatal(err)
			}
			bulkPGs(b, c, "v", size)
			b.ResetTimer()
			for i := range b.N {
				if _, err := c.AddPG(ctx, "v", uint32(size+i)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
