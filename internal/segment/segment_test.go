package segment

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// chain builds entries for LSNs in order, each linking to the previous one.
func chainOf(epoch uint64, prev uint64, lsns ...uint64) []Entry {
	out := make([]Entry, len(lsns))
	for i, l := range lsns {
		out[i] = Entry{LSN: l, PrevLSN: prev, Epoch: epoch}
		prev = l
	}
	return out
}

func offer(t *testing.T, c *Chain, e Entry, want Verdict) {
	t.Helper()
	if got := c.Offer(e); got != want {
		t.Fatalf("Offer(%+v) = %v, want %v", e, got, want)
	}
}

func TestInOrder(t *testing.T) {
	c := New(State{})
	for _, e := range chainOf(1, 0, 3, 5, 9) {
		offer(t, c, e, Accepted)
		if c.SCL() != e.LSN || c.Highest() != e.LSN || len(c.Holes()) != 0 {
			t.Fatalf("after %d: SCL=%d Highest=%d Holes=%v", e.LSN, c.SCL(), c.Highest(), c.Holes())
		}
	}
	if c.Epoch() != 1 {
		t.Fatalf("epoch %d", c.Epoch())
	}
}

func TestOutOfOrderAndHoles(t *testing.T) {
	es := chainOf(1, 0, 2, 4, 6, 8, 10, 12)
	c := New(State{})
	offer(t, c, es[5], Accepted) // 12
	offer(t, c, es[2], Accepted) // 6
	offer(t, c, es[3], Accepted) // 8
	if c.SCL() != 0 || c.Highest() != 12 {
		t.Fatalf("SCL=%d Highest=%d", c.SCL(), c.Highest())
	}
	// 6 lacks 4 (and 2): gap above SCL. 8 links to 6. 12 lacks 10.
	want := []Gap{{0, 6}, {8, 12}}
	if got := c.Holes(); !slices.Equal(got, want) {
		t.Fatalf("Holes = %v, want %v", got, want)
	}
	offer(t, c, es[0], Accepted) // 2
	if c.SCL() != 2 {
		t.Fatalf("SCL=%d, want 2", c.SCL())
	}
	if got, want := c.Holes(), []Gap{{2, 6}, {8, 12}}; !slices.Equal(got, want) {
		t.Fatalf("Holes = %v, want %v", got, want)
	}
	offer(t, c, es[1], Accepted) // 4: chain now reaches 8
	if c.SCL() != 8 {
		t.Fatalf("SCL=%d, want 8", c.SCL())
	}
	if got, want := c.Holes(), []Gap{{8, 12}}; !slices.Equal(got, want) {
		t.Fatalf("Holes = %v, want %v", got, want)
	}
	offer(t, c, es[4], Accepted) // 10
	if c.SCL() != 12 || c.Holes() != nil || c.HeldAbove() != 0 {
		t.Fatalf("SCL=%d Holes=%v held=%d", c.SCL(), c.Holes(), c.HeldAbove())
	}
}

func TestDuplicatesAndInvalid(t *testing.T) {
	es := chainOf(1, 0, 1, 2, 3, 5)
	c := New(State{})
	offer(t, c, es[0], Accepted)
	offer(t, c, es[0], Duplicate) // at or below SCL
	offer(t, c, es[3], Accepted)
	offer(t, c, es[3], Duplicate) // held above SCL
	offer(t, c, Entry{LSN: 0, Epoch: 1}, Invalid)
	offer(t, c, Entry{LSN: 7, PrevLSN: 7, Epoch: 1}, Invalid)
	offer(t, c, Entry{LSN: 7, PrevLSN: 9, Epoch: 1}, Invalid)
	// Backlink below SCL while LSN is above it: the chain cannot skip SCL.
	offer(t, c, Entry{LSN: 8, PrevLSN: 0, Epoch: 1}, Invalid)
	// Another record claiming 3 as predecessor while 5 already does.
	offer(t, c, Entry{LSN: 4, PrevLSN: 3, Epoch: 1}, Invalid)
	offer(t, c, es[1], Accepted)
	offer(t, c, es[2], Accepted)
	if c.SCL() != 5 {
		t.Fatalf("SCL=%d", c.SCL())
	}
}

