// Package recovery computes what a new writer of a volume decides after a
// crash: the volume complete and durable LSNs (VCL, VDL) it starts from, each
// PG's tail, and the truncation that drops whatever the old writer left
// beyond them. It is pure, like internal/quorum and internal/segment: no
// goroutines, clocks or I/O. The shell (internal/volume's Recover) asks the
// segments, feeds their answers in, and carries the decisions out.
//
// # Why a read quorum's highest SCL covers every durable record
//
// A storage node acks an append with its segment's SCL, the highest LSN up
// to which it holds every record of the PG. The writer counts a record
// durable only when 4 of the PG's 6 segments ack an SCL at or above it, so a
// durable record sits, with its whole chain before it, on 4 segments. Any 3
// segments (a read quorum) include at least one of those 4 (3 + 4 > 6), and
// that one's SCL is at or above the record. So the highest SCL M_pg of any 3
// answering segments is at or above every durable record of the PG, and the
// chain of the segment that reported it holds every durable record of the
// PG. During a membership change it takes a read quorum of every set
// (quorum.Config.FullReadQuorum): a record made durable before the change is
// on a write quorum of the old set only.
//
// # The computation
//
//  1. Floor F: the highest VDL any answering segment was told by a writer
//     (vdl_seen). A writer only tells a VDL once everything at or below it
//     is durable, so nothing at or below F needs looking at.
//  2. For each PG, the segment with the highest SCL M_pg; the shell pulls its
//     record headers in (F, M_pg] (Plan, then Decide).
//  3. VCL: the highest L >= F such that every LSN in (F, L] is among those
//     headers. The writer allocates LSNs densely, one per record, so a
//     missing LSN is a record no read quorum holds completely: it may have
//     been lost, and nothing after it can be trusted.
//  4. VDL: the highest CPL (end of a mini-transaction) at or below VCL, or F.
//     Everything the old writer acknowledged is at or below its VDL, which
//     is durable, so at or below this VDL; and no MTR is cut in half.
//  5. Each PG's tail: its last LSN at or below VDL, from which the new
//     writer's first record of the PG links back.
//  6. The truncation (VDL, max(VDL+LAL, highest LSN seen)] under the new
//     epoch: the old writer never allocated beyond its VDL + LAL, so every
//     record it left above VDL falls in it.
//
// # Earlier recoveries
//
// A segment that was away during an earlier recovery may still hold the
// records that recovery dropped, above its After, and report an SCL that
// counts them. Such a segment is trusted only up to that After: its SCL is
// clamped to it. A PG's earlier truncations are known from the segments that
// applied them (with their tails, which are carried forward so that the new
// writer's declarations bring them to segments that missed them) and from
// the control plane's record of every recovery's range (Prior), which is
// written before any segment is truncated, so that even a recovery that was
// interrupted is known.
package recovery

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/borealis-db/borealis/internal/quorum"
	"github.com/borealis-db/borealis/internal/segment"
)

// Answer is one segment's answer to SegmentInfo.
type Answer struct {
	Segment quorum.SegmentID
	// NotHosted: the node hosts no segment of the PG. It holds nothing, so
	// it answers like a segment with SCL 0: a durable record would be on 4
	// segments, and any read quorum would find one of them.
	NotHosted bool
	SCL       uint64
	// VDLSeen is the highest writer VDL the segment was told.
	VDLSeen uint64
	// Highest is the highest LSN the segment holds (at least SCL).
	Highest uint64
	// Truncations the segment has applied, any order.
	Truncations []segment.Truncation
}

// PG is what recovery knows of one PG.
type PG struct {
	PG uint32
	// Config is the PG's membership; a read quorum of it must answer.
	Config quorum.Config
	// Answers from the segments that answered; a segment that did not is
	// simply absent.
	Answers []Answer
}

// Prior is an earlier recovery's range as the control plane recorded it.
type Prior struct {
	Epoch   uint64
	After   uint64
	Through uint64
	// PGs is how many PGs the volume had then: the range applies to PGs
	// 0..PGs-1, and PGs added later never held records it dropped.
	PGs uint32
}

