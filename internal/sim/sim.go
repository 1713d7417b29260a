// Package sim runs the pure core (quorum.Tracker and segment.Chain) through
// seeded random schedules: one writer, a few PGs of six segments, a network
// that drops, duplicates and reorders records and acks, gossip between
// segments, and membership changes with dual quorums. After every step it
// checks the core's answers against oracles and the durability invariants.
//
// A run is a pure function of its seed, so a failing seed replays exactly.
package sim

import (
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/borealis-db/borealis/internal/quorum"
	"github.com/borealis-db/borealis/internal/segment"
)

// Probabilities, in percent, of the network's misbehaviour.
const (
	dropPct = 20
	dupPct  = 10

	crashPct   = 2  // per step: a random segment crashes
	persistPct = 25 // per accepted record: the segment persists its State
	checkPct   = 50 // per step: Chain.Check is compared with Offer
)

// Result summarizes a successful run.
type Result struct {
	Steps   int
	Records int
	VDL     uint64
	Changes int
	Crashes int
}

// seg is one segment: the chain under test plus an oracle's copy of what it
// holds.
type seg struct {
	id    quorum.SegmentID
	chain *segment.Chain
	held  map[uint64]segment.Entry
	list  []segment.Entry // accept order: gossip iterates this, not the map, to stay deterministic

	// Oracle: a second, simpler SCL. next never forgets, unlike the
	// chain's index, and checkFull re-derives everything from held alone.
	next map[uint64]uint64
	oscl uint64

	down bool // partitioned or dead: deliveries are lost, no gossip

	// Crash and restart. Every accepted entry is persisted (held, list:
	// a node acks only after fsync); saved is the State last persisted,
	// which may lag the chain's. While crashed > 0 the chain is gone (nil),
	// deliveries are lost and the segment neither acks nor gossips; the
	// count is the steps left until restart.
	saved   segment.State
	crashed int
	acked   uint64 // highest SCL of this segment's acks the tracker saw
	crashes int
}

type pg struct {
	id   uint32
	segs []*seg
	byID map[quorum.SegmentID]*seg
	cfg  quorum.Config
	last uint64          // last LSN allocated in this PG: the next backlink
	lsns []uint64        // allocated LSNs of this PG, ascending
	ents []segment.Entry // the records, aligned with lsns

	pgcl    uint64 // PGCL last observed from the tracker
	checked int    // lsns[:checked] were verified durable when PGCL covered them

	// Membership change: phase 0 none, 1 dual {old, new}, 2 done.
	phase    int
	f, g     *seg
	rollback bool
	nextSeg  int
}

type msg struct {
	ack bool
	pg  *pg
	seg *seg
	e   segment.Entry
	scl uint64
}

type alloc struct {
	lsn uint64
	pg  *pg
	cpl bool
}

type world struct {
	rng  *rand.Rand
	logf func(string, ...any)

	tr   *quorum.Tracker
	base uint64
	pgs  []*pg
	pool []msg

	allocs  []alloc
	cpls    map[uint64]bool
	next    uint64
	budget  int
	lastCPL uint64

	vcl, vdl uint64 // last observed
	vclIdx   int    // allocs[:vclIdx] are <= the oracle VCL
	oVDL     uint64 // oracle VDL
	vdlIdx   int    // allocs[:vdlIdx] were checked held by 4 when VDL covered them

	accepted  int
	deferSegs bool
	err       error // first failure noticed outside check
	changes   bool
	lossless  bool
	step      int
	dirty     []*seg
	nchanges  int
	fullEvery int
	ncrashes  int
}

