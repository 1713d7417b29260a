package recovery

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/borealis-db/borealis/internal/quorum"
	"github.com/borealis-db/borealis/internal/segment"
)

const lal = 100

var six = []quorum.SegmentID{"a", "b", "c", "d", "e", "f"}

func config() quorum.Config {
	return quorum.Config{Epoch: 1, Sets: []quorum.Set{quorum.Default(six)}}
}

// rec is one record of the old writer's history.
type rec struct {
	lsn uint64
	pg  uint32
	cpl bool
}

// history derives each PG's chain (headers with backlinks) from the old
// writer's records, in LSN order.
func history(epoch uint64, recs ...rec) map[uint32][]Header {
	out := map[uint32][]Header{}
	last := map[uint32]uint64{}
	for _, r := range recs {
		out[r.pg] = append(out[r.pg], Header{LSN: r.lsn, PrevLSN: last[r.pg], Epoch: epoch, Page: uint64(r.pg)*1000 + r.lsn, CPL: r.cpl})
		last[r.pg] = r.lsn
	}
	return out
}

// held is the answer of a segment holding its PG's chain up to scl.
func held(id quorum.SegmentID, scl, vdlSeen uint64, ts ...segment.Truncation) Answer {
	return Answer{Segment: id, SCL: scl, VDLSeen: vdlSeen, Highest: scl, Truncations: ts}
}

// serve answers the plan's pulls from the chains the segments hold: each
// segment holds its PG's history up to its SCL.
func serve(t *testing.T, p *Plan, chains map[uint32]map[quorum.SegmentID][]Header) map[uint32][]Header {
	t.Helper()
	out := map[uint32][]Header{}
	for _, pull := range p.Pulls {
		if !pull.Needed() {
			continue
		}
		for _, h := range chains[pull.PG][pull.From] {
			if h.LSN > pull.After && h.LSN <= pull.SCL {
				out[pull.PG] = append(out[pull.PG], h)
				if h.LSN > pull.Upto {
					break
				}
			}
		}
	}
	return out
}

// upTo is the part of a chain at or below scl.
func upTo(hs []Header, scl uint64) []Header {
	var out []Header
	for _, h := range hs {
		if h.LSN <= scl {
			out = append(out, h)
		}
	}
	return out
}

