package sim

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"github.com/borealis-db/borealis/internal/quorum"
	"github.com/borealis-db/borealis/internal/recovery"
	"github.com/borealis-db/borealis/internal/segment"
)

// Writer crash and recovery, as internal/volume's Recover does it against
// real storage nodes, with internal/recovery making every decision:
//
//  1. The control plane grants a new epoch.
//  2. Gather: every member of every PG is asked for SegmentInfo with
//     fence_epoch, one at a time while the rest of the world goes on. A
//     segment that answers first makes the new epoch its own, so it refuses
//     the old writer's requests from then on; some are down, crashed or
//     unreachable and do not answer.
//  3. recovery.NewPlan; the record headers each Pull asks for are read from
//     the PG's best segment. A segment that fails to give them is dropped
//     from the answers and the plan made again.
//  4. Plan.Decide; the range is recorded in the control plane (Prior).
//  5. Truncate goes to every member (lossy network, retried) until a write
//     quorum of every PG applied it; the others learn it later from the new
//     writer's declarations or from a peer's pull answer.
//  6. Wait until a write quorum of every PG is complete up to the PG's tail.
//  7. The new writer starts from the recovered VDL, each PG's chain from its
//     tail, and declares the truncations with every request.
//
// A recovery that finds no read quorum gives up, and the writer starts
// again under a newer epoch (as dbserver does); the recovering writer may
// also crash at any step, leaving a recovery interrupted (perhaps recorded
// in the control plane and applied by a few segments) for the next one.
//
// The crashed writer's messages stay in the network. Some crashed writers
// are zombies: they do not know their lease is gone and keep allocating,
// sending and counting acks until storage refuses them.

const (
	writerZombiePct = 35 // a crashed writer keeps running for a while
	recoverStepPct  = 40 // per step while a recovery runs: it takes its next step
	recoverCrashPml = 8  // per mille per recovery step: the recovering writer crashes
	maxInterrupted  = 3  // per run, so that some recovery finishes
	reachPct        = 90 // a segment that is up answers a recovery's RPC
)

const (
	rGather = iota
	rPull
	rTruncate
	rDurable
)

type recov struct {
	epoch uint64
	phase int
	ask   []member // members still to ask for SegmentInfo
	in    recovery.Input
	plan  *recovery.Plan
	pulls []recovery.Pull // still to pull
	heads map[uint32][]recovery.Header
	res   recovery.Result
	acked map[uint32]map[quorum.SegmentID]bool
	// waited is the steps spent in rDurable: the writer's awaitDurable
	// gives up after its context's deadline (durableSteps) and the volume
	// recovers again under a newer epoch. Without it a run once waited for
	// good: a membership change completed (F came back after G was
	// complete to the target) and retired F, the only segment that held
	// records the recovery had decided to keep (at or below its VDL, not
	// yet on a write quorum), so gossip could never make them durable.
	// The redo keeps every acknowledged commit (seed 4165 of the
	// schedules as they were when repair came into the simulator; rare on
	// today's: none of the first 25,000 seeds).
	waited int
}

// durableSteps bounds a recovery's wait for its tails to be durable.
const durableSteps = 300

type member struct {
	p *pg
	s *seg
}

// crashWriter crashes the writer in office and starts a recovery.
func (w *world) crashWriter() {
	wr := w.cur
	w.cur = nil
	w.res.WriterCrashes++
	if w.rng.IntN(100) < writerZombiePct {
		wr.zombie = 1 + w.rng.IntN(300)
		w.res.Zombies++
	} else {
		wr.dead = true
	}
	w.log("writer %d crashes (zombie for %d steps): VDL %d, last allocated %d", wr.epoch, wr.zombie, wr.tr.VDL(), wr.tr.LastAllocated())
	w.startRecovery()
}

