package sim

import (
	"fmt"
	"slices"

	"github.com/borealis-db/borealis/internal/segment"
)

// crash discards a random segment's in-memory chain for 1-20 steps. What it
// persisted (every accepted entry, and the State last saved) survives.
func (w *world) crash() {
	p := w.pgs[w.rng.IntN(len(w.pgs))]
	var up []*seg
	for _, s := range p.segs {
		if s.crashed == 0 {
			up = append(up, s)
		}
	}
	if len(up) == 0 {
		return
	}
	s := up[w.rng.IntN(len(up))]
	s.crashed = 1 + w.rng.IntN(20)
	s.chain = nil
	s.crashes++
	w.res.Crashes++
	w.log("crash pg%d %s for %d steps: saved SCL %d, oracle SCL %d, acked %d (%s)",
		p.id, s.id, s.crashed, s.saved.SCL, s.oscl, s.acked, p.scls())
}

// restartDue counts down the crashed segments and restarts those whose time
// is up.
func (w *world) restartDue() error {
	for _, p := range w.pgs {
		for _, s := range p.segs {
			if s.crashed == 0 {
				continue
			}
			if s.crashed--; s.crashed == 0 {
				if err := w.restart(p, s); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// restart rebuilds s's chain as a storage node does: New from the persisted
// State, then Offer of every persisted entry above its SCL in LSN order.
func (w *world) restart(p *pg, s *seg) error {
	s.crashed = 0
	c := segment.New(s.saved)
	var es []segment.Entry
	for _, e := range s.list {
		if e.LSN > s.saved.SCL {
			es = append(es, e)
		}
	}
	slices.SortFunc(es, cmpLSN)
	for _, e := range es {
		if v := c.Offer(e); v != segment.Accepted {
			return fmt.Errorf("restart pg%d %s from %+v: re-Offer(%+v) = %v, want Accepted", p.id, s.id, s.saved, e, v)
		}
	}
	s.chain = c
	w.log("restart pg%d %s from saved SCL %d: %d re-offered, scl %d (acked %d, oracle %d)",
		p.id, s.id, s.saved.SCL, len(es), c.SCL(), s.acked, s.oscl)
	if c.SCL() < s.acked {
		return fmt.Errorf("restart pg%d %s: SCL %d below the %d it acked before the crash", p.id, s.id, c.SCL(), s.acked)
	}
	if err := s.checkBrute(); err != nil {
		return fmt.Errorf("after restart: %w", err)
	}
	if !s.down {
		// Rejoin: report the SCL as a heartbeat would.
		w.heartbeat(p, s)
	}
	return nil
}

// checkCheck has a random live segment Check a small random request, then
// compares the answer with what offering the request to a copy of the chain
// does, and verifies Check left the chain alone.
func (w *world) checkCheck() error {
	p := w.pgs[w.rng.IntN(len(w.pgs))]
	live := p.alive()
	if len(live) == 0 {
		return nil
	}
	s := live[w.rng.IntN(len(live))]
	es := w.request(p, s.chain.SCL())

	scl, highest, above := s.chain.SCL(), s.chain.Highest(), s.chain.HeldAbove()
	gotI, gotV := s.chain.Check(es)
	if s.chain.SCL() != scl || s.chain.Highest() != highest || s.chain.HeldAbove() != above {
		return fmt.Errorf("%s: Check(%v) changed the chain: SCL %d->%d, Highest %d->%d, HeldAbove %d->%d",
			s.id, es, scl, s.chain.SCL(), highest, s.chain.Highest(), above, s.chain.HeldAbove())
	}

	c := segment.New(s.chain.State())
	for _, e := range s.list {
		if e.LSN > scl {
			if v := c.Offer(e); v != segment.Accepted {
				return fmt.Errorf("%s: copying chain, Offer(%+v) = %v", s.id, e, v)
			}
		}
	}
	if c.SCL() != scl {
		return fmt.Errorf("%s: copy of chain has SCL %d, want %d", s.id, c.SCL(), scl)
	}
	wantI, wantV := -1, segment.Accepted
	for i, e := range es {
		if v := c.Offer(e); v != segment.Accepted && v != segment.Duplicate {
			wantI, wantV = i, v
			break
		}
	}
	if gotI != wantI || gotV != wantV {
		return fmt.Errorf("%s (SCL %d, holes %v): Check(%+v) = %d, %v; Offer in order refuses at %d, %v",
			s.id, scl, s.chain.Holes(), es, gotI, gotV, wantI, wantV)
	}
	return nil
}

// request builds 1-4 entries around scl: mostly the PG's records (of the
// writer in office, or the last one) in order, some random ones, and some
// malformed or forged.
func (w *world) request(p *pg, scl uint64) []segment.Entry {
	wr := w.cur
	if wr == nil {
		wr = w.writers[len(w.writers)-1]
	}
	wp := wr.pgs[p.idx]
	n := 1 + w.rng.IntN(4)
	idx, _ := slices.BinarySearch(wp.lsns, scl+1)
	idx = max(0, idx-2+w.rng.IntN(6))
	var es []segment.Entry
	for range n {
		var e segment.Entry
		if len(wp.ents) == 0 {
			e = segment.Entry{LSN: wr.next + uint64(w.rng.IntN(3)), PrevLSN: wp.last, Epoch: wr.epoch}
			es = append(es, e)
			continue
		}
		r := w.rng.IntN(100)
		real := wp.ents[w.rng.IntN(len(wp.ents))]
		switch {
		case r < 60:
			if idx < len(wp.ents) {
				e = wp.ents[idx]
				idx++
			} else {
				e = real
			}
		case r < 75:
			e = real
		case r < 79:
			e = segment.Entry{LSN: 0, PrevLSN: 0, Epoch: wr.epoch}
		case r < 83:
			e = real
			e.PrevLSN = e.LSN
		case r < 88:
			e = real
			e.Epoch = uint64(w.rng.IntN(int(wr.epoch)))
		case r < 94:
			// A backlink that contradicts the chain.
			e = real
			e.PrevLSN = uint64(w.rng.Int64N(int64(e.LSN)))
		default:
			// Beyond anything allocated.
			e = segment.Entry{LSN: wr.next + uint64(w.rng.IntN(3)), Epoch: uint64(w.rng.IntN(int(w.epochs) + 2))}
			if w.rng.IntN(2) == 0 {
				e.PrevLSN = wp.last
			} else {
				e.PrevLSN = wp.lsns[w.rng.IntN(len(wp.lsns))]
			}
		}
		es = append(es, e)
	}
	return es
}