func recover(t *testing.T, in Input, chains map[uint32]map[quorum.SegmentID][]Header) Result {
	t.Helper()
	p, err := NewPlan(in)
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.Decide(serve(t, p, chains))
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func checkResult(t *testing.T, res Result, vcl, vdl, through uint64, tails map[uint32]uint64) {
	t.Helper()
	if res.VCL != vcl || res.VDL != vdl || res.After != vdl || res.Through != through {
		t.Fatalf("VCL %d VDL %d range (%d, %d]; want VCL %d VDL %d range (%d, %d]", res.VCL, res.VDL, res.After, res.Through, vcl, vdl, vdl, through)
	}
	for pg, tail := range tails {
		if res.Tails[pg] != tail {
			t.Fatalf("PG %d tail %d, want %d (tails %v)", pg, res.Tails[pg], tail, res.Tails)
		}
		ts := res.Truncations[pg]
		want := segment.Truncation{After: vdl, Through: through, Epoch: res.Epoch, Tail: tail}
		if len(ts) == 0 || ts[len(ts)-1] != want {
			t.Fatalf("PG %d truncations %+v, want last %+v", pg, ts, want)
		}
	}
	if len(res.Tails) != len(tails) {
		t.Fatalf("tails %v, want %v", res.Tails, tails)
	}
}

// TestNewVolume: nothing was ever written. A read quorum answering "not
// hosted" is enough.
func TestNewVolume(t *testing.T) {
	in := Input{Epoch: 2, LAL: lal, PGs: []PG{{PG: 0, Config: config(), Answers: []Answer{
		{Segment: "a", NotHosted: true}, {Segment: "c", NotHosted: true}, {Segment: "e", NotHosted: true},
	}}}}
	res := recover(t, in, nil)
	checkResult(t, res, 0, 0, lal, map[uint32]uint64{0: 0})
	if res.PGs[0].From != "" {
		t.Fatalf("PG 0 pulled from %q", res.PGs[0].From)
	}
}

// TestDurableAboveLost: LSN 5 (PG 1) reached no segment of the read
// quorum completely, while LSN 6 (PG 0) is durable. The VDL stops at 4,
// before the lost record, whatever PG 0 holds beyond.
func TestDurableAboveLost(t *testing.T) {
	h := history(1, rec{1, 0, false}, rec{2, 1, true}, rec{3, 0, true}, rec{4, 1, true}, rec{5, 1, true}, rec{6, 0, true})
	chains := map[uint32]map[quorum.SegmentID][]Header{
		0: {"a": h[0], "b": h[0], "c": upTo(h[0], 3)},
		1: {"d": upTo(h[1], 4), "e": upTo(h[1], 4), "f": upTo(h[1], 2)},
	}
	in := Input{Epoch: 2, LAL: lal, PGs: []PG{
		{PG: 0, Config: config(), Answers: []Answer{held("a", 6, 4), held("b", 6, 4), held("c", 3, 2)}},
		{PG: 1, Config: config(), Answers: []Answer{held("d", 4, 4), held("e", 4, 4), held("f", 2, 2)}},
	}}
	res := recover(t, in, chains)
	// PG 0's tail is 3: its record 6 is dropped with everything above 4.
	checkResult(t, res, 4, 4, 4+lal, map[uint32]uint64{0: 3, 1: 4})
	if res.Floor != 4 || res.PGs[0].From != "a" || res.PGs[0].Headers != 1 {
		t.Fatalf("floor %d, PG 0 from %q with %d headers", res.Floor, res.PGs[0].From, res.PGs[0].Headers)
	}
}

// TestPartialMTR: the MTR 5 (PG 0), 6 (PG 1), 7 (PG 0) lost its record in PG
// 1. VCL stops at 5, and the VDL at the last whole MTR, 4.
func TestPartialMTR(t *testing.T) {
	h := history(1, rec{1, 0, true}, rec{2, 0, false}, rec{3, 1, false}, rec{4, 0, true},
		rec{5, 0, false}, rec{6, 1, false}, rec{7, 0, true})
	chains := map[uint32]map[quorum.SegmentID][]Header{
		0: {"a": h[0], "b": upTo(h[0], 5), "c": upTo(h[0], 4)},
		1: {"a": upTo(h[1], 3), "b": upTo(h[1], 3), "c": upTo(h[1], 3)},
	}
	in := Input{Epoch: 2, LAL: lal, PGs: []PG{
		{PG: 0, Config: config(), Answers: []Answer{held("a", 7, 1), held("b", 5, 1), held("c", 4, 1)}},
		{PG: 1, Config: config(), Answers: []Answer{held("a", 3, 1), held("b", 3, 1), held("c", 3, 1)}},
	}}
	res := recover(t, in, chains)
	checkResult(t, res, 5, 4, 4+lal, map[uint32]uint64{0: 4, 1: 3})
}

// TestWholeMTRsAcrossPGs: every record is held; the VDL reaches the last
// CPL, and records after it (an MTR whose CPL is missing) are not counted.
func TestWholeMTRsAcrossPGs(t *testing.T) {
	h := history(1, rec{1, 0, false}, rec{2, 1, false}, rec{3, 2, true}, rec{4, 1, true}, rec{5, 0, false})
	chains := map[uint32]map[quorum.SegmentID][]Header{
		0: {"a": h[0]}, 1: {"b": h[1]}, 2: {"c": h[2]},
	}
	var pgs []PG
	for pg, id := range []quorum.SegmentID{"a", "b", "c"} {
		last := chains[uint32(pg)][id]
		pgs = append(pgs, PG{PG: uint32(pg), Config: config(), Answers: []Answer{
			held(id, last[len(last)-1].LSN, 0), {Segment: "d", NotHosted: true}, {Segment: "e", NotHosted: true}}})
	}
	// An unwritten PG: its segments hold nothing.
	pgs = append(pgs, PG{PG: 3, Config: config(), Answers: []Answer{held("a", 0, 0), held("b", 0, 0), {Segment: "f", NotHosted: true}}})
	res := recover(t, Input{Epoch: 5, LAL: lal, PGs: pgs}, chains)
	checkResult(t, res, 5, 4, 4+lal, map[uint32]uint64{0: 1, 1: 4, 2: 3, 3: 0})
	if res.Epoch != 5 || res.Truncations[3][0].Epoch != 5 {
		t.Fatalf("epoch %d, PG 3 truncations %+v", res.Epoch, res.Truncations[3])
	}
}

// TestThroughCoversHighest: records the old writer left far above the VDL
// stretch the range beyond VDL+LAL.
func TestThroughCoversHighest(t *testing.T) {
	in := Input{Epoch: 2, LAL: 10, PGs: []PG{{PG: 0, Config: config(), Answers: []Answer{
		{Segment: "a", SCL: 3, VDLSeen: 3, Highest: 40}, held("b", 3, 3), held("c", 3, 3)}}}}
	res := recover(t, in, nil)
	checkResult(t, res, 3, 3, 40, map[uint32]uint64{0: 3})
}

func TestNoReadQuorum(t *testing.T) {
	in := Input{Epoch: 2, LAL: lal, PGs: []PG{
		{PG: 0, Config: config(), Answers: []Answer{held("a", 1, 0), held("b", 1, 0), held("c", 1, 0)}},
		{PG: 7, Config: config(), Answers: []Answer{held("a", 2, 0), {Segment: "e", NotHosted: true}}},
	}}
	_, err := NewPlan(in)
	var nq *NoReadQuorumError
	if !errors.As(err, &nq) {
		t.Fatalf("NewPlan: %v, want *NoReadQuorumError", err)
	}
	if nq.PG != 7 || !slices.Equal(nq.Missing, []quorum.SegmentID{"b", "c", "d", "f"}) || !slices.Equal(nq.Answered, []quorum.SegmentID{"a", "e"}) {
		t.Fatalf("error %+v", nq)
	}
	for _, want := range []string{"PG 7", "2 of its 6", "no answer from b, c, d, f"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("message %q lacks %q", err, want)
		}
	}
	t.Log(err)
}