// Run simulates one seed. logf, if not nil, receives a line per step. The
// error, if any, describes the first violated invariant.
func Run(seed uint64, logf func(string, ...any)) (Result, error) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	w := &world{
		rng:       rng,
		logf:      logf,
		cpls:      make(map[uint64]bool),
		budget:    50 + rng.IntN(251),
		changes:   rng.IntN(3) == 0,
		fullEvery: 256,
	}
	// Some volumes start from a recovered base, with LSNs continuing above it
	// and each PG's chain starting afresh.
	if rng.IntN(4) == 0 {
		w.base = uint64(1 + rng.IntN(1000))
	}
	w.next = w.base + 1
	w.tr = quorum.NewTracker(w.base)
	w.vcl, w.vdl, w.oVDL = w.base, w.base, w.base
	npg := 1 + rng.IntN(3)
	for i := range npg {
		p := &pg{id: uint32(10 + i), byID: make(map[quorum.SegmentID]*seg)}
		var ids []quorum.SegmentID
		for range 6 {
			ids = append(ids, p.newSeg().id)
		}
		p.cfg = quorum.Config{Epoch: 1, Sets: []quorum.Set{quorum.Default(ids)}}
		w.tr.SetConfig(p.id, p.cfg)
		w.pgs = append(w.pgs, p)
	}
	w.log("seed %d: %d PGs, %d records, base %d, changes %v", seed, npg, w.budget, w.base, w.changes)
	if err := w.check(); err != nil {
		return Result{}, err
	}

	for w.budget > 0 {
		w.step++
		if err := w.restartDue(); err != nil {
			return Result{}, err
		}
		if w.rng.IntN(100) < crashPct {
			w.crash()
		}
		if w.rng.IntN(100) < checkPct {
			if err := w.checkCheck(); err != nil {
				return Result{}, err
			}
		}
		r := w.rng.IntN(100)
		switch {
		case r < 18:
			w.allocMTR()
		case r < 88 && len(w.pool) > 0:
			w.deliver(w.rng.IntN(len(w.pool)))
		case r < 95:
			w.gossip(w.pgs[w.rng.IntN(len(w.pgs))])
		case r < 97:
			w.resend(w.pgs[w.rng.IntN(len(w.pgs))], 8)
		default:
			w.membership(w.pgs[w.rng.IntN(len(w.pgs))], false)
		}
		if err := w.check(); err != nil {
			return Result{}, err
		}
	}
	if err := w.drain(); err != nil {
		return Result{}, err
	}
	return Result{Steps: w.step, Records: len(w.allocs), VDL: w.tr.VDL(), Changes: w.nchanges, Crashes: w.ncrashes}, nil
}

func (w *world) log(format string, args ...any) {
	if w.logf != nil {
		w.logf("[%d] "+format, append([]any{w.step}, args...)...)
	}
}

func (p *pg) newSeg() *seg {
	p.nextSeg++
	s := &seg{
		id:    quorum.SegmentID(fmt.Sprintf("s%d", p.nextSeg)),
		chain: segment.New(segment.State{}),
		held:  make(map[uint64]segment.Entry),
		next:  make(map[uint64]uint64),
	}
	p.segs = append(p.segs, s)
	p.byID[s.id] = s
	return s
}

// send puts m on the network, which may lose or duplicate it.
func (w *world) send(m msg) {
	if !w.lossless && w.rng.IntN(100) < dropPct {
		return
	}
	w.pool = append(w.pool, m)
	if !w.lossless && w.rng.IntN(100) < dupPct {
		w.pool = append(w.pool, m)
	}
}

// allocMTR allocates one MTR of 1-5 records over random PGs, occasionally
// leaving an LSN unused as a writer may.
func (w *world) allocMTR() {
	n := min(1+w.rng.IntN(5), w.budget)
	for i := range n {
		if w.rng.IntN(20) == 0 {
			w.next++
		}
		p := w.pgs[w.rng.IntN(len(w.pgs))]
		e := segment.Entry{LSN: w.next, PrevLSN: p.last, Epoch: 1}
		w.next++
		cpl := i == n-1
		if err := w.tr.Allocated(e.LSN, p.id, cpl); err != nil {
			panic(err) // the sim allocates in order; this is a sim bug
		}
		p.last = e.LSN
		p.lsns = append(p.lsns, e.LSN)
		p.ents = append(p.ents, e)
		w.allocs = append(w.allocs, alloc{e.LSN, p, cpl})
		if cpl {
			w.cpls[e.LSN] = true
			w.lastCPL = e.LSN
		}
		for _, id := range p.cfg.Members() {
			w.send(msg{pg: p, seg: p.byID[id], e: e})
		}
	}
	w.budget -= n
	w.log("alloc MTR of %d, last LSN %d (cpl)", n, w.next-1)
}

