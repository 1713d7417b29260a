// Package sim runs the pure core (quorum.Tracker, segment.Chain and
// recovery) through seeded random schedules: a writer, a few PGs of six
// segments on storage nodes in three AZs, a network that drops, duplicates
// and reorders records and acks, gossip between segments, segment crashes,
// node failures, drains and removals, membership changes with dual quorums
// that the control plane's own policy chooses and its catalog transitions
// apply (control.PlanRepair, control.ApplyBegin and the rest; see
// repair.go), hydration of joining segments, and writer crashes followed by
// recovery under a new epoch (see recover.go). After every step it checks
// the core's answers against oracles and the durability invariants, and
// now and then reads a PG at the VDL from a segment the routing would
// choose and checks it against the history.
//
// A run is a pure function of its seed, so a failing seed replays exactly.
package sim

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/borealis-db/borealis/internal/control"
	"github.com/borealis-db/borealis/internal/quorum"
	"github.com/borealis-db/borealis/internal/recovery"
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

// maxSteps bounds a run: a schedule that stops making progress is a failure,
// not a hang.
const maxSteps = 100000

// Result summarizes a successful run.
type Result struct {
	Steps   int
	Records int
	VDL     uint64
	Changes int
	Crashes int

	// Repair, as control.PlanRepair decided it (repair.go).
	NodeFailures int
	Completes    int
	Rollbacks    int
	Retargets    int
	Waits        int // passes in which a PG waited for a spare
	Hydrations   int // joining segments that finished copying
	StaleMembers int // writer requests refused under an older membership epoch
	Reads        int // reads at a read point checked against the history

	DurableTimeouts int // recoveries whose tails did not become durable in time (see recov.waited)

	// Writer crashes and recoveries.
	WriterCrashes int
	Zombies       int // crashed writers that kept running, fenced or not
	Recoveries    int // recoveries that completed (a new writer started)
	Interrupted   int // recoveries whose writer crashed midway
	Failed        int // recoveries that gave up (no read quorum, or Decide refused) and were redone under a newer epoch
	Changed       int // of those, Decide refused headers of a segment truncated after it answered
	Truncated     int // records truncations dropped from segments
	Refused       int // writer requests a segment refused (fenced, stale or truncated)
	Epoch         uint64
}

// seg is one segment (one storage node's segment of the PG): the chain under
// test plus an oracle's copy of what it holds.
type seg struct {
	id    quorum.SegmentID
	chain *segment.Chain
	held  map[uint64]segment.Entry
	list  []segment.Entry // accept order: gossip iterates this, not the map, to stay deterministic

	// Oracle: a second, simpler SCL. next never forgets, unlike the
	// chain's index, and checkFull re-derives everything from held alone.
	next  map[uint64]uint64
	oscl  uint64
	above map[uint64]bool // held LSNs above oscl

	down bool // partitioned or dead: deliveries are lost, no gossip (syncDown)

	// The storage node the segment is on, and what storage knows of the
	// PG's membership there: the membership epoch last declared to it or
	// carried by a writer's request; declared (the control plane or the
	// initial placement declared it; until then it is down); hydrating (a
	// joining segment copying from a peer: it takes writes but acks none,
	// gossips not and answers no recovery, so it counts toward no quorum);
	// retired (it left the PG).
	node      *node
	mem       uint64
	declared  bool
	hydrating bool
	hyd       *hydration
	retired   bool
	// retireOwed: it left the PG and has not been told (its node is down).
	retireOwed bool

	// Crash and restart. Every accepted entry is persisted (held, list:
	// a node acks only after fsync); saved is the State last persisted,
	// which may lag the chain's. While crashed > 0 the chain is gone (nil),
	// deliveries are lost and the segment neither acks nor gossips; the
	// count is the steps left until restart.
	saved   segment.State
	crashed int
	acked   uint64 // highest SCL of this segment's acks a tracker saw since the last truncation
	crashes int

	// What the node persists besides the chain (synced before it answers):
	// the volume epoch it has seen (a recovery's fence, a writer's request,
	// a truncation or a newer record pulled from a peer), and the highest
	// VDL a writer told it.
	fence   uint64
	vdlSeen uint64
	// truncs is the oracle's list of the truncations applied, in the order
	// the chain got them; tgen counts them, so that an ack sent before a
	// truncation does not count as one of after it.
	truncs []segment.Truncation
	tgen   int
	// recheck: the segment's held records need a full checkHeld (it was
	// truncated); otherwise each is checked as it is accepted.
	recheck bool
}

type pg struct {
	id   uint32
	idx  int // in world.pgs
	segs []*seg
	byID map[quorum.SegmentID]*seg
	cfg  quorum.Config

	// cat is the catalog's record of the PG; cfg is its quorum config.
	// onNode is the PG's segment on each node of cat's sets.
	cat     control.PG
	onNode  map[string]*seg
	nextSeg int
}

// wpg is a writer's view of one PG.
type wpg struct {
	last uint64          // last LSN allocated in this PG (or the recovered tail): the next backlink
	lsns []uint64        // allocated LSNs of this PG, ascending
	ents []segment.Entry // the records, aligned with lsns

	pgcl    uint64 // PGCL last observed from the tracker
	checked int    // lsns[:checked] were verified durable when PGCL covered them
}