// TestEarlierTruncation: recovery of epoch 2 truncated (10, 50]; writer 2
// wrote 11-14 in PG 0. Segment e was away: it still holds epoch 1's records
// 11-20 and reports SCL 20. It is trusted only up to 10, the truncation is
// carried forward for the segments that missed it, and the new one follows.
func TestEarlierTruncation(t *testing.T) {
	t2 := segment.Truncation{After: 10, Through: 50, Epoch: 2, Tail: 10}
	base := history(1, rec{1, 0, false}, rec{10, 0, true})[0]
	writer2 := []Header{{LSN: 11, PrevLSN: 10, Epoch: 2, CPL: false}, {LSN: 12, PrevLSN: 11, Epoch: 2, CPL: true},
		{LSN: 13, PrevLSN: 12, Epoch: 2}, {LSN: 14, PrevLSN: 13, Epoch: 2, CPL: true}}
	var stale []Header
	prev := uint64(10)
	for l := uint64(11); l <= 20; l++ {
		stale = append(stale, Header{LSN: l, PrevLSN: prev, Epoch: 1, CPL: true})
		prev = l
	}
	chains := map[uint32]map[quorum.SegmentID][]Header{0: {
		"c": append(slices.Clone(base), writer2...),
		"d": append(slices.Clone(base), writer2[:2]...),
		"e": append(slices.Clone(base), stale...),
	}}
	answers := []Answer{held("c", 14, 12, t2), held("d", 12, 12, t2), {Segment: "e", SCL: 20, VDLSeen: 8, Highest: 20}}
	in := Input{Epoch: 3, LAL: lal, Prior: []Prior{{Epoch: 2, After: 10, Through: 50, PGs: 1}},
		PGs: []PG{{PG: 0, Config: config(), Answers: answers}}}
	res := recover(t, in, chains)
	checkResult(t, res, 14, 14, 14+lal, map[uint32]uint64{0: 14})
	if got := res.Truncations[0]; len(got) != 2 || got[0] != t2 {
		t.Fatalf("truncations %+v, want epoch 2's first", got)
	}
	if res.PGs[0].From != "c" {
		t.Fatalf("headers from %q, want c", res.PGs[0].From)
	}

	// The control plane's record alone is enough: here no answering
	// segment has the truncation (the others of the PG do), and the range
	// applies to PG 0 only.
	in.Prior = []Prior{{Epoch: 2, After: 10, Through: 50, PGs: 1}}
	in.PGs = []PG{
		{PG: 0, Config: config(), Answers: []Answer{{Segment: "e", SCL: 20, VDLSeen: 8, Highest: 20}, held("f", 10, 10), held("a", 10, 10)}},
		// PG 1 was added after that recovery: its records above 10 are
		// the new writer's, not ones the range dropped.
		{PG: 1, Config: config(), Answers: []Answer{held("a", 16, 8), held("b", 16, 8), held("c", 15, 8)}},
	}
	pg1 := []Header{{LSN: 11, PrevLSN: 0, Epoch: 2}, {LSN: 12, PrevLSN: 11, Epoch: 2}, {LSN: 13, PrevLSN: 12, Epoch: 2},
		{LSN: 14, PrevLSN: 13, Epoch: 2}, {LSN: 15, PrevLSN: 14, Epoch: 2, CPL: true}, {LSN: 16, PrevLSN: 15, Epoch: 2}}
	chains = map[uint32]map[quorum.SegmentID][]Header{
		0: {"e": append(slices.Clone(base), stale...), "f": base, "a": base},
		1: {"a": pg1, "b": pg1, "c": pg1[:5]},
	}
	res = recover(t, in, chains)
	// PG 0's best trusted SCL is 10: e's 20 is clamped to it, and f, which
	// holds no more, is picked as its SCL is a record.
	checkResult(t, res, 16, 15, 15+lal, map[uint32]uint64{0: 10, 1: 15})
	if res.PGs[0].From != "a" && res.PGs[0].From != "f" {
		t.Fatalf("PG 0 headers from %q, want an unclamped segment", res.PGs[0].From)
	}
	if len(res.Truncations[0]) != 1 {
		t.Fatalf("PG 0 truncations %+v: epoch 2's tail is unknown here, so only the new one", res.Truncations[0])
	}
}