// resend retransmits up to limit records above the PG's PGCL, as a writer
// does on a timeout: without it a record lost on the way to every segment
// would hold VDL back forever.
func (w *world) resend(p *pg, limit int) {
	pgcl := w.tr.PGCL(p.id)
	i, _ := slices.BinarySearch(p.lsns, pgcl+1)
	n := 0
	for ; i < len(p.ents) && n < limit; i++ {
		for _, id := range p.cfg.Members() {
			w.send(msg{pg: p, seg: p.byID[id], e: p.ents[i]})
		}
		n++
	}
	w.log("resend pg%d: %d records above PGCL %d", p.id, n, pgcl)
}

func (w *world) deliver(i int) {
	m := w.pool[i]
	w.pool[i] = w.pool[len(w.pool)-1]
	w.pool = w.pool[:len(w.pool)-1]
	if m.ack {
		// An ack already in flight when its segment crashed still arrives.
		m.seg.acked = max(m.seg.acked, m.scl)
		adv := w.tr.Ack(m.pg.id, m.seg.id, m.scl)
		w.log("ack pg%d %s scl %d -> vdl advanced %v", m.pg.id, m.seg.id, m.scl, adv)
		return
	}
	if m.seg.down || m.seg.crashed > 0 {
		w.log("record %d to pg%d %s lost (down %v, crashed %v)", m.e.LSN, m.pg.id, m.seg.id, m.seg.down, m.seg.crashed > 0)
		return
	}
	v := w.offer(m.seg, m.e)
	w.log("record %d to pg%d %s: %v, scl %d", m.e.LSN, m.pg.id, m.seg.id, v, m.seg.chain.SCL())
	w.send(msg{ack: true, pg: m.pg, seg: m.seg, scl: m.seg.chain.SCL()})
}

// offer gives e to s's chain, checks the verdict against the oracle and
// records the entry if accepted.
func (w *world) offer(s *seg, e segment.Entry) segment.Verdict {
	v := s.chain.Offer(e)
	want := segment.Accepted
	if _, ok := s.held[e.LSN]; ok {
		want = segment.Duplicate
	}
	if v != want {
		// Surface through the next check rather than panicking, so the
		// failure carries the seed.
		if w.err == nil {
			w.err = fmt.Errorf("%s: Offer(%+v) = %v, want %v", s.id, e, v, want)
		}
		return v
	}
	if v == segment.Accepted {
		w.accepted++
		s.held[e.LSN] = e
		s.list = append(s.list, e)
		s.next[e.PrevLSN] = e.LSN
		for {
			n, ok := s.next[s.oscl]
			if !ok {
				break
			}
			s.oscl = n
		}
		s.dirty(w)
		// The State summary is persisted now and then, not with every
		// record: a restart must cope with a stale one.
		if w.rng.IntN(100) < persistPct {
			s.saved = s.chain.State()
		}
	}
	return v
}

func (s *seg) dirty(w *world) {
	if !slices.Contains(w.dirty, s) {
		w.dirty = append(w.dirty, s)
	}
}

func (p *pg) alive() []*seg {
	var out []*seg
	for _, s := range p.segs {
		if !s.down && s.crashed == 0 {
			out = append(out, s)
		}
	}
	return out
}