func TestEpochs(t *testing.T) {
	c := New(State{})
	offer(t, c, Entry{LSN: 1, Epoch: 2}, Accepted)
	if c.Epoch() != 2 {
		t.Fatalf("epoch %d", c.Epoch())
	}
	offer(t, c, Entry{LSN: 2, PrevLSN: 1, Epoch: 1}, StaleEpoch)
	if c.ObserveEpoch(1) {
		t.Fatal("older epoch observed")
	}
	if !c.ObserveEpoch(3) || c.Epoch() != 3 {
		t.Fatal("newer epoch not observed")
	}
	offer(t, c, Entry{LSN: 2, PrevLSN: 1, Epoch: 2}, StaleEpoch)
	offer(t, c, Entry{LSN: 2, PrevLSN: 1, Epoch: 3}, Accepted)
	offer(t, c, Entry{LSN: 2, PrevLSN: 1, Epoch: 1}, Duplicate)
}

func TestTruncation(t *testing.T) {
	// Old writer (epoch 1) wrote 10..60 step 10. The segment holds 10..40
	// completely and 60 above a hole at 50. Recovery found VDL 30, LAL 40:
	// drop (30, 70] for epochs < 2; this PG's last record <= 30 is 30.
	c := New(State{})
	old := chainOf(1, 0, 10, 20, 30, 40, 50, 60)
	for i, e := range old {
		if i != 4 {
			offer(t, c, e, Accepted)
		}
	}
	if c.SCL() != 40 || c.Highest() != 60 {
		t.Fatalf("SCL=%d Highest=%d", c.SCL(), c.Highest())
	}
	tr := Truncation{After: 30, Through: 70, Epoch: 2, Tail: 30}
	drop := c.Truncate(tr)
	if !slices.Equal(drop, []uint64{60}) {
		t.Fatalf("drop = %v", drop)
	}
	if c.SCL() != 30 || c.Highest() != 30 || c.Epoch() != 2 || c.Holes() != nil {
		t.Fatalf("SCL=%d Highest=%d epoch=%d holes=%v", c.SCL(), c.Highest(), c.Epoch(), c.Holes())
	}
	// The old writer's records in the range are refused; above the range
	// it could never have allocated.
	offer(t, c, old[4], Truncated)
	offer(t, c, old[3], Truncated)
	offer(t, c, Entry{LSN: 80, PrevLSN: 60, Epoch: 1}, StaleEpoch)
	// The new writer continues the chain from Tail above the range.
	offer(t, c, Entry{LSN: 75, PrevLSN: 30, Epoch: 2}, Accepted)
	offer(t, c, Entry{LSN: 76, PrevLSN: 75, Epoch: 2}, Accepted)
	if c.SCL() != 76 {
		t.Fatalf("SCL=%d, want 76", c.SCL())
	}
	// Re-applying the truncation (recovery restarted) is harmless.
	if drop := c.Truncate(tr); drop != nil || c.SCL() != 76 {
		t.Fatalf("second truncate: drop=%v SCL=%d", drop, c.SCL())
	}
	st := c.State()
	if st.SCL != 76 || st.Epoch != 2 || len(st.Truncations) != 1 {
		t.Fatalf("State = %+v", st)
	}
}

// A segment that lagged behind the old writer catches up after recovery by
// gossip: old-epoch records at or below After are vouched for by the
// truncation and accepted although the chain's epoch is newer.
func TestGossipAfterTruncation(t *testing.T) {
	c := New(State{})
	old := chainOf(1, 0, 10, 20, 30, 40)
	offer(t, c, old[0], Accepted)
	c.Truncate(Truncation{After: 30, Through: 70, Epoch: 2, Tail: 30})
	if c.SCL() != 10 {
		t.Fatalf("SCL=%d; below After it must stay", c.SCL())
	}
	offer(t, c, Entry{LSN: 75, PrevLSN: 30, Epoch: 2}, Accepted)
	if got, want := c.Holes(), []Gap{{10, 75}}; !slices.Equal(got, want) {
		t.Fatalf("Holes = %v, want %v", got, want)
	}
	offer(t, c, old[3], Truncated)
	offer(t, c, old[2], Accepted)
	offer(t, c, old[1], Accepted)
	if c.SCL() != 75 {
		t.Fatalf("SCL=%d, want 75", c.SCL())
	}
}

// A chain restored from State knows its truncations.
func TestRestore(t *testing.T) {
	tr := Truncation{After: 5, Through: 9, Epoch: 2, Tail: 4}
	c := New(State{SCL: 4, Epoch: 2, Truncations: []Truncation{tr}})
	offer(t, c, Entry{LSN: 7, PrevLSN: 4, Epoch: 1}, Truncated)
	offer(t, c, Entry{LSN: 3, PrevLSN: 1, Epoch: 1}, Duplicate)
	offer(t, c, Entry{LSN: 12, PrevLSN: 11, Epoch: 2}, Accepted)
	if got, want := c.Holes(), []Gap{{4, 12}}; !slices.Equal(got, want) {
		t.Fatalf("Holes = %v, want %v", got, want)
	}
	offer(t, c, Entry{LSN: 11, PrevLSN: 4, Epoch: 2}, Accepted)
	if c.SCL() != 12 {
		t.Fatalf("SCL=%d", c.SCL())
	}
}