// TestClampedBelowFloor: the best trusted segment of PG 1 is clamped below
// the floor. Its first record above the clamp links back to the PG's tail.
func TestClampedBelowFloor(t *testing.T) {
	t2 := segment.Truncation{After: 10, Through: 50, Epoch: 2, Tail: 8}
	pg1 := history(1, rec{3, 1, false}, rec{8, 1, true}, rec{13, 1, true}, rec{15, 1, true})[1]
	chains := map[uint32]map[quorum.SegmentID][]Header{
		0: {"a": {{LSN: 11, PrevLSN: 9, Epoch: 2}, {LSN: 12, PrevLSN: 11, Epoch: 2, CPL: true}}},
		1: {"y": pg1, "x": upTo(pg1, 8)},
	}
	others := []quorum.SegmentID{"u", "v", "w", "x", "y", "z"}
	in := Input{Epoch: 3, LAL: lal, Prior: []Prior{{Epoch: 2, After: 10, Through: 50, PGs: 2}}, PGs: []PG{
		{PG: 0, Config: config(), Answers: []Answer{held("a", 12, 12, segment.Truncation{After: 10, Through: 50, Epoch: 2, Tail: 9}), held("b", 12, 12), held("c", 9, 9)}},
		{PG: 1, Config: quorum.Config{Epoch: 1, Sets: []quorum.Set{quorum.Default(others)}}, Answers: []Answer{
			held("x", 8, 8, t2), {Segment: "y", SCL: 15, VDLSeen: 8, Highest: 15}, {Segment: "z", NotHosted: true}}},
	}}
	p, err := NewPlan(in)
	if err != nil {
		t.Fatal(err)
	}
	if pull := p.Pulls[1]; pull.From != "y" || pull.Upto != 10 || pull.After != 10 || !pull.Needed() {
		t.Fatalf("PG 1 pull %+v", pull)
	}
	res, err := p.Decide(serve(t, p, chains))
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res, 12, 12, 12+lal, map[uint32]uint64{0: 12, 1: 8})
}