// gossip has a random live segment X pull from a random live peer Y every
// entry Y holds above X's SCL; X then reports its SCL as a heartbeat would.
func (w *world) gossip(p *pg) {
	live := p.alive()
	if len(live) < 2 {
		return
	}
	i := w.rng.IntN(len(live))
	j := w.rng.IntN(len(live) - 1)
	if j >= i {
		j++
	}
	if w.pull(p, live[i], live[j]) > 0 {
		w.send(msg{ack: true, pg: p, seg: live[i], scl: live[i].chain.SCL()})
	}
}

func (w *world) pull(p *pg, x, y *seg) int {
	from := x.chain.SCL()
	got := 0
	for _, e := range y.list {
		if e.LSN > from && w.offer(x, e) == segment.Accepted {
			got++
		}
	}
	w.log("gossip pg%d %s <- %s: %d new, scl %d", p.id, x.id, y.id, got, x.chain.SCL())
	return got
}

// membership moves a PG through a change: ABCDEF -> {ABCDEF, ABCDEG} with F
// down, then either ABCDEG once G has caught up to PGCL, or (rollback) back
// to ABCDEF when F returns. final forces completion during the drain.
func (w *world) membership(p *pg, final bool) {
	switch p.phase {
	case 0:
		if !w.changes || final || p.last == 0 {
			return
		}
		old := p.cfg.Sets[0]
		p.f = p.byID[old.Members[w.rng.IntN(len(old.Members))]]
		p.f.down = true
		p.g = p.newSeg()
		p.rollback = w.rng.IntN(3) == 0
		var members []quorum.SegmentID
		for _, id := range old.Members {
			if id == p.f.id {
				id = p.g.id
			}
			members = append(members, id)
		}
		w.setConfig(p, quorum.Config{Epoch: p.cfg.Epoch + 1, Sets: []quorum.Set{old, quorum.Default(members)}})
		p.phase = 1
		w.nchanges++
	case 1:
		if p.rollback {
			p.f.down = false
			p.g.down = true
			w.setConfig(p, quorum.Config{Epoch: p.cfg.Epoch + 1, Sets: []quorum.Set{p.cfg.Sets[0]}})
			p.phase = 2
			return
		}
		if p.g.crashed > 0 || p.g.chain.SCL() < w.tr.PGCL(p.id) {
			return // G is not complete yet
		}
		w.setConfig(p, quorum.Config{Epoch: p.cfg.Epoch + 1, Sets: []quorum.Set{p.cfg.Sets[1]}})
		p.phase = 2
	}
}

func (w *world) setConfig(p *pg, c quorum.Config) {
	if err := c.Validate(); err != nil {
		panic(err)
	}
	p.cfg = c
	w.tr.SetConfig(p.id, c)
	if got, ok := w.tr.Config(p.id); !ok || got.String() != c.String() {
		w.err = fmt.Errorf("tracker config %v, want %v", got, c)
	}
	w.log("pg%d config %v", p.id, c)
}

