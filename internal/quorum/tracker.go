package quorum

import (
	"fmt"
	"slices"
)

// Tracker is the writer's view of durability for one volume. It turns LSN
// allocations and segment acks into PGCL per PG, VCL and VDL.
//
// Cost: Allocated is O(1); Ack is O(members) to recompute one PGCL plus
// amortized O(1) per LSN that becomes durable, because allocated LSNs wait in
// one FIFO and VCL only ever pops its front.
type Tracker struct {
	pgs map[uint32]*pgState

	// queue[head:] are allocated LSNs not yet known durable, in LSN order.
	// Popping advances head; the slice is compacted when the dead prefix
	// dominates, which keeps both pops and appends amortized O(1).
	queue []pending
	head  int

	last uint64 // last allocated LSN, or base
	vcl  uint64
	vdl  uint64

	scratch []uint64
}

type pending struct {
	lsn uint64
	pg  *pgState // pointer, not id, so popping needs no map lookup
	cpl bool
}

type pgState struct {
	cfg    Config
	hasCfg bool
	scl    map[SegmentID]uint64
	pgcl   uint64
}

// NewTracker starts with every LSN <= base durable: base is 0 for a new
// volume, or the VDL recovery computed.
func NewTracker(base uint64) *Tracker {
	return &Tracker{
		pgs:  make(map[uint32]*pgState),
		last: base,
		vcl:  base,
		vdl:  base,
	}
}

func (t *Tracker) pg(id uint32) *pgState {
	p := t.pgs[id]
	if p == nil {
		p = &pgState{scl: make(map[SegmentID]uint64)}
		t.pgs[id] = p
	}
	return p
}

// SetConfig installs or replaces a PG's membership. PGCL is kept, not
// recomputed downwards: LSNs already durable stay durable under the old
// config's write quorum, and a new config (a dual one especially) may not
// yet have a write quorum at that point because a new member is empty.
// SCLs of segments that are no longer members are forgotten, so a later
// rollback to them waits for fresh acks rather than trusting stale ones.
//
// The caller is expected to have validated c; a set whose Write is out of
// range can never be satisfied, which stalls the PG rather than losing data.
func (t *Tracker) SetConfig(pg uint32, c Config) {
	p := t.pg(pg)
	p.cfg = c.Clone()
	p.hasCfg = true
	for id := range p.scl {
		if !p.cfg.Contains(id) {
			delete(p.scl, id)
		}
	}
	t.recompute(p)
	t.advance()
}

// Config returns a copy of the PG's current membership.
func (t *Tracker) Config(pg uint32) (Config, bool) {
	p := t.pgs[pg]
	if p == nil || !p.hasCfg {
		return Config{}, false
	}
	return p.cfg.Clone(), true
}

// Allocated registers an LSN the writer allocated for a record of pg; cpl
// marks the last record of an MTR. Calls must come in strictly increasing LSN
// order, and before the record is sent: acks are clamped to the last
// allocated LSN so that a segment holding records this writer never allocated
// (say, from before recovery) cannot make future LSNs look durable.
//
// A PG needs no config to allocate in; its LSNs simply stay pending (and hold
// VCL back) until SetConfig and acks arrive.
func (t *Tracker) Allocated(lsn uint64, pg uint32, cpl bool) error {
	if lsn <= t.last {
		return fmt.Errorf("quorum: LSN %d allocated out of order (last %d)", lsn, t.last)
	}
	t.last = lsn
	if t.head > 0 && t.head >= len(t.queue)/2 && t.head >= 64 {
		n := copy(t.queue, t.queue[t.head:])
		clear(t.queue[n:]) // drop *pgState references for the GC
		t.queue = t.queue[:n]
		t.head = 0
	}
	t.queue = append(t.queue, pending{lsn: lsn, pg: t.pg(pg), cpl: cpl})
	t.advance()
	return nil
}

