package quorum

import (
	"slices"
	"strings"
	"testing"
)

func ids(s string) []SegmentID {
	out := make([]SegmentID, len(s))
	for i, r := range s {
		out[i] = SegmentID(string(r))
	}
	return out
}

func hasSet(s string) func(SegmentID) bool {
	return func(id SegmentID) bool { return strings.Contains(s, string(id)) }
}

func single(members string) Config { return Config{Epoch: 1, Sets: []Set{Default(ids(members))}} }

func dual(a, b string) Config {
	return Config{Epoch: 2, Sets: []Set{Default(ids(a)), Default(ids(b))}}
}

func TestDefault(t *testing.T) {
	for _, tc := range []struct{ n, w, r int }{
		{1, 1, 1}, {2, 2, 1}, {3, 2, 2}, {4, 3, 2}, {5, 3, 3}, {6, 4, 3}, {7, 4, 4},
	} {
		s := Default(ids("ABCDEFG"[:tc.n]))
		if s.Write != tc.w || s.Read != tc.r {
			t.Errorf("n=%d: got w%d r%d, want w%d r%d", tc.n, s.Write, s.Read, tc.w, tc.r)
		}
		if err := s.Validate(); err != nil {
			t.Errorf("n=%d: %v", tc.n, err)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Config
		ok   bool
	}{
		{"default", single("ABCDEF"), true},
		{"dual", dual("ABCDEF", "ABCDEG"), true},
		{"no sets", Config{}, false},
		{"empty set", Config{Sets: []Set{{}}}, false},
		{"duplicate", Config{Sets: []Set{{Members: ids("ABCDEA"), Write: 4, Read: 3}}}, false},
		{"no intersection", Config{Sets: []Set{{Members: ids("ABCDEF"), Write: 4, Read: 2}}}, false},
		{"write halves", Config{Sets: []Set{{Members: ids("ABCDEF"), Write: 3, Read: 4}}}, false},
		{"write zero", Config{Sets: []Set{{Members: ids("ABCDEF"), Write: 0, Read: 6}}}, false},
		{"read too big", Config{Sets: []Set{{Members: ids("ABCDEF"), Write: 4, Read: 7}}}, false},
		{"second set bad", Config{Sets: []Set{Default(ids("ABCDEF")), {Members: ids("ABC"), Write: 1, Read: 3}}}, false},
	} {
		err := tc.c.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestQuorums(t *testing.T) {
	d := dual("ABCDEF", "ABCDEG")
	for _, tc := range []struct {
		name        string
		c           Config
		has         string
		write, read bool
	}{
		{"4 of 6", single("ABCDEF"), "ABCD", true, true},
		{"3 of 6", single("ABCDEF"), "ABC", false, true},
		{"2 of 6", single("ABCDEF"), "EF", false, false},
		{"non-members do not count", single("ABCDEF"), "ABCXYZ", false, true},
		{"dual: 4 in both", d, "ABCD", true, true},
		// ABCF is 4 of ABCDEF but only 3 of ABCDEG.
		{"dual: write quorum in first set only", d, "ABCF", false, true},
		{"dual: write quorum in second set only", d, "ABCG", false, true},
		{"dual: FG plus 3", d, "ABFG", false, true},
		{"dual: DEFG is 3 and 3", d, "DEFG", false, true},
		{"dual: read quorum in first only", d, "AEF", false, true},
		{"dual: read quorum in second only", d, "AEG", false, true},
		{"dual: read quorum in neither", d, "FG", false, false},
		{"dual: 4 in both with F and G", d, "ABCFG", true, true},
		{"dual: 4 in both plus", d, "ABCDFG", true, true},
	} {
		if got := tc.c.WriteQuorum(hasSet(tc.has)); got != tc.write {
			t.Errorf("%s: WriteQuorum(%s) = %v", tc.name, tc.has, got)
		}
		if got := tc.c.ReadQuorum(hasSet(tc.has)); got != tc.read {
			t.Errorf("%s: ReadQuorum(%s) = %v", tc.name, tc.has, got)
		}
	}
}

func TestMembers(t *testing.T) {
	got := dual("ABCDEF", "ABCDEG").Members()
	if want := ids("ABCDEFG"); !equal(got, want) {
		t.Fatalf("Members() = %v, want %v", got, want)
	}
	if s := dual("ABCDEF", "ABCDEG").String(); s != "e2{A B C D E F w4 r3, A B C D E G w4 r3}" {
		t.Fatalf("String() = %q", s)
	}
}

func equal(a, b []SegmentID) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// ack is one (segment, SCL) report for a test table.
type ack struct {
	seg string
	scl uint64
}

func TestPGCL(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Config
		acks []ack
		want uint64
	}{
		{"no acks", single("ABCDEF"), nil, 0},
		{"three acks", single("ABCDEF"), []ack{{"A", 9}, {"B", 9}, {"C", 9}}, 0},
		{"four equal", single("ABCDEF"), []ack{{"A", 9}, {"B", 9}, {"C", 9}, {"D", 9}}, 9},
		{"fourth highest", single("ABCDEF"), []ack{{"A", 10}, {"B", 3}, {"C", 7}, {"D", 5}, {"E", 9}, {"F", 1}}, 5},
		{"lower ack ignored", single("ABCDEF"), []ack{{"A", 8}, {"B", 8}, {"C", 8}, {"D", 8}, {"D", 2}}, 8},
		{"non-member ignored", single("ABCDEF"), []ack{{"A", 8}, {"B", 8}, {"C", 8}, {"X", 8}}, 0},
		{"dual needs both", dual("ABCDEF", "ABCDEG"), []ack{{"A", 8}, {"B", 8}, {"C", 8}, {"F", 8}}, 0},
		{"dual min of sets", dual("ABCDEF", "ABCDEG"), []ack{{"A", 8}, {"B", 8}, {"C", 8}, {"F", 8}, {"G", 5}}, 5},
		{"dual both", dual("ABCDEF", "ABCDEG"), []ack{{"A", 8}, {"B", 8}, {"C", 8}, {"D", 8}}, 8},
	} {
		tr := NewTracker(0)
		tr.SetConfig(1, tc.c)
		for l := uint64(1); l <= 10; l++ {
			if err := tr.Allocated(l, 1, true); err != nil {
				t.Fatal(err)
			}
		}
		for _, a := range tc.acks {
			tr.Ack(1, SegmentID(a.seg), a.scl)
		}
		if got := tr.PGCL(1); got != tc.want {
			t.Errorf("%s: PGCL = %d, want %d", tc.name, got, tc.want)
		}
		if got := tr.VDL(); got != tc.want {
			t.Errorf("%s: VDL = %d, want %d", tc.name, got, tc.want)
		}
	}
}

func ackAll(tr *Tracker, pg uint32, segs string, scl uint64) bool {
	adv := false
	for _, s := range ids(segs) {
		adv = tr.Ack(pg, s, scl) || adv
	}
	return adv
}

func TestVCLAcrossPGs(t *testing.T) {
	tr := NewTracker(0)
	tr.SetConfig(1, single("ABCDEF"))
	tr.SetConfig(2, single("ABCDEF"))
	// LSN 1,3,5 in PG 1; 2,4 in PG 2. MTRs end at 2 and 5.
	for _, a := range []struct {
		lsn uint64
		pg  uint32
		cpl bool
	}{{1, 1, false}, {2, 2, true}, {3, 1, false}, {4, 2, false}, {5, 1, true}} {
		if err := tr.Allocated(a.lsn, a.pg, a.cpl); err != nil {
			t.Fatal(err)
		}
	}
	if adv := ackAll(tr, 1, "ABCD", 5); adv {
		t.Fatal("VDL advanced with PG 2 silent")
	}
	if tr.PGCL(1) != 5 || tr.VCL() != 1 || tr.VDL() != 0 {
		t.Fatalf("PG 2 lags: PGCL(1)=%d VCL=%d VDL=%d, want 5 1 0", tr.PGCL(1), tr.VCL(), tr.VDL())
	}
	if !ackAll(tr, 2, "ABCD", 2) {
		t.Fatal("VDL did not advance")
	}
	if tr.VCL() != 3 || tr.VDL() != 2 {
		t.Fatalf("VCL=%d VDL=%d, want 3 2", tr.VCL(), tr.VDL())
	}
	ackAll(tr, 2, "ABCD", 4)
	if tr.VCL() != 5 || tr.VDL() != 5 || tr.Pending() != 0 {
		t.Fatalf("VCL=%d VDL=%d pending=%d, want 5 5 0", tr.VCL(), tr.VDL(), tr.Pending())
	}
}

func TestVDLOnlyAtCPL(t *testing.T) {
	tr := NewTracker(100)
	tr.SetConfig(7, single("ABCDEF"))
	for l := uint64(101); l <= 110; l++ {
		if err := tr.Allocated(l, 7, l == 103 || l == 110); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct{ scl, vcl, vdl uint64 }{
		{100, 100, 100}, {102, 102, 100}, {103, 103, 103}, {109, 109, 103}, {110, 110, 110},
	} {
		ackAll(tr, 7, "ABCD", tc.scl)
		if tr.VCL() != tc.vcl || tr.VDL() != tc.vdl {
			t.Errorf("after SCL %d: VCL=%d VDL=%d, want %d %d", tc.scl, tr.VCL(), tr.VDL(), tc.vcl, tc.vdl)
		}
	}
}

func TestAllocatedOrder(t *testing.T) {
	tr := NewTracker(10)
	if err := tr.Allocated(10, 1, true); err == nil {
		t.Fatal("LSN equal to base accepted")
	}
	if err := tr.Allocated(12, 1, true); err != nil {
		t.Fatal(err)
	}
	if err := tr.Allocated(11, 1, true); err == nil {
		t.Fatal("decreasing LSN accepted")
	}
	if tr.LastAllocated() != 12 || tr.VCL() != 10 || tr.VDL() != 10 {
		t.Fatalf("last=%d VCL=%d VDL=%d", tr.LastAllocated(), tr.VCL(), tr.VDL())
	}
}

func TestAcksIgnored(t *testing.T) {
	tr := NewTracker(0)
	tr.SetConfig(1, single("ABCDEF"))
	for l := uint64(1); l <= 5; l++ {
		tr.Allocated(l, 1, true)
	}
	ackAll(tr, 1, "WXYZ", 5) // non-members
	ackAll(tr, 2, "ABCD", 5) // unknown PG
	if tr.VDL() != 0 || tr.SCL(1, "W") != 0 {
		t.Fatalf("non-member acks counted: VDL=%d", tr.VDL())
	}
	ackAll(tr, 1, "ABC", 4)
	tr.Ack(1, "A", 2) // lower than seen
	if tr.SCL(1, "A") != 4 {
		t.Fatalf("SCL went back to %d", tr.SCL(1, "A"))
	}
	// Acks beyond what was allocated are clamped: the segment cannot hold
	// records this writer has not sent.
	tr.Ack(1, "D", 99)
	if tr.SCL(1, "D") != 5 || tr.VDL() != 4 {
		t.Fatalf("SCL(D)=%d VDL=%d, want 5 4", tr.SCL(1, "D"), tr.VDL())
	}
	if got := tr.ReadableAt(1, 4); !equal(got, ids("ABCD")) {
		t.Fatalf("ReadableAt = %v", got)
	}
}

func TestMembershipChange(t *testing.T) {
	tr := NewTracker(0)
	tr.SetConfig(1, single("ABCDEF"))
	for l := uint64(1); l <= 20; l++ {
		tr.Allocated(l, 1, l%5 == 0)
	}
	ackAll(tr, 1, "ABCF", 10)
	if tr.VDL() != 10 {
		t.Fatalf("VDL=%d, want 10", tr.VDL())
	}
	// F fails; G joins. PGCL must not drop although ABCDEG has only 3 at 10.
	tr.SetConfig(1, dual("ABCDEF", "ABCDEG"))
	if tr.PGCL(1) != 10 || tr.VDL() != 10 {
		t.Fatalf("PGCL=%d VDL=%d after dual, want 10 10", tr.PGCL(1), tr.VDL())
	}
	ackAll(tr, 1, "ABCF", 15) // 4 of ABCDEF, 3 of ABCDEG
	if tr.PGCL(1) != 10 {
		t.Fatalf("PGCL=%d with a write quorum in one set only", tr.PGCL(1))
	}
	tr.Ack(1, "G", 15)
	if tr.PGCL(1) != 15 || tr.VDL() != 15 {
		t.Fatalf("PGCL=%d VDL=%d, want 15 15", tr.PGCL(1), tr.VDL())
	}
	tr.SetConfig(1, Config{Epoch: 3, Sets: []Set{Default(ids("ABCDEG"))}})
	if tr.SCL(1, "F") != 0 {
		t.Fatal("removed member's SCL kept")
	}
	tr.Ack(1, "F", 20) // no longer a member
	ackAll(tr, 1, "ABC", 20)
	if tr.VDL() != 15 {
		t.Fatalf("VDL=%d, want 15", tr.VDL())
	}
	tr.Ack(1, "G", 20)
	if tr.VDL() != 20 {
		t.Fatalf("VDL=%d, want 20", tr.VDL())
	}
	c, ok := tr.Config(1)
	if !ok || c.Epoch != 3 || len(c.Sets) != 1 {
		t.Fatalf("Config = %v %v", c, ok)
	}
}

// Switching from a dual config to a single one may make more LSNs durable at
// once, without any new ack.
func TestSetConfigAdvances(t *testing.T) {
	tr := NewTracker(0)
	tr.SetConfig(1, dual("ABCDEF", "ABCDEG"))
	tr.Allocated(1, 1, true)
	ackAll(tr, 1, "ABCF", 1)
	if tr.VDL() != 0 {
		t.Fatal("durable in one set only")
	}
	tr.SetConfig(1, Config{Epoch: 3, Sets: []Set{Default(ids("ABCDEF"))}}) // rollback
	if tr.VDL() != 1 {
		t.Fatalf("VDL=%d after rollback, want 1", tr.VDL())
	}
}

func TestAllocateWithoutConfig(t *testing.T) {
	tr := NewTracker(0)
	tr.Allocated(1, 9, true)
	tr.Ack(9, "A", 1)
	if tr.VDL() != 0 {
		t.Fatal("durable without a config")
	}
	tr.SetConfig(9, single("ABCDEF"))
	ackAll(tr, 9, "ABCD", 1)
	if tr.VDL() != 1 {
		t.Fatalf("VDL=%d", tr.VDL())
	}
}

func BenchmarkAllocateAck(b *testing.B) {
	tr := NewTracker(0)
	for pg := uint32(0); pg < 4; pg++ {
		tr.SetConfig(pg, single("ABCDEF"))
	}
	segs := ids("ABCDEF")
	lsn := uint64(0)
	for b.Loop() {
		lsn++
		pg := uint32(lsn % 4)
		tr.Allocated(lsn, pg, lsn%3 == 0)
		for _, s := range segs {
			tr.Ack(pg, s, lsn)
		}
	}
}

// During a membership change (s2 replaced by s7), answers from s1, s5 and
// s7 are a read quorum of the new set but not of the old one: a record
// durable before the change on s2, s3, s4 and s6 is on none of them.
// Recovery therefore needs FullReadQuorum.
func TestFullReadQuorumDuringAChange(t *testing.T) {
	old := Default([]SegmentID{"s1", "s2", "s3", "s4", "s5", "s6"})
	next := Default([]SegmentID{"s1", "s7", "s3", "s4", "s5", "s6"})
	c := Config{Epoch: 2, Sets: []Set{old, next}}
	answered := func(ids ...SegmentID) func(SegmentID) bool {
		return func(s SegmentID) bool { return slices.Contains(ids, s) }
	}
	if !c.ReadQuorum(answered("s1", "s5", "s7")) || c.FullReadQuorum(answered("s1", "s5", "s7")) {
		t.Fatal("s1, s5, s7: want a read quorum of the new set only")
	}
	if !c.FullReadQuorum(answered("s1", "s3", "s5", "s7")) {
		t.Fatal("s1, s3, s5, s7 is a read quorum of both sets")
	}
	if (Config{}).FullReadQuorum(answered("s1", "s2", "s3")) {
		t.Fatal("an empty config has no quorum")
	}
}