// drain delivers everything losslessly and gossips until quiet, then checks
// that the volume is durable up to the last CPL.
func (w *world) drain() error {
	w.lossless = true
	// Restart every crashed segment first: with too many down no write
	// quorum could form and the drain would never converge.
	for _, p := range w.pgs {
		for _, s := range p.segs {
			if s.crashed > 0 {
				if err := w.restart(p, s); err != nil {
					return err
				}
			}
		}
	}
	for round := 0; ; round++ {
		if round > 100 {
			return fmt.Errorf("drain did not converge")
		}
		w.step++
		before := w.accepted
		moved := false
		if round == 0 {
			for _, p := range w.pgs {
				w.resend(p, len(p.ents))
			}
		}
		if err := w.deliverAll(); err != nil {
			return err
		}
		for _, p := range w.pgs {
			live := p.alive()
			for _, x := range live {
				for _, y := range live {
					if x != y {
						w.pull(p, x, y)
					}
				}
				w.send(msg{ack: true, pg: p, seg: x, scl: x.chain.SCL()})
			}
			if p.phase == 1 {
				w.membership(p, true)
				moved = true
			}
		}
		if err := w.deliverAll(); err != nil {
			return err
		}
		if !moved && w.accepted == before {
			break
		}
	}
	if err := w.checkFull(); err != nil {
		return err
	}
	if got := w.tr.VDL(); got != w.lastCPL {
		return fmt.Errorf("after drain VDL = %d, want last CPL %d (VCL %d, pending %d)", got, w.lastCPL, w.tr.VCL(), w.tr.Pending())
	}
	for _, p := range w.pgs {
		if got := w.tr.PGCL(p.id); got != p.last {
			return fmt.Errorf("after drain PGCL(%d) = %d, want %d", p.id, got, p.last)
		}
		for _, id := range p.cfg.Members() {
			if s := p.byID[id]; s.chain.SCL() != p.last {
				return fmt.Errorf("after drain pg%d %s SCL = %d, want %d", p.id, id, s.chain.SCL(), p.last)
			}
		}
	}
	return nil
}

// deliverAll empties the pool. The tracker invariants are checked after
// every delivery, the segments' chains once at the end: a drain re-delivers
// whole logs in reverse, and re-deriving holes after each would be quadratic.
func (w *world) deliverAll() error {
	w.deferSegs = true
	for len(w.pool) > 0 {
		w.deliver(len(w.pool) - 1)
		if err := w.check(); err != nil {
			return err
		}
	}
	w.deferSegs = false
	return w.check()
}

// check verifies the invariants after a step. It is amortized O(1) per LSN
// plus the cost of the segments the step touched.
func (w *world) check() error {
	if w.err != nil {
		return w.err
	}
	for _, p := range w.pgs {
		got := w.tr.PGCL(p.id)
		if got < p.pgcl {
			return fmt.Errorf("PGCL(%d) went back from %d to %d", p.id, p.pgcl, got)
		}
		if got > p.last && got > w.base {
			return fmt.Errorf("PGCL(%d) = %d beyond its last LSN %d", p.id, got, p.last)
		}
		// Every LSN PGCL newly covers must be held completely by a write
		// quorum of the config in force now.
		for p.checked < len(p.lsns) && p.lsns[p.checked] <= got {
			l := p.lsns[p.checked]
			if !p.cfg.WriteQuorum(func(id quorum.SegmentID) bool { return p.byID[id].oscl >= l }) {
				return fmt.Errorf("PGCL(%d) = %d covers LSN %d, which no write quorum of %v holds (%s)", p.id, got, l, p.cfg, p.scls())
			}
			p.checked++
		}
		p.pgcl = got
	}

	vcl, vdl := w.tr.VCL(), w.tr.VDL()
	if vcl < w.vcl {
		return fmt.Errorf("VCL went back from %d to %d", w.vcl, vcl)
	}
	if vdl < w.vdl {
		return fmt.Errorf("VDL went back from %d to %d", w.vdl, vdl)
	}
	w.vcl, w.vdl = vcl, vdl
	for w.vclIdx < len(w.allocs) && w.allocs[w.vclIdx].lsn <= w.allocs[w.vclIdx].pg.pgcl {
		if w.allocs[w.vclIdx].cpl {
			w.oVDL = w.allocs[w.vclIdx].lsn
		}
		w.vclIdx++
	}
	oVCL := w.base
	if w.vclIdx > 0 {
		oVCL = w.allocs[w.vclIdx-1].lsn
	}
	if vcl != oVCL {
		return fmt.Errorf("VCL = %d, want %d from the PGCLs", vcl, oVCL)
	}
	if vdl != w.oVDL {
		return fmt.Errorf("VDL = %d, want %d (highest CPL <= VCL)", vdl, w.oVDL)
	}
	if vdl > vcl || (vdl != w.base && !w.cpls[vdl]) {
		return fmt.Errorf("VDL %d is not base or a CPL <= VCL %d", vdl, vcl)
	}
	for w.vdlIdx < len(w.allocs) && w.allocs[w.vdlIdx].lsn <= vdl {
		a := w.allocs[w.vdlIdx]
		n := 0
		for _, s := range a.pg.segs {
			if s.oscl >= a.lsn {
				n++
			}
		}
		if n < 4 {
			return fmt.Errorf("LSN %d <= VDL %d held completely by only %d segments of pg%d (%s)", a.lsn, vdl, n, a.pg.id, a.pg.scls())
		}
		w.vdlIdx++
	}

	if w.deferSegs {
		return nil
	}
	for _, s := range w.dirty {
		if err := s.checkIncremental(); err != nil {
			return err
		}
	}
	w.dirty = w.dirty[:0]
	if w.step%w.fullEvery == 0 {
		return w.checkFull()
	}
	return nil
}