// Ack records that segment seg of pg reported SCL scl. Acks from
// non-members and SCLs not above the last one seen for the segment are
// ignored, so acks may be lost, duplicated and reordered freely. It returns
// true if VDL advanced.
func (t *Tracker) Ack(pg uint32, seg SegmentID, scl uint64) bool {
	p := t.pgs[pg]
	if p == nil || !p.hasCfg || !p.cfg.Contains(seg) {
		return false
	}
	scl = min(scl, t.last)
	if scl <= p.scl[seg] {
		return false
	}
	p.scl[seg] = scl
	if scl <= p.pgcl {
		// PGCL is an order statistic of the SCLs; raising one to at most
		// PGCL cannot raise it.
		return false
	}
	if !t.recompute(p) {
		return false
	}
	return t.advance()
}

// recompute raises p.pgcl to what the SCLs now support and reports whether it
// moved.
func (t *Tracker) recompute(p *pgState) bool {
	if len(p.cfg.Sets) == 0 {
		return false
	}
	pgcl := uint64(0)
	for i, s := range p.cfg.Sets {
		v := t.setCL(p, s)
		if i == 0 || v < pgcl {
			pgcl = v
		}
	}
	if pgcl <= p.pgcl {
		return false
	}
	p.pgcl = pgcl
	return true
}

// setCL is the highest LSN that Write members of s hold completely: the
// Write-th highest SCL among them.
func (t *Tracker) setCL(p *pgState, s Set) uint64 {
	if s.Write < 1 || s.Write > len(s.Members) {
		return 0
	}
	t.scratch = t.scratch[:0]
	for _, m := range s.Members {
		t.scratch = append(t.scratch, p.scl[m])
	}
	slices.Sort(t.scratch)
	return t.scratch[len(t.scratch)-s.Write]
}

// advance pops durable LSNs off the front of the queue and reports whether
// VDL moved. A front LSN blocked by a lagging PG stops the scan at once, so
// an ack for some other PG costs O(1) here.
func (t *Tracker) advance() bool {
	old := t.vdl
	for t.head < len(t.queue) {
		e := t.queue[t.head]
		if e.lsn > e.pg.pgcl {
			break
		}
		t.vcl = e.lsn
		if e.cpl {
			t.vdl = e.lsn
		}
		t.queue[t.head].pg = nil
		t.head++
	}
	if t.head == len(t.queue) {
		t.queue = t.queue[:0]
		t.head = 0
	}
	return t.vdl > old
}

// SCL returns the last SCL seen from seg (0 if none, or if seg is not a
// member).
func (t *Tracker) SCL(pg uint32, seg SegmentID) uint64 {
	if p := t.pgs[pg]; p != nil {
		return p.scl[seg]
	}
	return 0
}

// PGCL returns the highest LSN that a write quorum of the PG holds
// completely, as far as acks have told. It never goes backwards.
func (t *Tracker) PGCL(pg uint32) uint64 {
	if p := t.pgs[pg]; p != nil {
		return p.pgcl
	}
	return 0
}

// VCL returns the highest allocated LSN (or base) at or below which every
// allocated LSN is durable in its PG.
func (t *Tracker) VCL() uint64 { return t.vcl }

// VDL returns the highest CPL at or below VCL (or base). Commits at or below
// it may be acknowledged; it never goes backwards.
func (t *Tracker) VDL() uint64 { return t.vdl }

// LastAllocated returns the last LSN passed to Allocated, or base.
func (t *Tracker) LastAllocated() uint64 { return t.last }

// Pending returns how many allocated LSNs are not yet known durable.
func (t *Tracker) Pending() int { return len(t.queue) - t.head }

// ReadableAt returns the members of pg whose last reported SCL is at least
// lsn, in config order: the segments a read at read point lsn may go to.
func (t *Tracker) ReadableAt(pg uint32, lsn uint64) []SegmentID {
	p := t.pgs[pg]
	if p == nil || !p.hasCfg {
		return nil
	}
	var out []SegmentID
	for _, m := range p.cfg.Members() {
		if p.scl[m] >= lsn {
			out = append(out, m)
		}
	}
	return out
}
