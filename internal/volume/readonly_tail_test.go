package volume

import (
	"bytes"
	"testing"
	"time"
)

// PGStates(at) for an at below the PG's trimmed LSNs must not fall back
// to the recovery tail (too low): a replica routing by it was served a
// stale page by a lagging segment.
func TestPGStatesNeverGiveAnOlderTail(t *testing.T) {
	cl := startCluster(t)
	a := cl.open(t, nil)
	ctx := ctxT(t, 30*time.Second)
	img0 := pageImage(1, 0)
	lsn, err := a.Commit(ctx, []PageWrite{{Page: 1, New: img0}})
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	// s5 misses everything the new writer writes.
	cl.stop(5)
	b := cl.open(t, func(cfg *Config) {
		cfg.Epoch = 2
		cfg.BaseLSN = lsn
		cfg.PGTails = map[uint32]uint64{0: lsn}
	})
	prev := img0
	var lsns []uint64
	for v := 1; v <= 3; v++ {
		nw := pageImage(1, v)
		l, err := b.Commit(ctx, []PageWrite{{Page: 1, Old: prev, New: nw}})
		if err != nil {
			t.Fatal(err)
		}
		lsns = append(lsns, l)
		prev = nw
	}
	// `from` captured when the VDL was lsns[0]; the writer's VDL (and so its
	// min_read_point, no replica floor yet) moved on and a Submit trimmed
	// the PG's LSNs before PGStates ran.
	from := lsns[0]
	st := b.PGStates(from)
	t.Logf("writer LSNs %v (recovery tail %d); PGStates(%d) = %+v", lsns, lsn, from, st)
	if st[0].Tail != from && st[0].Tail != 0 {
		t.Errorf("PGStates(%d) says PG 0's tail is %d; its real tail at %d is %d (0, unknown, would do)", from, st[0].Tail, from, from)
	}
	ro := cl.open(t, func(c *Config) { c.ReadOnly = true })
	ro.SetStreamEpoch(2)
	ro.NotePGStates(st)
	ro.SetVDL(from)
	// Only s5 answers (the others are down, as in an AZ+1 outage, or just
	// slower); it holds PG 0 only up to the recovery tail.
	for i := 0; i < 5; i++ {
		cl.stop(i)
	}
	cl.restart(5)
	got, err := ro.ReadPage(ctx, 1, from)
	if err != nil {
		t.Logf("read refused (what must happen): %v", err)
		return
	}
	if !bytes.Equal(got, pageImage(1, 1)) {
		if bytes.Equal(got, img0) {
			t.Fatalf("replica read page 1 at %d and got the image of LSN %d (before the write at %d): WRONG DATA", from, lsn, from)
		}
		t.Fatalf("replica read a wrong image of page 1 at %d", from)
	}
}