// TestRedo: a recovery interrupted after some segments applied its
// truncation computes the same one again and is harmless; one that now
// finds another range is refused, and so is an older epoch.
func TestRedo(t *testing.T) {
	h := history(1, rec{1, 0, true}, rec{2, 0, true}, rec{3, 0, false})[0]
	t2 := segment.Truncation{After: 2, Through: 2 + lal, Epoch: 2, Tail: 2}
	chains := map[uint32]map[quorum.SegmentID][]Header{0: {"a": upTo(h, 2), "b": h}}
	in := Input{Epoch: 2, LAL: lal, Prior: []Prior{{Epoch: 2, After: 2, Through: 2 + lal, PGs: 1}}, PGs: []PG{{PG: 0, Config: config(),
		Answers: []Answer{held("a", 2, 1, t2), held("b", 3, 1), held("c", 1, 1)}}}}
	res := recover(t, in, chains)
	checkResult(t, res, 2, 2, 2+lal, map[uint32]uint64{0: 2})
	if len(res.Truncations[0]) != 1 {
		t.Fatalf("truncations %+v", res.Truncations[0])
	}

	// Only segments that hold less than LSN 2 answer now.
	in.PGs[0].Answers = []Answer{held("c", 1, 1), held("d", 1, 1), held("e", 1, 1)}
	p, err := NewPlan(in)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Decide(serve(t, p, chains)); !errors.Is(err, ErrEpochUsed) {
		t.Fatalf("redo finding another range: %v, want ErrEpochUsed", err)
	}

	in.Prior = nil
	in.PGs[0].Answers = []Answer{held("a", 2, 1, segment.Truncation{After: 2, Through: 9, Epoch: 4, Tail: 2}), held("b", 3, 1), held("c", 1, 1)}
	if _, err := NewPlan(in); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("a segment truncated under epoch 4: %v, want ErrStaleEpoch", err)
	}
}

// TestBadHeaders: headers that do not form the chain asked for are refused.
func TestBadHeaders(t *testing.T) {
	in := Input{Epoch: 2, LAL: lal, PGs: []PG{{PG: 0, Config: config(), Answers: []Answer{held("a", 3, 1), held("b", 1, 1), held("c", 1, 1)}}}}
	p, err := NewPlan(in)
	if err != nil {
		t.Fatal(err)
	}
	for name, hs := range map[string][]Header{
		"none":        nil,
		"broken link": {{LSN: 2, PrevLSN: 1}, {LSN: 3, PrevLSN: 1}},
		"above SCL":   {{LSN: 2, PrevLSN: 1}, {LSN: 4, PrevLSN: 2}},
		"newer epoch": {{LSN: 2, PrevLSN: 1, Epoch: 3}},
	} {
		if _, err := p.Decide(map[uint32][]Header{0: hs}); err == nil {
			t.Fatalf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}