// zombiesAge ends the zombies whose time is up.
func (w *world) zombiesAge() {
	for _, wr := range w.writers {
		if wr.zombie > 0 && !wr.dead {
			if wr.zombie--; wr.zombie == 0 {
				wr.dead = true
				w.log("zombie writer %d stops", wr.epoch)
			}
		}
	}
}

// startRecovery has a new writer take the next epoch and begin recovering.
func (w *world) startRecovery() {
	w.epochs++
	rc := &recov{epoch: w.epochs}
	rc.in = recovery.Input{Epoch: rc.epoch, LAL: w.lal, Prior: slices.Clone(w.prior)}
	for _, p := range w.pgs {
		rc.in.PGs = append(rc.in.PGs, recovery.PG{PG: p.id, Config: p.cfg.Clone()})
		for _, id := range p.cfg.Members() {
			rc.ask = append(rc.ask, member{p, p.byID[id]})
		}
	}
	w.rng.Shuffle(len(rc.ask), func(i, j int) { rc.ask[i], rc.ask[j] = rc.ask[j], rc.ask[i] })
	w.rec = rc
	w.log("recovery of epoch %d starts (prior %v)", rc.epoch, w.prior)
}

// reachable reports whether a recovery's RPC to s gets an answer.
func (w *world) reachable(s *seg) bool {
	return !s.down && s.crashed == 0 && (w.draining || w.rng.IntN(100) < reachPct)
}

// recoverStep takes the recovery's next step.
func (w *world) recoverStep() {
	rc := w.rec
	if w.opt.Interrupt && !w.draining && w.res.Interrupted < maxInterrupted && w.rng.IntN(1000) < recoverCrashPml {
		w.res.Interrupted++
		w.log("recovering writer of epoch %d crashes in phase %d", rc.epoch, rc.phase)
		w.startRecovery()
		return
	}
	switch rc.phase {
	case rGather:
		a := rc.ask[0]
		rc.ask = rc.ask[1:]
		if !a.s.hydrating && w.reachable(a.s) {
			// The fence is synced before the node answers.
			a.s.fence = max(a.s.fence, rc.epoch)
			ans := recovery.Answer{Segment: a.s.id, SCL: a.s.chain.SCL(), VDLSeen: a.s.vdlSeen,
				Highest: a.s.chain.Highest(), Truncations: a.s.chain.State().Truncations}
			rc.in.PGs[a.p.idx].Answers = append(rc.in.PGs[a.p.idx].Answers, ans)
			w.log("recovery %d: pg%d %s answers %+v", rc.epoch, a.p.id, a.s.id, ans)
		} else {
			w.log("recovery %d: pg%d %s does not answer", rc.epoch, a.p.id, a.s.id)
		}
		if len(rc.ask) == 0 {
			w.plan()
		}
	case rPull:
		pull := rc.pulls[0]
		p := w.pgByID(pull.PG)
		s := p.byID[pull.From]
		if !w.reachable(s) {
			w.log("recovery %d: no headers from pg%d %s; planning without it", rc.epoch, p.id, s.id)
			pgIn := &rc.in.PGs[p.idx]
			pgIn.Answers = slices.DeleteFunc(slices.Clone(pgIn.Answers), func(a recovery.Answer) bool { return a.Segment == s.id })
			w.plan()
			return
		}
		rc.heads[pull.PG] = w.headers(s, pull)
		w.log("recovery %d: pull %+v from pg%d %s: %d headers", rc.epoch, pull, p.id, s.id, len(rc.heads[pull.PG]))
		rc.pulls = rc.pulls[1:]
		if len(rc.pulls) == 0 {
			w.decide()
		}
	case rTruncate:
		w.sendTruncations()
	case rDurable:
		for _, p := range w.pgs {
			tail := rc.res.Tails[p.id]
			if !p.cfg.WriteQuorum(func(id quorum.SegmentID) bool {
				s := p.byID[id]
				return !s.hydrating && w.reachable(s) && s.chain.SCL() >= tail
			}) {
				w.log("recovery %d: pg%d not yet complete to its tail %d on a write quorum (%s)", rc.epoch, p.id, tail, p.scls())
				if rc.waited++; rc.waited > durableSteps && !w.draining {
					w.res.Failed++
					w.res.DurableTimeouts++
					w.log("recovery %d gives up: pg%d's tail %d is not durable after %d steps", rc.epoch, p.id, tail, rc.waited)
					w.startRecovery()
				}
				return
			}
		}
		w.finishRecovery()
	}
}

