// Package segment tracks one segment's chain of records for one PG: which
// records it holds, how far the chain is complete (SCL), where its holes are,
// and how recovery's truncations and epochs apply to it.
//
// Records of a PG form a chain by backlink: each record's PrevLSN is the
// previous LSN of the same PG (0 for the first). The chain is therefore
// complete up to L exactly when the records reached by walking forward from
// the start (or from a truncation's Tail) reach L.
//
// Like etcd's raft package it is pure: no goroutines, clocks or I/O. A Chain
// is not safe for concurrent use.
package segment

import (
	"fmt"
	"slices"
)

// Entry is what the chain needs to know of a redo record.
type Entry struct {
	LSN     uint64
	PrevLSN uint64
	Epoch   uint64
}

// Verdict is Offer's decision on a record.
type Verdict int

const (
	// Accepted: the record is new; the caller must persist it before acking
	// an SCL that covers it.
	Accepted Verdict = iota
	// Duplicate: the record is already held.
	Duplicate
	// StaleEpoch: the record was written under an epoch older than the
	// newest seen, and no truncation vouches for it.
	StaleEpoch
	// Truncated: recovery dropped the record's LSN range for its epoch.
	Truncated
	// Invalid: malformed (LSN 0, PrevLSN >= LSN), or it contradicts the
	// chain held (its backlink skips SCL, or another held record already
	// claims the same predecessor). The latter means a truncation this
	// chain has not been told about; the record must not be persisted.
	Invalid
)

func (v Verdict) String() string {
	switch v {
	case Accepted:
		return "Accepted"
	case Duplicate:
		return "Duplicate"
	case StaleEpoch:
		return "StaleEpoch"
	case Truncated:
		return "Truncated"
	case Invalid:
		return "Invalid"
	}
	return fmt.Sprintf("Verdict(%d)", int(v))
}

// Truncation: recovery drops every record with LSN in (After, Through]
// written under an epoch older than Epoch. Tail is the last LSN of this PG's
// chain that is <= After (recovery knows it), so the chain can continue from
// there.
type Truncation struct {
	After   uint64
	Through uint64
	Epoch   uint64
	Tail    uint64
}

// State is the summary a storage node persists and restores a Chain from;
// after New it re-offers the entries it holds above SCL.
//
// Truncations must travel with the segment: a new segment that hydrates from
// peers needs them too, or it will refuse (as StaleEpoch) the older-epoch
// records it must copy.
type State struct {
	SCL         uint64
	Epoch       uint64
	Truncations []Truncation
}

// Gap: some record(s) with LSN in (After, Before) are missing. Before is a
// held LSN whose backlink target is not held; After is the held LSN (or SCL)
// just below Before, which is as close as the chain can bound the hole.
type Gap struct {
	After  uint64
	Before uint64
}

// Chain is one segment's view of its PG's chain. Everything at or below SCL
// is summarized by SCL alone; records above it are indexed by LSN and by
// PrevLSN, so a new record links in, and SCL advances, in amortized O(1).
type Chain struct {
	scl     uint64
	epoch   uint64
	highest uint64
	truncs  []Truncation

	held   map[uint64]Entry  // above SCL, by LSN
	byPrev map[uint64]uint64 // above SCL, PrevLSN -> LSN
}

// New restores a chain from its persisted summary.
func New(st State) *Chain {
	return &Chain{
		scl:     st.SCL,
		epoch:   st.Epoch,
		highest: st.SCL,
		truncs:  slices.Clone(st.Truncations),
		held:    make(map[uint64]Entry),
		byPrev:  make(map[uint64]uint64),
	}
}