func (p *pg) scls() string {
	b := []byte{}
	for i, s := range p.segs {
		if i > 0 {
			b = append(b, ' ')
		}
		b = fmt.Appendf(b, "%s:%d", s.id, s.oscl)
		if s.down {
			b = append(b, '!')
		}
		if s.crashed > 0 {
			b = append(b, '#')
		}
	}
	return string(b)
}

// checkIncremental compares the chain with the oracle's SCL and with holes
// derived from the held entries above it.
func (s *seg) checkIncremental() error {
	if s.crashed > 0 {
		return nil
	}
	if got := s.chain.SCL(); got != s.oscl {
		return fmt.Errorf("%s: SCL = %d, oracle %d", s.id, got, s.oscl)
	}
	var above []uint64
	for _, e := range s.list {
		if e.LSN > s.oscl {
			above = append(above, e.LSN)
		}
	}
	return s.checkHoles(above)
}

func (s *seg) checkHoles(above []uint64) error {
	slices.Sort(above)
	var want []segment.Gap
	below := s.oscl
	highest := s.oscl
	for _, l := range above {
		if _, ok := s.held[s.held[l].PrevLSN]; !ok || s.held[l].PrevLSN <= s.oscl {
			want = append(want, segment.Gap{After: below, Before: l})
		}
		below = l
		highest = l
	}
	if got := s.chain.Holes(); !slices.Equal(got, want) {
		return fmt.Errorf("%s: Holes = %v, want %v (SCL %d)", s.id, got, want, s.oscl)
	}
	if got := s.chain.Highest(); got != highest {
		return fmt.Errorf("%s: Highest = %d, want %d", s.id, got, highest)
	}
	return nil
}

// checkFull re-derives every segment's SCL from scratch by walking backlinks
// from the start over the entries it holds.
func (w *world) checkFull() error {
	for _, p := range w.pgs {
		for _, s := range p.segs {
			if err := s.checkBrute(); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkBrute is checkFull for one segment. A crashed segment has no chain;
// its persisted entries must still agree with the oracle.
func (s *seg) checkBrute() error {
	byPrev := make(map[uint64]uint64, len(s.held))
	for _, e := range s.list {
		byPrev[e.PrevLSN] = e.LSN
	}
	scl := uint64(0)
	for {
		n, ok := byPrev[scl]
		if !ok {
			break
		}
		scl = n
	}
	if s.oscl != scl {
		return fmt.Errorf("%s: oracle SCL %d, brute force %d", s.id, s.oscl, scl)
	}
	if s.crashed > 0 {
		return nil
	}
	if got := s.chain.SCL(); got != scl {
		return fmt.Errorf("%s: SCL = %d, brute force %d (oracle %d)", s.id, got, scl, s.oscl)
	}
	var above []uint64
	for _, e := range s.list {
		if e.LSN > scl {
			above = append(above, e.LSN)
		}
	}
	return s.checkHoles(above)
}