// Input is everything recovery starts from.
type Input struct {
	// Epoch is the new writer's epoch, already bumped in the control plane.
	Epoch uint64
	// LAL is the allocation limit of the writer being recovered (at least).
	LAL uint64
	// Prior lists the ranges earlier recoveries recorded (any order). One of
	// Epoch itself means this recovery is a redo of an interrupted one.
	Prior []Prior
	PGs   []PG
}

// Header is what recovery needs of one record.
type Header struct {
	LSN     uint64
	PrevLSN uint64
	Epoch   uint64
	Page    uint64
	CPL     bool
}

// Pull says which segment's record headers Decide needs for a PG.
type Pull struct {
	PG uint32
	// From is the segment with the highest (clamped) SCL; empty when no
	// answering segment holds anything, and then nothing is pulled.
	From quorum.SegmentID
	// Upto is the highest LSN that counts (From's clamped SCL).
	Upto uint64
	// After: headers of records with LSN > After are wanted. It is the
	// floor, or Upto when that is lower (From is clamped below the floor):
	// then only the first header above Upto is needed, for its backlink.
	After uint64
	// SCL is From's own SCL. Its chain is complete up to it, so a header in
	// (Upto, SCL] is still a true link: the first one above After tells the
	// PG's tail when nothing in (After, Upto] is at or below the VDL. Pull
	// headers in (After, SCL], and stop after the first one above Upto.
	SCL uint64
}

// Needed reports whether any header must be pulled.
func (p Pull) Needed() bool { return p.From != "" && p.SCL > p.After }

// Plan is recovery's first step: the floor and where to pull headers from.
type Plan struct {
	in      Input
	Floor   uint64
	Highest uint64
	Pulls   []Pull // in PG order
	known   map[uint32][]segment.Truncation
	ranges  map[uint64]Prior
}

// NoReadQuorumError: too few segments of a PG answered to trust what they
// say.
type NoReadQuorumError struct {
	PG       uint32
	Config   quorum.Config
	Answered []quorum.SegmentID
	// Missing are the members that did not answer.
	Missing []quorum.SegmentID
}

func (e *NoReadQuorumError) Error() string {
	return fmt.Sprintf("recovery: PG %d has no read quorum: %d of its %d segments answered; no answer from %s (membership %s)",
		e.PG, len(e.Answered), len(e.Config.Members()), joinIDs(e.Missing), e.Config)
}

// ErrEpochUsed: a truncation under the new epoch already exists and differs
// from what this recovery computes (a redo of an interrupted recovery that
// now sees other segments). The writer must recover again under a newer
// epoch.
var ErrEpochUsed = errors.New("recovery: this epoch already truncated differently")

// ErrStaleEpoch: a segment has applied a truncation of a newer epoch than
// this recovery's: a newer writer exists.
var ErrStaleEpoch = errors.New("recovery: a newer epoch has recovered the volume")

func joinIDs(ids []quorum.SegmentID) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = string(id)
	}
	return strings.Join(s, ", ")
}