func (w *world) pgByID(id uint32) *pg {
	for _, p := range w.pgs {
		if p.id == id {
			return p
		}
	}
	panic(fmt.Sprintf("no pg%d", id))
}

// plan makes (or remakes) the recovery's plan from the answers it has.
func (w *world) plan() {
	rc := w.rec
	plan, err := recovery.NewPlan(rc.in)
	var nq *recovery.NoReadQuorumError
	if errors.As(err, &nq) {
		w.res.Failed++
		w.log("recovery %d gives up: %v", rc.epoch, err)
		w.startRecovery()
		return
	}
	if err != nil {
		w.fail(fmt.Errorf("recovery %d: NewPlan: %w (input %+v)", rc.epoch, err, rc.in))
		return
	}
	rc.plan, rc.phase, rc.pulls = plan, rPull, nil
	rc.heads = map[uint32][]recovery.Header{}
	for _, pull := range plan.Pulls {
		if pull.Needed() {
			rc.pulls = append(rc.pulls, pull)
		}
	}
	w.log("recovery %d: plan: floor %d, highest %d, pulls %+v", rc.epoch, plan.Floor, plan.Highest, plan.Pulls)
	if len(rc.pulls) == 0 {
		w.decide()
	}
}

// headers reads from s's store what a Pull asks: the headers in
// (After, SCL], up to the first one above Upto.
func (w *world) headers(s *seg, pull recovery.Pull) []recovery.Header {
	var es []segment.Entry
	for _, e := range s.list {
		if e.LSN > pull.After {
			es = append(es, e)
		}
	}
	slices.SortFunc(es, func(a, b segment.Entry) int { return cmpLSN(a, b) })
	var out []recovery.Header
	for _, e := range es {
		if e.LSN > pull.SCL {
			break
		}
		out = append(out, recovery.Header{LSN: e.LSN, PrevLSN: e.PrevLSN, Epoch: e.Epoch, CPL: w.cplOf[recKey{e.Epoch, e.LSN}]})
		if e.LSN > pull.Upto {
			break
		}
	}
	return out
}

func cmpLSN(a, b segment.Entry) int { return cmp.Compare(a.LSN, b.LSN) }

// decide runs Plan.Decide, checks the decision against the history, and
// records it in the control plane.
func (w *world) decide() {
	rc := w.rec
	res, err := rc.plan.Decide(rc.heads)
	if err != nil {
		if pg, id := w.changedSinceAnswer(); id != "" {
			// The shell fails the same way (Recover returns the error,
			// and the writer takes a new epoch and recovers again).
			w.res.Failed++
			w.res.Changed++
			w.log("recovery %d: Decide fails, pg%d %s applied a truncation after it answered: %v", rc.epoch, pg, id, err)
			w.startRecovery()
			return
		}
		w.fail(fmt.Errorf("recovery %d: Decide: %w (input %+v, headers %+v)", rc.epoch, err, rc.in, rc.heads))
		return
	}
	w.log("recovery %d decides: floor %d, VCL %d, VDL %d, truncate (%d, %d], tails %v", rc.epoch, res.Floor, res.VCL, res.VDL, res.After, res.Through, res.Tails)
	if err := w.checkDecision(rc, res); err != nil {
		w.fail(err)
		return
	}
	// Everything the history held above the VDL is gone; writers of older
	// epochs make nothing that counts from now on.
	for l := range w.hist {
		if l > res.VDL {
			delete(w.hist, l)
		}
	}
	w.curEpoch = rc.epoch
	for _, o := range w.writers {
		o.live = false
		o.ceiling = min(o.ceiling, res.VDL)
		o.through = min(o.through, res.Through)
	}
	// The control plane records the range before any segment is
	// truncated; the range covers PGs 0..max id.
	npg := uint32(0)
	for _, p := range w.pgs {
		npg = max(npg, p.id+1)
	}
	w.prior = append(w.prior, recovery.Prior{Epoch: rc.epoch, After: res.After, Through: res.Through, PGs: npg})
	rc.res = res
	rc.phase = rTruncate
	rc.acked = map[uint32]map[quorum.SegmentID]bool{}
	for _, p := range w.pgs {
		rc.acked[p.id] = map[quorum.SegmentID]bool{}
	}
	w.sendTruncations()
}