// writer is one writer instance: the first one, or one that a recovery
// started under a newer epoch.
type writer struct {
	epoch  uint64
	tr     *quorum.Tracker
	base   uint64
	pgs    []*wpg // by pg.idx
	allocs []alloc
	cpls   map[uint64]bool
	next   uint64 // next LSN to allocate
	// truncs are the PGs' recovery truncations this writer declares with
	// every request (nil for the first writer).
	truncs map[uint32][]segment.Truncation

	lastCPL  uint64
	vcl, vdl uint64 // last observed
	vclIdx   int    // allocs[:vclIdx] are <= the oracle VCL
	oVDL     uint64 // oracle VDL
	vdlIdx   int    // allocs[:vdlIdx] were checked held by 4 when VDL covered them

	// A crashed writer is dead: it does nothing, and acks to it are lost.
	// A zombie is a crashed writer that does not know it (its lease
	// expired behind a partition): for zombie more steps it keeps
	// allocating, sending and counting acks, until storage fences it.
	dead   bool
	zombie int
	// live: no recovery under a newer epoch has decided yet, so what the
	// writer allocates may still end up at or below a recovered VDL.
	live bool
	// ceiling and through: the lowest VDL and Through of the recoveries
	// decided after this writer. Its VDL must never pass ceiling (it would
	// have acknowledged a commit the new writer dropped), and it never
	// allocated above through (LAL).
	ceiling, through uint64
}

type alloc struct {
	lsn uint64
	pg  *pg
	cpl bool
	e   segment.Entry
}

type msgKind uint8

const (
	kRecord   msgKind = iota // writer -> segment: a record (e.LSN 0: a keepalive)
	kAck                     // segment -> writer: its SCL
	kTrunc                   // recovering writer -> segment: Truncate
	kTruncAck                // segment -> recovering writer
)

type msg struct {
	kind msgKind
	pg   *pg
	seg  *seg
	wr   *writer // the writer that sent the record, or that the ack is for
	rc   *recov  // the recovery that sent the truncation, or that the ack is for
	e    segment.Entry
	vdl  uint64 // the VDL a writer tells with its request
	scl  uint64
	gen  int    // seg.tgen when the ack was sent
	mem  uint64 // the membership epoch a writer's request counts its acks under
}

// histRec is a record of the history: the one record at its LSN that a
// reader of the volume may see once the VDL covers it.
type histRec struct {
	e   segment.Entry
	pg  *pg
	cpl bool
}

type recKey struct {
	epoch, lsn uint64
}

type world struct {
	opt  Options
	rng  *rand.Rand
	logf func(string, ...any)

	pgs       []*pg
	pool      []msg
	lal       uint64
	firstBase uint64
	budget    int

	cur     *writer   // the writer in office; nil while a recovery runs
	writers []*writer // every writer, oldest first
	epochs  uint64    // the newest epoch the control plane granted
	rec     *recov    // the recovery in progress, if any
	prior   []recovery.Prior

	// hist is the history so far: for each LSN, the record a reader may
	// see once the VDL covers it. Allocations of a live writer enter it;
	// a recovery's decision removes everything above its VDL.
	hist  map[uint64]histRec
	cplOf map[recKey]bool // every record ever made: is it a CPL?
	// curEpoch is the epoch of the last recovery that decided (0: none).
	// A segment whose newest truncation is of curEpoch holds nothing
	// outside hist.
	curEpoch uint64

	progress      int // accepted records and applied truncations
	deferSegs     bool
	err           error // first failure noticed outside check
	changes       bool
	writerCrashes int // per mille per step; 0: this run never crashes the writer
	lossless      bool
	draining      bool
	step          int
	dirty         []*seg
	fullEvery     int
	res           Result

	// The control plane's view (repair.go).
	nodes    []*node
	nodeByID map[string]*node
	load     control.Load
	reports  map[control.PGKey]map[string]control.DeclaredState
	admin    bool // a node was drained or removed
	// maxChanges is RepairView.MaxChanges (0: no bound).
	maxChanges int
}

// Options select what a run may do beyond the default schedule.
type Options struct {
	// Interrupt lets a recovering writer crash midway, leaving a recovery
	// recorded in the control plane that few or no segments applied (see
	// TestInterruptedRecoveryKeepsAcknowledgedCommits for the bug this
	// found). On in the tests by default.
	Interrupt bool
}

// Run simulates one seed with the default options. logf, if not nil,
// receives a line per step. The error, if any, describes the first violated
// invariant.
func Run(seed uint64, logf func(string, ...any)) (Result, error) {
	return RunWith(seed, Options{}, logf)
}