// NewPlan checks that every PG has a read quorum of answers, computes the
// floor and picks, for each PG, the segment to pull headers from.
func NewPlan(in Input) (*Plan, error) {
	if in.Epoch == 0 {
		return nil, errors.New("recovery: the new epoch must be at least 1")
	}
	p := &Plan{in: in, known: map[uint32][]segment.Truncation{}, ranges: map[uint64]Prior{}}
	for _, r := range in.Prior {
		if r.Epoch > in.Epoch {
			return nil, fmt.Errorf("%w: the control plane records a recovery of epoch %d, newer than %d", ErrStaleEpoch, r.Epoch, in.Epoch)
		}
		if o, ok := p.ranges[r.Epoch]; ok && (o.After != r.After || o.Through != r.Through) {
			return nil, fmt.Errorf("recovery: two different ranges recorded for epoch %d: (%d, %d] and (%d, %d]", r.Epoch, o.After, o.Through, r.After, r.Through)
		}
		p.ranges[r.Epoch] = r
	}
	seenPG := map[uint32]bool{}
	for _, pg := range in.PGs {
		if seenPG[pg.PG] {
			return nil, fmt.Errorf("recovery: PG %d is listed twice", pg.PG)
		}
		seenPG[pg.PG] = true
		answered := map[quorum.SegmentID]bool{}
		for _, a := range pg.Answers {
			if !pg.Config.Contains(a.Segment) {
				return nil, fmt.Errorf("recovery: PG %d: segment %s answered but is not a member (%s)", pg.PG, a.Segment, pg.Config)
			}
			answered[a.Segment] = true
		}
		if !pg.Config.FullReadQuorum(func(s quorum.SegmentID) bool { return answered[s] }) {
			e := &NoReadQuorumError{PG: pg.PG, Config: pg.Config.Clone()}
			for _, m := range pg.Config.Members() {
				if answered[m] {
					e.Answered = append(e.Answered, m)
				} else {
					e.Missing = append(e.Missing, m)
				}
			}
			return nil, e
		}
		ts, err := p.knownTruncations(pg)
		if err != nil {
			return nil, err
		}
		p.known[pg.PG] = ts
		for _, a := range pg.Answers {
			if !a.NotHosted {
				p.Floor = max(p.Floor, a.VDLSeen)
				p.Highest = max(p.Highest, a.Highest, a.SCL)
			}
		}
	}
	for _, pg := range in.PGs {
		pull := Pull{PG: pg.PG}
		for _, a := range pg.Answers {
			if a.NotHosted {
				continue
			}
			upto := p.trustedSCL(pg.PG, a)
			// At equal trust, the unclamped segment: its SCL is a record.
			if pull.From == "" || upto > pull.Upto || (upto == pull.Upto && a.SCL < pull.SCL) {
				pull.From, pull.Upto, pull.SCL = a.Segment, upto, a.SCL
			}
		}
		pull.After = min(p.Floor, pull.Upto)
		p.Pulls = append(p.Pulls, pull)
	}
	slices.SortFunc(p.Pulls, func(a, b Pull) int { return cmp.Compare(a.PG, b.PG) })
	return p, nil
}

// knownTruncations returns the PG's truncations that answering segments
// report, one per epoch, oldest first; it refuses contradictions and
// truncations newer than this recovery.
func (p *Plan) knownTruncations(pg PG) ([]segment.Truncation, error) {
	byEpoch := map[uint64]segment.Truncation{}
	for _, a := range pg.Answers {
		for _, t := range a.Truncations {
			if t.Epoch > p.in.Epoch {
				return nil, fmt.Errorf("%w: segment %s of PG %d was truncated under epoch %d, newer than %d", ErrStaleEpoch, a.Segment, pg.PG, t.Epoch, p.in.Epoch)
			}
			if o, ok := byEpoch[t.Epoch]; ok && o != t {
				return nil, fmt.Errorf("recovery: PG %d: segments disagree on the truncation of epoch %d: %+v and %+v", pg.PG, t.Epoch, o, t)
			}
			if r, ok := p.ranges[t.Epoch]; ok && (r.After != t.After || r.Through != t.Through) {
				return nil, fmt.Errorf("recovery: PG %d: segment %s holds a truncation of epoch %d over (%d, %d], but the control plane recorded (%d, %d]", pg.PG, a.Segment, t.Epoch, t.After, t.Through, r.After, r.Through)
			}
			byEpoch[t.Epoch] = t
		}
	}
	out := make([]segment.Truncation, 0, len(byEpoch))
	for _, t := range byEpoch {
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b segment.Truncation) int { return cmp.Compare(a.Epoch, b.Epoch) })
	return out, nil
}