// changedSinceAnswer returns a segment headers were pulled from that has
// applied a truncation since it answered SegmentInfo: its headers may then
// not be the chain its answer described, and Decide may refuse them.
func (w *world) changedSinceAnswer() (uint32, quorum.SegmentID) {
	rc := w.rec
	for _, pull := range rc.plan.Pulls {
		if !pull.Needed() {
			continue
		}
		p := w.pgByID(pull.PG)
		for _, a := range rc.in.PGs[p.idx].Answers {
			if a.Segment == pull.From && len(a.Truncations) != len(p.byID[pull.From].truncs) {
				return p.id, pull.From
			}
		}
	}
	return 0, ""
}

// checkDecision: every commit an older writer acknowledged is at or below
// the recovered VDL; the VDL ends an MTR (or is the floor); every LSN up to
// it is a record of the history, found on some segment; each PG's tail is
// its last record at or below it; and the range covers all the older
// writers allocated.
func (w *world) checkDecision(rc *recov, res recovery.Result) error {
	for _, o := range w.writers {
		if v := o.tr.VDL(); v > res.VDL {
			return fmt.Errorf("recovery %d decided VDL %d, but the writer of epoch %d acknowledged commits up to %d", rc.epoch, res.VDL, o.epoch, v)
		}
		if l := o.tr.LastAllocated(); l > res.Through {
			return fmt.Errorf("recovery %d truncates (%d, %d], but the writer of epoch %d allocated up to %d (LAL %d)", rc.epoch, res.After, res.Through, o.epoch, l, w.lal)
		}
	}
	if res.VDL < res.Floor || res.After != res.VDL || res.Through < res.After {
		return fmt.Errorf("recovery %d: inconsistent result %+v", rc.epoch, res)
	}
	if res.VDL != res.Floor && !w.hist[res.VDL].cpl {
		return fmt.Errorf("recovery %d decided VDL %d, which does not end an MTR (%+v) and is not the floor %d", rc.epoch, res.VDL, w.hist[res.VDL], res.Floor)
	}
	tails := map[uint32]uint64{}
	for l := w.firstBase + 1; l <= res.VDL; l++ {
		h, ok := w.hist[l]
		if !ok {
			return fmt.Errorf("recovery %d decided VDL %d, but LSN %d below it is no record of the history", rc.epoch, res.VDL, l)
		}
		tails[h.pg.id] = l
		if l > res.Floor && !slices.ContainsFunc(h.pg.segs, func(s *seg) bool { return s.held[l] == h.e }) {
			return fmt.Errorf("recovery %d decided VDL %d, but no segment of pg%d holds %+v below it", rc.epoch, res.VDL, h.pg.id, h.e)
		}
	}
	for _, p := range w.pgs {
		if got := res.Tails[p.id]; got != tails[p.id] {
			return fmt.Errorf("recovery %d: pg%d tail %d, but its last record at or below the VDL %d is %d", rc.epoch, p.id, got, res.VDL, tails[p.id])
		}
	}
	return nil
}