// Without a truncation for the newer epoch, older records cannot be told
// apart from a fenced writer's and are refused until it arrives.
func TestStaleWithoutTruncation(t *testing.T) {
	c := New(State{})
	c.ObserveEpoch(2)
	offer(t, c, Entry{LSN: 1, Epoch: 1}, StaleEpoch)
	c.Truncate(Truncation{After: 1, Through: 10, Epoch: 2, Tail: 1})
	offer(t, c, Entry{LSN: 1, Epoch: 1}, Accepted)
}

func TestVerdictString(t *testing.T) {
	for v, s := range map[Verdict]string{Accepted: "Accepted", Duplicate: "Duplicate", StaleEpoch: "StaleEpoch", Truncated: "Truncated", Invalid: "Invalid", 9: "Verdict(9)"} {
		if v.String() != s {
			t.Errorf("%d: %q", int(v), v.String())
		}
	}
}

func BenchmarkOfferReordered(b *testing.B) {
	c := New(State{})
	var prev, lsn uint64
	buf := make([]Entry, 0, 8)
	for b.Loop() {
		lsn++
		buf = append(buf, Entry{LSN: lsn, PrevLSN: prev, Epoch: 1})
		prev = lsn
		if len(buf) == cap(buf) {
			for i := len(buf) - 1; i >= 0; i-- {
				c.Offer(buf[i])
			}
			buf = buf[:0]
		}
	}
}

// TestCheckPredictsOffer checks, on random chains and random requests, that
// Check reports exactly the first entry Offer would refuse, and changes
// nothing.
func TestCheckPredictsOffer(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 2000; round++ {
		// The same prefix goes to both chains.
		a, b := New(State{Epoch: 2}), New(State{Epoch: 2})
		var prefix []Entry
		for lsn := uint64(1); lsn <= 30; lsn++ {
			if rng.IntN(3) == 0 {
				continue
			}
			prefix = append(prefix, Entry{LSN: lsn, PrevLSN: lsn - 1, Epoch: 2})
		}
		for _, e := range prefix {
			a.Offer(e)
			b.Offer(e)
		}
		var req []Entry
		for k := 0; k < 1+rng.IntN(6); k++ {
			lsn := uint64(1 + rng.IntN(40))
			prev := uint64(rng.IntN(int(lsn)))
			req = append(req, Entry{LSN: lsn, PrevLSN: prev, Epoch: uint64(1 + rng.IntN(3))})
		}
		before := a.State()
		idx, verdict := a.Check(req)
		if a.State().SCL != before.SCL || a.Highest() != b.Highest() {
			t.Fatalf("round %d: Check changed the chain", round)
		}
		wantIdx, want := -1, Accepted
		for i, e := range req {
			if v := b.Offer(e); v != Accepted && v != Duplicate {
				wantIdx, want = i, v
				break
			}
		}
		if idx != wantIdx || verdict != want {
			t.Fatalf("round %d: Check(%v) = %d %v; offering gives %d %v", round, req, idx, verdict, wantIdx, want)
		}
	}
}

// A truncation older than one already applied drops its range but keeps
// SCL: the newer recovery's writer has carried the chain past it.
func TestOlderTruncationKeepsSCL(t *testing.T) {
	c := New(State{})
	for _, e := range chainOf(1, 0, 10, 20) {
		offer(t, c, e, Accepted)
	}
	c.Truncate(Truncation{After: 20, Through: 60, Epoch: 3, Tail: 20})
	offer(t, c, Entry{LSN: 30, PrevLSN: 20, Epoch: 3}, Accepted)
	offer(t, c, Entry{LSN: 50, PrevLSN: 30, Epoch: 3}, Accepted)
	// An interrupted recovery of epoch 2 had chosen (25, 70].
	old := Truncation{After: 25, Through: 70, Epoch: 2, Tail: 20}
	if drop := c.Truncate(old); drop != nil || c.SCL() != 50 || c.Epoch() != 3 {
		t.Fatalf("older truncation: drop=%v SCL=%d epoch=%d", drop, c.SCL(), c.Epoch())
	}
	offer(t, c, Entry{LSN: 40, PrevLSN: 20, Epoch: 1}, Truncated)
	if got, ok := c.TruncationFor(2); !ok || got != old {
		t.Fatalf("TruncationFor(2) = %v, %v", got, ok)
	}
	if _, ok := c.TruncationFor(4); ok {
		t.Fatal("TruncationFor(4) found one")
	}
}