// Offer presents a record and says what to do with it.
//
// A record older than the newest epoch is not automatically stale: records a
// previous writer made durable keep their epoch forever, and segments copy
// them by gossip long after recovery. Such a record is accepted when every
// truncation newer than it vouches for it (its LSN is at or below the
// truncation's After). It is Truncated inside a truncation's range, and
// StaleEpoch otherwise: beyond a range (a writer of that epoch could not
// have allocated there, LAL bounds it) or when no truncation for the newer
// epoch has reached this chain yet (the caller may retry once it has).
func (c *Chain) Offer(e Entry) Verdict {
	v := c.judge(e, c.scl, c.epoch, c.holds, c.linked)
	if v != Accepted {
		return v
	}
	if e.Epoch > c.epoch {
		c.epoch = e.Epoch
	}
	c.held[e.LSN] = e
	c.byPrev[e.PrevLSN] = e.LSN
	c.highest = max(c.highest, e.LSN)
	c.advance()
	return Accepted
}

func (c *Chain) holds(lsn uint64) bool { _, ok := c.held[lsn]; return ok }

func (c *Chain) linked(prev uint64) bool { _, ok := c.byPrev[prev]; return ok }

// judge decides what Offer does with e, given a chain whose SCL and epoch are
// scl and epoch, which holds the LSNs for which holds is true above scl, and
// in which some held record links back to each prev for which linked is true.
func (c *Chain) judge(e Entry, scl, epoch uint64, holds, linked func(uint64) bool) Verdict {
	if e.LSN == 0 || e.PrevLSN >= e.LSN {
		return Invalid
	}
	// Truncation first: after recovery a newer record may hold the same
	// LSN, and the old one must be reported as truncated, not duplicate.
	vouched := false
	for _, t := range c.truncs {
		if e.Epoch >= t.Epoch {
			continue
		}
		switch {
		case e.LSN <= t.After:
			vouched = true
		case e.LSN <= t.Through:
			return Truncated
		default:
			return StaleEpoch
		}
	}
	if e.LSN <= scl || holds(e.LSN) {
		return Duplicate
	}
	if e.Epoch < epoch && !vouched {
		return StaleEpoch
	}
	if e.PrevLSN < scl || linked(e.PrevLSN) {
		return Invalid
	}
	return Accepted
}

// Check tells, without changing the chain, whether offering es in order
// would accept each of them or find it a duplicate. If not, it returns the
// index of the first entry that would be refused and its verdict; otherwise
// -1 and Accepted. A writer's request is checked whole before any of it is
// offered, so that a refused request changes nothing.
func (c *Chain) Check(es []Entry) (int, Verdict) {
	scl, epoch := c.scl, c.epoch
	var held map[uint64]bool
	var byPrev map[uint64]uint64
	holds := func(lsn uint64) bool { return held[lsn] || c.holds(lsn) }
	linked := func(prev uint64) bool { _, ok := byPrev[prev]; return ok || c.linked(prev) }
	for i, e := range es {
		switch v := c.judge(e, scl, epoch, holds, linked); v {
		case Duplicate:
			continue
		case Accepted:
		default:
			return i, v
		}
		if held == nil {
			held, byPrev = map[uint64]bool{}, map[uint64]uint64{}
		}
		held[e.LSN] = true
		byPrev[e.PrevLSN] = e.LSN
		epoch = max(epoch, e.Epoch)
		// Follow the links forward as advance would; what it would delete
		// lies at or below the new SCL, where judge no longer looks.
		for {
			next, ok := byPrev[scl]
			if !ok {
				next, ok = c.byPrev[scl]
			}
			if !ok {
				break
			}
			scl = next
		}
	}
	return -1, Accepted
}

// advance follows backlinks forward from SCL, folding each linked record
// into SCL.
func (c *Chain) advance() {
	for {
		next, ok := c.byPrev[c.scl]
		if !ok {
			return
		}
		delete(c.byPrev, c.scl)
		delete(c.held, next)
		c.scl = next
	}
}

// ObserveEpoch raises the newest epoch seen (a request header carried it). It
// returns false if epoch is older than the newest seen: the request comes
// from a fenced writer.
func (c *Chain) ObserveEpoch(epoch uint64) bool {
	if epoch < c.epoch {
		return false
	}
	c.epoch = epoch
	return true
}