// sendTruncations sends Truncate to the members that have not acknowledged
// it and have no Truncate or answer in flight (as after an RPC's timeout),
// and moves on once a write quorum of every PG has acknowledged.
func (w *world) sendTruncations() {
	rc := w.rec
	inflight := map[*seg]bool{}
	for _, m := range w.pool {
		if m.rc == rc {
			inflight[m.seg] = true
		}
	}
	done := true
	for _, p := range w.pgs {
		for _, id := range p.cfg.Members() {
			if s := p.byID[id]; !rc.acked[p.id][id] && !inflight[s] {
				w.send(msg{kind: kTrunc, pg: p, seg: s, rc: rc})
			}
		}
		if !p.cfg.WriteQuorum(func(id quorum.SegmentID) bool { return rc.acked[p.id][id] }) {
			done = false
		}
	}
	if done {
		rc.phase = rDurable
		w.log("recovery %d: a write quorum of every PG applied the truncation", rc.epoch)
	}
}

// deliverTrunc is a storage node's Truncate: refused if the node has seen a
// newer epoch (the recovery that sent it is long gone).
func (w *world) deliverTrunc(m msg) {
	s, rc := m.seg, m.rc
	if s.down || s.crashed > 0 {
		w.log("truncate (epoch %d) to pg%d %s lost", rc.epoch, m.pg.id, s.id)
		return
	}
	if !w.truncate(m.pg, s, rc.epoch, rc.res.Truncations[m.pg.id]) {
		w.log("truncate (epoch %d) to pg%d %s refused: it has seen epoch %d", rc.epoch, m.pg.id, s.id, max(s.fence, s.chain.Epoch()))
		if rc == w.rec {
			w.fail(fmt.Errorf("pg%d %s refused the truncation of the recovery in progress (epoch %d; it has seen %d)", m.pg.id, s.id, rc.epoch, max(s.fence, s.chain.Epoch())))
		}
		return
	}
	w.send(msg{kind: kTruncAck, pg: m.pg, seg: s, rc: rc, scl: s.chain.SCL()})
}

func (w *world) deliverTruncAck(m msg) {
	rc := m.rc
	if rc != w.rec || rc.phase != rTruncate {
		return
	}
	rc.acked[m.pg.id][m.seg.id] = true
	w.log("recovery %d: pg%d %s applied the truncation, scl %d", rc.epoch, m.pg.id, m.seg.id, m.scl)
}

// finishRecovery checks that the recovered volume is durable and starts the
// new writer.
func (w *world) finishRecovery() {
	rc := w.rec
	res := rc.res
	// Every record at or below the VDL is held, with its chain, by a write
	// quorum of its PG: the new writer counts it durable.
	for _, p := range w.pgs {
		var mine []segment.Entry
		for l := w.firstBase + 1; l <= res.VDL; l++ {
			if h := w.hist[l]; h.pg == p {
				mine = append(mine, h.e)
			}
		}
		ok := p.cfg.WriteQuorum(func(id quorum.SegmentID) bool {
			s := p.byID[id]
			if s.oscl < res.Tails[p.id] {
				return false
			}
			for _, e := range mine {
				if s.held[e.LSN] != e {
					return false
				}
			}
			return true
		})
		if !ok {
			w.fail(fmt.Errorf("recovery %d done, but no write quorum of pg%d holds its records up to the VDL %d (tail %d: %s)", rc.epoch, p.id, res.VDL, res.Tails[p.id], p.scls()))
			return
		}
	}
	w.rec = nil
	w.res.Recoveries++
	w.cur = w.newWriter(rc.epoch, res.VDL, res.Tails, res.Truncations)
	w.log("writer %d starts from VDL %d, tails %v, truncations %v", rc.epoch, res.VDL, res.Tails, res.Truncations)
	// Its first requests: keepalives that declare the truncations.
	for _, p := range w.pgs {
		w.resend(w.cur, p, 0)
	}
}