// RunWith simulates one seed with the given options.
func RunWith(seed uint64, opt Options, logf func(string, ...any)) (Result, error) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	w := &world{
		opt:       opt,
		rng:       rng,
		logf:      logf,
		budget:    50 + rng.IntN(251),
		changes:   rng.IntN(3) == 0,
		fullEvery: 256,
		hist:      make(map[uint64]histRec),
		cplOf:     make(map[recKey]bool),
	}
	if rng.IntN(3) != 0 {
		w.writerCrashes = 2 + rng.IntN(9)
	}
	// A small allocation limit holds the writer back often (and keeps
	// recovery's truncation ranges short); a large one rarely.
	w.lal = uint64(100 + rng.IntN(400))
	if rng.IntN(3) == 0 {
		w.lal = uint64(8 + rng.IntN(57))
	}
	// Some volumes start from a recovered base, with LSNs continuing above it
	// and each PG's chain starting afresh; the writer before told every
	// segment that VDL.
	if rng.IntN(4) == 0 {
		w.firstBase = uint64(1 + rng.IntN(1000))
	}
	npg := 1 + rng.IntN(3)
	for i := range npg {
		w.pgs = append(w.pgs, &pg{id: uint32(10 + i), idx: i, byID: make(map[quorum.SegmentID]*seg)})
	}
	w.placeNodes()
	for _, p := range w.pgs {
		for _, cs := range p.cat.Segments {
			s := w.segFor(p, cs.Node, segment.State{})
			s.vdlSeen = w.firstBase
			s.declared, s.mem = true, p.cat.MembershipEpoch
			s.syncDown()
		}
		p.cfg = p.cfgOf()
	}
	w.epochs = 1
	w.cur = w.newWriter(1, w.firstBase, nil, nil)
	w.log("seed %d: %d PGs, %d records, base %d, LAL %d, changes %v, writer crashes %d‰",
		seed, npg, w.budget, w.firstBase, w.lal, w.changes, w.writerCrashes)
	if err := w.check(); err != nil {
		return Result{}, err
	}

	for w.budget > 0 {
		w.step++
		if w.step > maxSteps {
			return Result{}, fmt.Errorf("no progress after %d steps (recovery %v, budget %d)", w.step, w.rec != nil, w.budget)
		}
		if err := w.restartDue(); err != nil {
			return Result{}, err
		}
		w.zombiesAge()
		w.nodesStep()
		w.hydrateStep(false)
		if w.step%repairEvery == 0 {
			w.repairPass()
		}
		if w.cur != nil && w.rng.IntN(100) < watchPct {
			for _, p := range w.pgs {
				w.follow(w.cur, p)
			}
		}
		if w.rng.IntN(100) < crashPct {
			w.crash()
		}
		if w.cur != nil && w.rng.IntN(1000) < w.writerCrashes {
			w.crashWriter()
		}
		if w.rec != nil && w.rng.IntN(100) < recoverStepPct {
			w.recoverStep()
		}
		if w.rng.IntN(100) < checkPct {
			if err := w.checkCheck(); err != nil {
				return Result{}, err
			}
		}
		r := w.rng.IntN(100)
		switch {
		case r < 18:
			if wr := w.actor(); wr != nil {
				w.allocMTR(wr)
			}
		case r < 88 && len(w.pool) > 0:
			// The more is in flight, the more arrives per step: a
			// backlog of stale duplicates must not starve the network.
			for k := 1 + len(w.pool)/32; k > 0 && len(w.pool) > 0; k-- {
				w.deliver(w.rng.IntN(len(w.pool)))
			}
		case r < 95:
			w.gossip(w.pgs[w.rng.IntN(len(w.pgs))])
		case r < 97:
			if wr := w.actor(); wr != nil {
				w.resend(wr, w.pgs[w.rng.IntN(len(w.pgs))], 8)
			}
		default:
			w.readAt()
		}
		if err := w.check(); err != nil {
			return Result{}, err
		}
	}
	if err := w.drain(); err != nil {
		return Result{}, err
	}
	res := w.res
	res.Steps = w.step
	for _, wr := range w.writers {
		res.Records += len(wr.allocs)
	}
	res.VDL = w.cur.tr.VDL()
	res.Epoch = w.cur.epoch
	return res, nil
}

func (w *world) log(format string, args ...any) {
	if w.logf != nil {
		w.logf("[%d] "+format, append([]any{w.step}, args...)...)
	}
}

// fail records the first failure noticed outside check; the next check
// returns it, so that it carries the seed.
func (w *world) fail(err error) {
	if w.err == nil {
		w.err = err
	}
}

// newSeg adds a segment whose chain starts from st.
func (p *pg) newSeg(st segment.State) *seg {
	p.nextSeg++
	s := &seg{
		id:     quorum.SegmentID(fmt.Sprintf("s%d", p.nextSeg)),
		chain:  segment.New(st),
		held:   make(map[uint64]segment.Entry),
		next:   make(map[uint64]uint64),
		above:  make(map[uint64]bool),
		saved:  st,
		truncs: slices.Clone(st.Truncations),
	}
	p.segs = append(p.segs, s)
	p.byID[s.id] = s
	return s
}

// newWriter starts a writer of the given epoch whose volume is durable up to
// base, each PG's chain ending at tails[pg].
func (w *world) newWriter(epoch, base uint64, tails map[uint32]uint64, truncs map[uint32][]segment.Truncation) *writer {
	wr := &writer{
		epoch: epoch, tr: quorum.NewTracker(base), base: base, next: base + 1,
		cpls: make(map[uint64]bool), truncs: truncs,
		lastCPL: base, vcl: base, vdl: base, oVDL: base,
		live: true, ceiling: math.MaxUint64, through: math.MaxUint64,
	}
	for _, p := range w.pgs {
		wr.pgs = append(wr.pgs, &wpg{last: tails[p.id]})
		wr.tr.SetConfig(p.id, p.cfg)
	}
	w.writers = append(w.writers, wr)
	return wr
}