// Epoch returns the newest epoch seen.
func (c *Chain) Epoch() uint64 { return c.epoch }

// SCL returns the highest LSN up to which every record of the PG is held.
func (c *Chain) SCL() uint64 { return c.scl }

// Highest returns the highest LSN held (at least SCL).
func (c *Chain) Highest() uint64 { return c.highest }

// HeldAbove returns how many records are held above SCL.
func (c *Chain) HeldAbove() int { return len(c.held) }

// Holes returns the gaps above SCL in LSN order; none when nothing is held
// above SCL. Every held record above SCL is either linked to a held
// predecessor or starts a gap, since one linked to SCL would have advanced
// it. Cost is O(k log k) in the records held above SCL.
func (c *Chain) Holes() []Gap {
	if len(c.held) == 0 {
		return nil
	}
	lsns := make([]uint64, 0, len(c.held))
	for l := range c.held {
		lsns = append(lsns, l)
	}
	slices.Sort(lsns)
	var gaps []Gap
	below := c.scl
	for _, l := range lsns {
		if _, ok := c.held[c.held[l].PrevLSN]; !ok {
			gaps = append(gaps, Gap{After: below, Before: l})
		}
		below = l
	}
	return gaps
}

// Truncate applies a recovery truncation and raises the epoch to t.Epoch.
//
// It returns the LSNs held above SCL that fall in the range with an older
// epoch; the caller must delete them. Records at or below the old SCL are
// summarized, not tracked one by one, so when SCL was above t.After the
// caller must also delete what it stores in (t.After, min(oldSCL, t.Through)]:
// a range delete over (t.After, t.Through] of records older than t.Epoch
// covers both. SCL then becomes t.Tail, from which the new writer's records
// continue the chain.
//
// Applying the same truncation twice is harmless, which lets an interrupted
// recovery simply redo it.
//
// Truncations are meant to arrive in epoch order. One older than a
// truncation already applied (a peer knew of an interrupted recovery this
// chain never heard of) still drops its range, but leaves SCL alone: the
// newer recovery saw past it, its writer's records may since have carried
// SCL further, and the older Tail knows nothing of them.
func (c *Chain) Truncate(t Truncation) (drop []uint64) {
	if t.Epoch > c.epoch {
		c.epoch = t.Epoch
	}
	if slices.Contains(c.truncs, t) {
		// Already applied: the new writer's records may since have carried
		// SCL past the range, and resetting it to Tail would forget them.
		return nil
	}
	superseded := false
	for _, o := range c.truncs {
		if o.Epoch > t.Epoch {
			superseded = true
		}
	}
	c.truncs = append(c.truncs, t)
	for l, e := range c.held {
		if l > t.After && l <= t.Through && e.Epoch < t.Epoch {
			drop = append(drop, l)
		}
	}
	slices.Sort(drop)
	for _, l := range drop {
		if c.byPrev[c.held[l].PrevLSN] == l {
			delete(c.byPrev, c.held[l].PrevLSN)
		}
		delete(c.held, l)
	}
	if c.scl > t.After && !superseded {
		c.scl = t.Tail
		// Held records between Tail and the old SCL would be chain records
		// Tail claims do not exist; none can be held (they were folded into
		// SCL), so the indexes stay consistent.
	}
	c.highest = c.scl
	for l := range c.held {
		c.highest = max(c.highest, l)
	}
	c.advance()
	return drop
}

// TruncationFor returns the truncation of the given epoch, if this chain
// has applied one.
func (c *Chain) TruncationFor(epoch uint64) (Truncation, bool) {
	for _, t := range c.truncs {
		if t.Epoch == epoch {
			return t, true
		}
	}
	return Truncation{}, false
}

// State returns the summary to persist.
func (c *Chain) State() State {
	return State{SCL: c.scl, Epoch: c.epoch, Truncations: slices.Clone(c.truncs)}
}