// trustedSCL is a's SCL, clamped to the After of every truncation of its PG
// newer than the newest it has applied: above that After it may hold
// records the truncation dropped.
//
// A truncation older than one the segment applied does not clamp it, even
// if the segment never applied that older one. The recovery of epoch E
// sent, with its own truncation, every older one it knew with its tail, so
// a segment that applied E's lacks only older truncations E knew merely as
// a recorded range (recorded, then interrupted before any segment that
// answered E applied it). E trusted no segment above such a range's After
// (the clamp below), so E's own range starts at or below it and, reaching
// past everything older writers allocated, covers it: applying E dropped
// whatever the older one would have. Clamping such a segment anyway would
// distrust the records of E's writer, acknowledged ones included.
func (p *Plan) trustedSCL(pg uint32, a Answer) uint64 {
	var newest uint64
	for _, t := range a.Truncations {
		newest = max(newest, t.Epoch)
	}
	scl := a.SCL
	for _, t := range p.known[pg] {
		if t.Epoch > newest {
			scl = min(scl, t.After)
		}
	}
	for _, r := range p.ranges {
		if pg < r.PGs && r.Epoch > newest {
			scl = min(scl, r.After)
		}
	}
	return scl
}

// Result is what recovery decided.
type Result struct {
	Epoch uint64
	// Floor is the highest VDL a writer told any answering segment.
	Floor uint64
	// VCL: every LSN in (Floor, VCL] is held completely by some PG's best
	// segment.
	VCL uint64
	// VDL: the highest CPL at or below VCL (or Floor). The new writer's
	// BaseLSN.
	VDL uint64
	// After and Through bound the truncation: older epochs' records with
	// LSN in (After, Through] are dropped. After == VDL.
	After, Through uint64
	// Tails: each PG's last LSN at or below VDL (0: none).
	Tails map[uint32]uint64
	// Truncations: each PG's truncations, oldest epoch first, this one last.
	Truncations map[uint32][]segment.Truncation
	// PGs says, per PG, where its headers came from and what was found.
	PGs []PGResult
}

// PGResult is one PG's part of the decision.
type PGResult struct {
	PG      uint32
	From    quorum.SegmentID
	Upto    uint64
	Headers int
	Tail    uint64
}

// Decide computes the result from the headers pulled as the plan said
// (headers[pg] in LSN order; PGs whose Pull is not Needed may be absent).
func (p *Plan) Decide(headers map[uint32][]Header) (Result, error) {
	F := p.Floor
	res := Result{Epoch: p.in.Epoch, Floor: F, Tails: map[uint32]uint64{}, Truncations: map[uint32][]segment.Truncation{}}
	type lsnOf struct {
		lsn uint64
		pg  uint32
		cpl bool
	}
	var all []lsnOf
	highest := p.Highest
	for _, pull := range p.Pulls {
		hs := headers[pull.PG]
		if pull.Needed() && len(hs) == 0 {
			return Result{}, fmt.Errorf("recovery: PG %d: no record headers from segment %s, whose SCL %d is above the floor %d", pull.PG, pull.From, pull.SCL, F)
		}
		if err := checkChain(pull, hs, p.in.Epoch); err != nil {
			return Result{}, err
		}
		for _, h := range hs {
			highest = max(highest, h.LSN)
			if h.LSN > F && h.LSN <= pull.Upto {
				all = append(all, lsnOf{h.LSN, pull.PG, h.CPL})
			}
		}
	}
	slices.SortFunc(all, func(a, b lsnOf) int { return cmp.Compare(a.lsn, b.lsn) })
	vcl := F
	for i, l := range all {
		if i > 0 && all[i-1].lsn == l.lsn {
			return Result{}, fmt.Errorf("recovery: LSN %d is claimed by both PG %d and PG %d", l.lsn, all[i-1].pg, l.pg)
		}
		if l.lsn != vcl+1 {
			break
		}
		vcl = l.lsn
	}
	vdl := F
	for _, l := range all {
		if l.lsn > vcl {
			break
		}
		if l.cpl {
			vdl = l.lsn
		}
	}
	res.VCL, res.VDL, res.After = vcl, vdl, vdl
	res.Through = max(vdl+p.in.LAL, highest)

	if r, ok := p.ranges[p.in.Epoch]; ok && (r.After != res.After || r.Through != res.Through) {
		return Result{}, fmt.Errorf("%w: the control plane recorded (%d, %d] for epoch %d, and this recovery finds (%d, %d]; recover again under a new epoch", ErrEpochUsed, r.After, r.Through, p.in.Epoch, res.After, res.Through)
	}
	for _, pull := range p.Pulls {
		tail, err := tailOf(pull, headers[pull.PG], vdl)
		if err != nil {
			return Result{}, err
		}
		t := segment.Truncation{After: res.After, Through: res.Through, Epoch: p.in.Epoch, Tail: tail}
		var ts []segment.Truncation
		for _, k := range p.known[pull.PG] {
			if k.Epoch < p.in.Epoch {
				ts = append(ts, k)
			} else if k != t {
				return Result{}, fmt.Errorf("%w: PG %d holds the truncation %+v for epoch %d, and this recovery finds %+v; recover again under a new epoch", ErrEpochUsed, pull.PG, k, k.Epoch, t)
			}
		}
		res.Tails[pull.PG] = tail
		res.Truncations[pull.PG] = append(ts, t)
		res.PGs = append(res.PGs, PGResult{PG: pull.PG, From: pull.From, Upto: pull.Upto, Headers: len(headers[pull.PG]), Tail: tail})
	}
	return res, nil
}