// actor is the writer that takes a writer's step: the one in office, or now
// and then a zombie.
func (w *world) actor() *writer {
	var zs []*writer
	for _, wr := range w.writers {
		if wr != w.cur && !wr.dead {
			zs = append(zs, wr)
		}
	}
	if len(zs) > 0 && (w.cur == nil || w.rng.IntN(2) == 0) {
		return zs[w.rng.IntN(len(zs))]
	}
	return w.cur
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

// allocMTR has wr allocate one MTR of 1-5 records over random PGs, within
// its allocation limit (VDL + LAL). A writer allocates LSNs densely
// (recovery relies on it); in runs without writer crashes it occasionally
// leaves one unused, which the tracker must cope with.
func (w *world) allocMTR(wr *writer) {
	n := 1 + w.rng.IntN(5)
	if wr == w.cur {
		n = min(n, w.budget)
	}
	if wr.next+uint64(n)-1 > wr.tr.VDL()+w.lal {
		// Held back: what holds the VDL back is resent when the wait
		// times out.
		w.log("writer %d: MTR of %d held back by the LAL (next %d, VDL %d)", wr.epoch, n, wr.next, wr.tr.VDL())
		if w.rng.IntN(2) == 0 {
			lag := w.pgs[0]
			for _, p := range w.pgs {
				if wr.tr.PGCL(p.id) < wr.tr.PGCL(lag.id) && len(wr.pgs[p.idx].lsns) > 0 {
					lag = p
				}
			}
			w.resend(wr, lag, 4)
		}
		return
	}
	for i := range n {
		if w.writerCrashes == 0 && w.rng.IntN(20) == 0 && wr.next+uint64(n-i) <= wr.tr.VDL()+w.lal {
			wr.next++
		}
		p := w.pgs[w.rng.IntN(len(w.pgs))]
		wp := wr.pgs[p.idx]
		e := segment.Entry{LSN: wr.next, PrevLSN: wp.last, Epoch: wr.epoch}
		wr.next++
		cpl := i == n-1
		if err := wr.tr.Allocated(e.LSN, p.id, cpl); err != nil {
			panic(err) // the sim allocates in order; this is a sim bug
		}
		if e.LSN > wr.through {
			w.fail(fmt.Errorf("writer %d allocated LSN %d above the Through %d of a recovery after it (LAL %d, VDL %d)", wr.epoch, e.LSN, wr.through, w.lal, wr.tr.VDL()))
		}
		wp.last = e.LSN
		wp.lsns = append(wp.lsns, e.LSN)
		wp.ents = append(wp.ents, e)
		wr.allocs = append(wr.allocs, alloc{e.LSN, p, cpl, e})
		w.cplOf[recKey{e.Epoch, e.LSN}] = cpl
		if wr.live {
			w.hist[e.LSN] = histRec{e: e, pg: p, cpl: cpl}
		}
		if cpl {
			wr.cpls[e.LSN] = true
			wr.lastCPL = e.LSN
		}
		cfg, _ := wr.tr.Config(p.id)
		for _, id := range cfg.Members() {
			w.send(msg{kind: kRecord, pg: p, seg: p.byID[id], wr: wr, e: e, vdl: wr.tr.VDL(), mem: cfg.Epoch})
		}
	}
	if wr == w.cur {
		w.budget -= n
	}
	w.log("writer %d: alloc MTR of %d, last LSN %d (cpl)", wr.epoch, n, wr.next-1)
}

// resend retransmits up to limit records above the PG's PGCL, as a writer
// does on a timeout: without it a record lost on the way to every segment
// would hold VDL back forever. With nothing to resend it sends keepalives,
// which carry the VDL and the declaration (with the truncations) too.
func (w *world) resend(wr *writer, p *pg, limit int) {
	wp := wr.pgs[p.idx]
	pgcl := wr.tr.PGCL(p.id)
	i, _ := slices.BinarySearch(wp.lsns, pgcl+1)
	n := 0
	cfg, _ := wr.tr.Config(p.id)
	for ; i < len(wp.ents) && n < limit; i++ {
		for _, id := range cfg.Members() {
			w.send(msg{kind: kRecord, pg: p, seg: p.byID[id], wr: wr, e: wp.ents[i], vdl: wr.tr.VDL(), mem: cfg.Epoch})
		}
		n++
	}
	if n == 0 {
		for _, id := range cfg.Members() {
			w.send(msg{kind: kRecord, pg: p, seg: p.byID[id], wr: wr, vdl: wr.tr.VDL(), mem: cfg.Epoch})
		}
	}
	w.log("writer %d: resend pg%d: %d records above PGCL %d", wr.epoch, p.id, n, pgcl)
}

func (w *world) deliver(i int) {
	m := w.pool[i]
	w.pool[i] = w.pool[len(w.pool)-1]
	w.pool = w.pool[:len(w.pool)-1]
	switch m.kind {
	case kAck:
		if m.gen == m.seg.tgen {
			// An ack already in flight when its segment crashed still arrives.
			m.seg.acked = max(m.seg.acked, m.scl)
		}
		if m.wr.dead {
			w.log("ack pg%d %s scl %d to dead writer %d lost", m.pg.id, m.seg.id, m.scl, m.wr.epoch)
			return
		}
		adv := m.wr.tr.Ack(m.pg.id, m.seg.id, m.scl)
		w.log("ack pg%d %s scl %d to writer %d -> vdl advanced %v", m.pg.id, m.seg.id, m.scl, m.wr.epoch, adv)
	case kRecord:
		w.deliverRecord(m)
	case kTrunc:
		w.deliverTrunc(m)
	case kTruncAck:
		w.deliverTruncAck(m)
	}
}

// deliverRecord is a storage node's ingest of one writer request: the
// truncations its declaration carries first, then the epoch checks (a node
// that has seen a newer epoch fences the writer), then the chain's Check of
// the whole request; a refused request changes nothing else. An accepted
// one raises the epoch, records the VDL told, is offered, and acked.
func (w *world) deliverRecord(m msg) {
	s, wr, e := m.seg, m.wr, m.e
	if s.down || s.crashed > 0 {
		w.log("record %d (epoch %d) to pg%d %s lost (down %v, crashed %v)", e.LSN, wr.epoch, m.pg.id, s.id, s.down, s.crashed > 0)
		return
	}
	if ts := wr.truncs[m.pg.id]; len(ts) > 0 && lacksTruncation(s.chain, ts) {
		if !w.truncate(m.pg, s, wr.epoch, ts) {
			w.refused(m, "its declaration's truncations: the epoch is stale")
			return
		}
	}
	if wr.epoch < s.fence || wr.epoch < s.chain.Epoch() {
		w.refused(m, fmt.Sprintf("epoch %d, the node has seen %d and its chain %d", wr.epoch, s.fence, s.chain.Epoch()))
		return
	}
	if m.mem < s.mem {
		// Counted under an older membership, the record could miss the
		// write quorum of a newer set: nothing is stored, and the writer
		// takes the PG's membership from the catalog again.
		w.res.StaleMembers++
		w.log("record %d (epoch %d) to pg%d %s refused: membership epoch %d, the segment holds %d", e.LSN, wr.epoch, m.pg.id, s.id, m.mem, s.mem)
		w.follow(wr, m.pg)
		return
	}
	if e.LSN != 0 {
		if i, v := s.chain.Check([]segment.Entry{e}); i >= 0 {
			if want := s.expect(e, s.chain.Epoch()); v != want {
				w.fail(fmt.Errorf("%s: Check(%+v) = %v, the oracle says %v", s.id, e, v, want))
			}
			w.refused(m, v.String())
			return
		}
	}
	s.fence = max(s.fence, wr.epoch)
	s.mem = max(s.mem, m.mem)
	s.chain.ObserveEpoch(wr.epoch)
	s.vdlSeen = max(s.vdlSeen, m.vdl)
	if e.LSN != 0 {
		v := w.offer(s, e)
		w.log("record %d (epoch %d) to pg%d %s: %v, scl %d", e.LSN, wr.epoch, m.pg.id, s.id, v, s.chain.SCL())
	} else {
		w.log("keepalive (epoch %d, vdl %d) to pg%d %s: scl %d", wr.epoch, m.vdl, m.pg.id, s.id, s.chain.SCL())
	}
	if s.hydrating {
		return // it counts toward no quorum until it is complete
	}
	w.send(msg{kind: kAck, pg: m.pg, seg: s, wr: wr, scl: s.chain.SCL(), gen: s.tgen})
}

// refused: a segment refused a writer's request. The writer in office is
// never refused (its records continue the chain its recovery decided);
// a zombie may learn from the refusal that it is fenced, and stop.
func (w *world) refused(m msg, why string) {
	w.res.Refused++
	w.log("record %d (epoch %d) to pg%d %s refused: %s", m.e.LSN, m.wr.epoch, m.pg.id, m.seg.id, why)
	if m.wr == w.cur {
		w.fail(fmt.Errorf("pg%d %s refused the request of the writer in office (epoch %d, record %+v): %s (truncations %v, SCL %d)",
			m.pg.id, m.seg.id, m.wr.epoch, m.e, why, m.seg.truncs, m.seg.chain.SCL()))
		return
	}
	if !m.wr.dead && w.rng.IntN(2) == 0 {
		m.wr.dead = true
		w.log("writer %d learns it is fenced and stops", m.wr.epoch)
	}
}

func lacksTruncation(c *segment.Chain, ts []segment.Truncation) bool {
	for _, t := range ts {
		if _, ok := c.TruncationFor(t.Epoch); !ok {
			return true
		}
	}
	return false
}

// expect is the oracle's verdict on offering e to s: Chain.Offer's rules
// applied to what the oracle knows s holds (held, oscl) and the truncations
// it applied, given the chain's epoch.
func (s *seg) expect(e segment.Entry, epoch uint64) segment.Verdict {
	if e.LSN == 0 || e.PrevLSN >= e.LSN {
		return segment.Invalid
	}
	vouched := false
	for _, t := range s.truncs {
		if e.Epoch >= t.Epoch {
			continue
		}
		switch {
		case e.LSN <= t.After:
			vouched = true
		case e.LSN <= t.Through:
			return segment.Truncated
		default:
			return segment.StaleEpoch
		}
	}
	if _, ok := s.held[e.LSN]; ok || e.LSN <= s.oscl {
		return segment.Duplicate
	}
	if e.Epoch < epoch && !vouched {
		return segment.StaleEpoch
	}
	if _, ok := s.next[e.PrevLSN]; ok || e.PrevLSN < s.oscl {
		return segment.Invalid
	}
	return segment.Accepted
}

// offer gives e to s's chain, checks the verdict against the oracle and
// records the entry if accepted.
func (w *world) offer(s *seg, e segment.Entry) segment.Verdict {
	want := s.expect(e, s.chain.Epoch())
	v := s.chain.Offer(e)
	if v != want {
		// Surface through the next check rather than panicking, so the
		// failure carries the seed.
		w.fail(fmt.Errorf("%s: Offer(%+v) = %v, want %v", s.id, e, v, want))
		return v
	}
	if v == segment.Duplicate {
		if h := s.held[e.LSN]; h != e {
			// Two records at one LSN: the segment would ack an SCL that
			// counts a record it does not hold.
			w.fail(fmt.Errorf("%s: Offer(%+v) = Duplicate, but it holds %+v at that LSN", s.id, e, h))
		}
	}
	if v == segment.Accepted {
		w.progress++
		s.held[e.LSN] = e
		s.list = append(s.list, e)
		s.next[e.PrevLSN] = e.LSN
		s.above[e.LSN] = true
		s.advance()
		if err := w.checkEntry(s, e); err != nil {
			w.fail(err)
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

// advance moves the oracle's SCL along the backlinks and forgets what it
// passes from the above set.
func (s *seg) advance() {
	moved := false
	for {
		n, ok := s.next[s.oscl]
		if !ok {
			break
		}
		s.oscl = n
		moved = true
	}
	if moved {
		for l := range s.above {
			if l <= s.oscl {
				delete(s.above, l)
			}
		}
	}
}

func (s *seg) dirty(w *world) {
	if !slices.Contains(w.dirty, s) {
		w.dirty = append(w.dirty, s)
	}
}

func (p *pg) alive() []*seg {
	var out []*seg
	for _, s := range p.segs {
		if !s.down && s.crashed == 0 && !s.hydrating {
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
		w.heartbeat(p, live[i])
	}
}

// heartbeat reports s's SCL to the writer in office, as the response to a
// keepalive on the writer's stream would: only once s has applied the
// writer's truncations (the stream's declaration brings them first) and has
// not seen a newer epoch.
func (w *world) heartbeat(p *pg, s *seg) {
	wr := w.cur
	if wr == nil || s.hydrating || wr.epoch < s.fence || wr.epoch < s.chain.Epoch() || lacksTruncation(s.chain, wr.truncs[p.id]) {
		return
	}
	w.send(msg{kind: kAck, pg: p, seg: s, wr: wr, scl: s.chain.SCL(), gen: s.tgen})
}

// pull is a storage node's gossip pull of x from y: the truncations y has
// applied and x lacks first (a newer writer's records must not link onto
// records its recovery dropped), then every record y holds above x's SCL.
// Records from a peer raise x's epoch to theirs.
func (w *world) pull(p *pg, x, y *seg) int {
	if ts := y.chain.State().Truncations; lacksTruncation(x.chain, ts) {
		w.truncate(p, x, 0, ts)
		w.log("gossip pg%d %s <- %s: learnt truncations %v", p.id, x.id, y.id, ts)
	}
	from := x.chain.SCL()
	got := 0
	newest := uint64(0)
	for _, e := range y.list {
		if e.LSN > from {
			newest = max(newest, e.Epoch)
			if w.offer(x, e) == segment.Accepted {
				got++
			}
		}
	}
	x.fence = max(x.fence, newest)
	w.log("gossip pg%d %s <- %s: %d new, scl %d", p.id, x.id, y.id, got, x.chain.SCL())
	return got
}

// truncate applies ts to s as a storage node's truncate does: refused (false)
// when epoch, the asking writer's, is older than an epoch s has seen (0: the
// truncations were learnt from a peer, which records what past recoveries
// decided whoever asks); otherwise the ones s lacks are applied oldest first,
// the older epochs' records in their ranges deleted from the store, and the
// result persisted at once.
func (w *world) truncate(p *pg, s *seg, epoch uint64, ts []segment.Truncation) bool {
	if epoch > 0 && (epoch < s.fence || epoch < s.chain.Epoch()) {
		return false
	}
	ts = slices.Clone(ts)
	slices.SortStableFunc(ts, func(a, b segment.Truncation) int { return cmp.Compare(a.Epoch, b.Epoch) })
	var missing []segment.Truncation
	for _, t := range ts {
		if have, ok := s.chain.TruncationFor(t.Epoch); ok {
			if have != t {
				w.fail(fmt.Errorf("pg%d %s: truncation %+v of epoch %d, but it applied %+v", p.id, s.id, t, t.Epoch, have))
				return false
			}
			continue
		}
		if len(missing) > 0 && missing[len(missing)-1] == t {
			continue
		}
		missing = append(missing, t)
	}
	raiseTo := epoch
	for _, t := range missing {
		raiseTo = max(raiseTo, t.Epoch)
	}
	if epoch > 0 {
		defer s.chain.ObserveEpoch(epoch)
	}
	s.fence = max(s.fence, raiseTo)
	if len(missing) == 0 {
		return true
	}
	sclBefore := s.chain.SCL()
	for _, t := range missing {
		drop := s.chain.Truncate(t)
		var gone []uint64
		for l, e := range s.held {
			if l > t.After && l <= t.Through && e.Epoch < t.Epoch {
				gone = append(gone, l)
			}
		}
		slices.Sort(gone)
		for _, l := range drop {
			if _, ok := slices.BinarySearch(gone, l); !ok {
				w.fail(fmt.Errorf("pg%d %s: Truncate(%+v) drops LSN %d, which is not an older epoch's record in its range (held %+v)", p.id, s.id, t, l, s.held[l]))
			}
		}
		for _, l := range gone {
			delete(s.held, l)
		}
		s.truncs = append(s.truncs, t)
		w.res.Truncated += len(gone)
		w.progress++
		w.log("pg%d %s applies truncation %+v: drops %d records (%d above its SCL), scl %d -> %d",
			p.id, s.id, t, len(gone), len(drop), sclBefore, s.chain.SCL())
	}
	s.list = slices.DeleteFunc(s.list, func(e segment.Entry) bool { _, ok := s.held[e.LSN]; return !ok })
	clear(s.next)
	clear(s.above)
	for _, e := range s.list {
		s.next[e.PrevLSN] = e.LSN
		s.above[e.LSN] = true
	}
	s.oscl = 0
	s.advance()
	s.recheck = true
	s.saved = s.chain.State()
	s.tgen++
	s.acked = s.chain.SCL()
	s.dirty(w)
	return true
}

// drain finishes any recovery and then delivers everything losslessly and
// gossips until quiet; then it checks that the volume is durable up to the
// last CPL and that every member of every PG holds exactly the history.
func (w *world) drain() error {
	w.lossless = true
	w.draining = true
	for _, wr := range w.writers {
		if wr != w.cur {
			wr.dead = true
		}
	}
	// Bring every node back and restart every crashed segment first: with
	// too many down no write quorum could form and the drain would never
	// converge.
	for _, n := range w.nodes {
		if n.down {
			w.setNodeDown(n, false)
		}
	}
	for _, p := range w.pgs {
		for _, s := range p.segs {
			if s.crashed > 0 {
				if err := w.restart(p, s); err != nil {
					return err
				}
			}
		}
	}
	for round := 0; w.cur == nil; round++ {
		if round > 500 {
			return fmt.Errorf("drain: recovery of epoch %d did not finish (phase %d)", w.rec.epoch, w.rec.phase)
		}
		w.step++
		w.recoverStep()
		if err := w.deliverAll(); err != nil {
			return err
		}
		w.gossipAll()
		if err := w.deliverAll(); err != nil {
			return err
		}
	}
	wr := w.cur
	for round := 0; ; round++ {
		if round > 100 {
			return fmt.Errorf("drain did not converge")
		}
		w.step++
		before := w.progress
		moved := false
		if round == 0 {
			for _, p := range w.pgs {
				w.resend(wr, p, len(wr.pgs[p.idx].ents))
				moved = true
			}
		}
		if err := w.deliverAll(); err != nil {
			return err
		}
		w.gossipAll()
		// Repair finishes: every node is back, so each change completes or
		// rolls back as PlanRepair says, and the writer follows.
		w.hydrateStep(true)
		w.repairPass()
		for _, p := range w.pgs {
			w.follow(wr, p)
			if wr.tr.PGCL(p.id) < wr.pgs[p.idx].last {
				// Resent under the writer's membership now: what
				// members of an older one refused.
				w.resend(wr, p, len(wr.pgs[p.idx].ents))
				moved = true
			}
			if p.cat.Change != nil {
				moved = true
			}
		}
		if err := w.deliverAll(); err != nil {
			return err
		}
		if !moved && w.progress == before {
			break
		}
	}
	if err := w.checkFull(); err != nil {
		return err
	}
	if got := wr.tr.VDL(); got != wr.lastCPL {
		return fmt.Errorf("after drain VDL = %d, want last CPL %d (VCL %d, pending %d)", got, wr.lastCPL, wr.tr.VCL(), wr.tr.Pending())
	}
	for _, p := range w.pgs {
		wp := wr.pgs[p.idx]
		if got := wr.tr.PGCL(p.id); got != wp.last {
			return fmt.Errorf("after drain PGCL(%d) = %d, want %d", p.id, got, wp.last)
		}
		var want []segment.Entry
		for l := w.firstBase + 1; l < wr.next; l++ {
			if h, ok := w.hist[l]; ok && h.pg == p {
				want = append(want, h.e)
			}
		}
		for _, id := range p.cfg.Members() {
			s := p.byID[id]
			if s.chain.SCL() != wp.last {
				return fmt.Errorf("after drain pg%d %s SCL = %d, want %d", p.id, id, s.chain.SCL(), wp.last)
			}
			for _, t := range wr.truncs[p.id] {
				if got, ok := s.chain.TruncationFor(t.Epoch); !ok || got != t {
					return fmt.Errorf("after drain pg%d %s has not applied the truncation %+v (%+v, %v)", p.id, id, t, got, ok)
				}
			}
			if len(s.held) != len(want) {
				return fmt.Errorf("after drain pg%d %s holds %d records, the history %d (%s)", p.id, id, len(s.held), len(want), s.diff(want))
			}
			for _, e := range want {
				if s.held[e.LSN] != e {
					return fmt.Errorf("after drain pg%d %s holds %+v at LSN %d, the history %+v", p.id, id, s.held[e.LSN], e.LSN, e)
				}
			}
		}
	}
	return nil
}

// diff describes how what s holds differs from want, for error messages.
func (s *seg) diff(want []segment.Entry) string {
	in := map[uint64]bool{}
	var missing, extra []segment.Entry
	for _, e := range want {
		in[e.LSN] = true
		if s.held[e.LSN] != e {
			missing = append(missing, e)
		}
	}
	for _, e := range s.list {
		if !in[e.LSN] {
			extra = append(extra, e)
		}
	}
	return fmt.Sprintf("missing %v, extra %v", missing, extra)
}

// gossipAll has every live segment pull from every other and report its SCL.
func (w *world) gossipAll() {
	for _, p := range w.pgs {
		live := p.alive()
		for _, x := range live {
			for _, y := range live {
				if x != y {
					w.pull(p, x, y)
				}
			}
			w.heartbeat(p, x)
		}
	}
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

// holds reports whether s holds e and every record of the chain before it.
func (s *seg) holds(e segment.Entry) bool {
	return s.oscl >= e.LSN && s.held[e.LSN] == e
}

// check verifies the invariants after a step. It is amortized O(1) per LSN
// plus the cost of the segments the step touched.
func (w *world) check() error {
	if w.err != nil {
		return w.err
	}
	for _, wr := range w.writers {
		if wr.dead {
			continue
		}
		if err := w.checkWriter(wr); err != nil {
			return err
		}
	}
	if w.deferSegs {
		return nil
	}
	for _, s := range w.dirty {
		if err := w.checkSeg(s); err != nil {
			return err
		}
	}
	w.dirty = w.dirty[:0]
	if w.step%w.fullEvery == 0 {
		return w.checkFull()
	}
	return nil
}

// checkWriter checks a running writer's tracker against the oracle: its
// PGCLs, VCL and VDL never go back, every LSN they cover is held completely
// by a write quorum, and its VDL never passes a later recovery's.
func (w *world) checkWriter(wr *writer) error {
	for _, p := range w.pgs {
		wp := wr.pgs[p.idx]
		got := wr.tr.PGCL(p.id)
		if got < wp.pgcl {
			return fmt.Errorf("writer %d: PGCL(%d) went back from %d to %d", wr.epoch, p.id, wp.pgcl, got)
		}
		if got > wp.last && got > wr.base {
			return fmt.Errorf("writer %d: PGCL(%d) = %d beyond its last LSN %d", wr.epoch, p.id, got, wp.last)
		}
		// Every LSN PGCL newly covers must be held completely by a write
		// quorum of the writer's config for the PG. (A zombie's records
		// above a later recovery's VDL may since have been truncated.)
		var cfg quorum.Config
		for wp.checked < len(wp.lsns) && wp.lsns[wp.checked] <= got {
			if cfg.Sets == nil {
				cfg, _ = wr.tr.Config(p.id)
			}
			e := wp.ents[wp.checked]
			if e.LSN <= wr.ceiling && !cfg.WriteQuorum(func(id quorum.SegmentID) bool { return p.byID[id].holds(e) }) {
				return fmt.Errorf("writer %d: PGCL(%d) = %d covers LSN %d, which no write quorum of %v holds (%s)", wr.epoch, p.id, got, e.LSN, cfg, p.scls())
			}
			wp.checked++
		}
		wp.pgcl = got
	}

	vcl, vdl := wr.tr.VCL(), wr.tr.VDL()
	if vcl < wr.vcl {
		return fmt.Errorf("writer %d: VCL went back from %d to %d", wr.epoch, wr.vcl, vcl)
	}
	if vdl < wr.vdl {
		return fmt.Errorf("writer %d: VDL went back from %d to %d", wr.epoch, wr.vdl, vdl)
	}
	if vdl > wr.ceiling {
		return fmt.Errorf("writer %d acknowledged commits up to VDL %d, above the VDL %d that a recovery after it decided: split brain", wr.epoch, vdl, wr.ceiling)
	}
	wr.vcl, wr.vdl = vcl, vdl
	for wr.vclIdx < len(wr.allocs) && wr.allocs[wr.vclIdx].lsn <= wr.pgs[wr.allocs[wr.vclIdx].pg.idx].pgcl {
		if wr.allocs[wr.vclIdx].cpl {
			wr.oVDL = wr.allocs[wr.vclIdx].lsn
		}
		wr.vclIdx++
	}
	oVCL := wr.base
	if wr.vclIdx > 0 {
		oVCL = wr.allocs[wr.vclIdx-1].lsn
	}
	if vcl != oVCL {
		return fmt.Errorf("writer %d: VCL = %d, want %d from the PGCLs", wr.epoch, vcl, oVCL)
	}
	if vdl != wr.oVDL {
		return fmt.Errorf("writer %d: VDL = %d, want %d (highest CPL <= VCL)", wr.epoch, vdl, wr.oVDL)
	}
	if vdl > vcl || (vdl != wr.base && !wr.cpls[vdl]) {
		return fmt.Errorf("writer %d: VDL %d is not base or a CPL <= VCL %d", wr.epoch, vdl, vcl)
	}
	for wr.vdlIdx < len(wr.allocs) && wr.allocs[wr.vdlIdx].lsn <= vdl {
		a := wr.allocs[wr.vdlIdx]
		n := 0
		for _, s := range a.pg.segs {
			if s.holds(a.e) {
				n++
			}
		}
		if n < 4 {
			return fmt.Errorf("writer %d: LSN %d <= VDL %d held completely by only %d segments of pg%d (%s)", wr.epoch, a.lsn, vdl, n, a.pg.id, a.pg.scls())
		}
		wr.vdlIdx++
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
		if n := len(s.truncs); n > 0 {
			b = fmt.Appendf(b, "/t%d", s.truncs[n-1].Epoch)
		}
	}
	return string(b)
}

// checkSeg checks one segment the step touched: the chain against the
// oracle, and what it holds against the truncations and the history.
func (w *world) checkSeg(s *seg) error {
	if err := s.checkIncremental(); err != nil {
		return err
	}
	if s.recheck {
		s.recheck = false
		return w.checkHeld(s)
	}
	return nil
}

// checkEntry is checkHeld for one record s just accepted.
func (w *world) checkEntry(s *seg, e segment.Entry) error {
	newest := uint64(0)
	for _, t := range s.truncs {
		newest = max(newest, t.Epoch)
		if e.Epoch < t.Epoch && e.LSN > t.After {
			return fmt.Errorf("%s applied the truncation %+v but accepts %+v", s.id, t, e)
		}
	}
	if newest == w.curEpoch {
		if h, ok := w.hist[e.LSN]; !ok || h.e != e {
			return fmt.Errorf("%s (truncations %v) accepts %+v, which is not in the history (%+v, %v)", s.id, s.truncs, e, h.e, ok)
		}
	}
	return nil
}

// checkHeld: no segment keeps a record of an older epoch above the After of
// a truncation it applied (recovery dropped everything the old writer left
// above the recovered VDL); and a segment that applied the last decided
// recovery's truncation holds only the history.
func (w *world) checkHeld(s *seg) error {
	newest := uint64(0)
	for _, t := range s.truncs {
		newest = max(newest, t.Epoch)
		for _, e := range s.list {
			if e.Epoch < t.Epoch && e.LSN > t.After {
				return fmt.Errorf("%s applied the truncation %+v but keeps %+v", s.id, t, e)
			}
		}
	}
	if newest != w.curEpoch {
		return nil
	}
	for _, e := range s.list {
		if h, ok := w.hist[e.LSN]; !ok || h.e != e {
			return fmt.Errorf("%s (truncations %v) holds %+v, which is not in the history (%+v, %v)", s.id, s.truncs, e, h.e, ok)
		}
	}
	return nil
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
	if len(s.above) == 0 && s.chain.HeldAbove() == 0 {
		if got := s.chain.Highest(); got != s.oscl {
			return fmt.Errorf("%s: Highest = %d, want %d", s.id, got, s.oscl)
		}
		return nil
	}
	above := make([]uint64, 0, len(s.above))
	for l := range s.above {
		above = append(above, l)
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
			if err := w.checkHeld(s); err != nil {
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
	n := 0
	for _, e := range s.list {
		if e.LSN > scl {
			n++
			if !s.above[e.LSN] {
				return fmt.Errorf("%s: oracle misses %d above its SCL %d", s.id, e.LSN, scl)
			}
		}
	}
	if n != len(s.above) {
		return fmt.Errorf("%s: oracle has %d above its SCL %d, brute force %d", s.id, len(s.above), scl, n)
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