// checkChain checks that the headers of a PG are the complete chain the
// plan asked for: in LSN order above the floor, within the segment's SCL,
// each linking back to the one before.
func checkChain(pull Pull, hs []Header, epoch uint64) error {
	for i, h := range hs {
		switch {
		case h.LSN <= pull.After || h.LSN > pull.SCL:
			return fmt.Errorf("recovery: PG %d: header at LSN %d is outside (%d, %d] that was asked of segment %s", pull.PG, h.LSN, pull.After, pull.SCL, pull.From)
		case h.Epoch > epoch:
			return fmt.Errorf("%w: PG %d: segment %s holds a record of epoch %d at LSN %d, newer than %d", ErrStaleEpoch, pull.PG, pull.From, h.Epoch, h.LSN, epoch)
		case i == 0 && h.PrevLSN > pull.After:
			return fmt.Errorf("recovery: PG %d: the first header from segment %s (LSN %d) links back to LSN %d, above the floor %d: its chain is not complete", pull.PG, pull.From, h.LSN, h.PrevLSN, pull.After)
		case i > 0 && h.PrevLSN != hs[i-1].LSN:
			return fmt.Errorf("recovery: PG %d: header at LSN %d from segment %s links back to LSN %d, not to the previous header's %d: its chain is not complete", pull.PG, h.LSN, pull.From, h.PrevLSN, hs[i-1].LSN)
		}
	}
	return nil
}

// tailOf is the PG's last LSN at or below vdl.
func tailOf(pull Pull, hs []Header, vdl uint64) (uint64, error) {
	if pull.From == "" {
		return 0, nil
	}
	var tail uint64
	found := false
	for _, h := range hs {
		if h.LSN <= pull.Upto && h.LSN <= vdl {
			tail, found = h.LSN, true
		}
	}
	switch {
	case found:
		return tail, nil
	case len(hs) > 0:
		// Nothing of the PG in (After, vdl]: the first record above After
		// links back to the last one at or below it. (When From is clamped
		// below the floor, the PG has nothing in (Upto, floor] either: a
		// durable record there would be on a segment that is not clamped.)
		return hs[0].PrevLSN, nil
	case pull.SCL <= pull.After:
		// The segment holds nothing above After, so its SCL is not
		// clamped, and it is the PG's last record.
		return pull.SCL, nil
	}
	return 0, fmt.Errorf("recovery: PG %d: cannot tell its last LSN at or below %d without headers from segment %s", pull.PG, vdl, pull.From)
}
