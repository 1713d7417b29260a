package volume

import (
	"errors"
	"sort"
	"time"
)

// ErrReadOnly is what a read-only client (a replica's) answers a write with.
var ErrReadOnly = errors.New("volume: read-only client: a replica never writes")

// RedoObserver is told, by the writer's client, of every MTR and of the VDL.
// Both calls are made under the client's lock, so they must not block:
// Submitted in LSN order, and before any Durable whose VDL covers the MTR.
type RedoObserver interface {
	// Submitted: the MTR with LSNs first..last was allocated and queued to
	// storage; records are its encoded records in LSN order (not to be
	// modified).
	Submitted(first, last uint64, records [][]byte)
	// Durable: the VDL rose to vdl at at.
	Durable(vdl uint64, at time.Time)
}

// PGState is a PG as the writer knows it at a read point: its last LSN at or
// below it, the LSN its epoch's recovery truncated above (0: none), and its
// segments' SCLs from acks.
type PGState struct {
	PG        uint32
	Tail      uint64
	Recovered uint64
	SCLs      map[string]uint64
}

// PGStates returns every PG's state at read point at (at most the VDL): the
// PGs this client touched, and those recovery reported. A PG whose tail at
// at this client no longer knows (its LSNs below the oldest read point were
// let go) has Tail 0: unknown, never an older tail, which would let a read
// at at go to a segment that lacks the PG's records up to it.
func (c *Client) PGStates(at uint64) []PGState {
	c.mu.Lock()
	defer c.mu.Unlock()
	byPG := map[uint32]*PGState{}
	for idx, t := range c.cfg.PGTails {
		st := &PGState{PG: idx, Tail: t}
		for _, tr := range c.cfg.Truncations[idx] {
			if tr.Epoch == c.cfg.Epoch {
				st.Recovered = tr.After
			}
		}
		byPG[idx] = st
	}
	for idx, p := range c.pgs {
		st := &PGState{PG: idx, Recovered: p.recovered, SCLs: make(map[string]uint64, len(p.scl))}
		if t := c.pgTailLocked(p, at); t > 0 {
			st.Tail = t
		} else if old, ok := byPG[idx]; ok && (p.first == 0 || at < p.first) {
			// Nothing this client wrote is at or below at: recovery's tail
			// is the PG's.
			st.Tail = old.Tail
		} else {
			st.Tail = 0
		}
		for id, scl := range p.scl {
			st.SCLs[id] = scl
		}
		byPG[idx] = st
	}
	out := make([]PGState, 0, len(byPG))
	for _, st := range byPG {
		out = append(out, *st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PG < out[j].PG })
	return out
}

// SetReadFloor sets the replicas' part of the PGMRPL: the min_read_point
// sent to storage is the lowest of it, the VDL and this client's pins. held
// sends 0 instead, which raises nothing at storage (a new writer that has
// not heard from its replicas yet).
func (c *Client) SetReadFloor(floor uint64, held bool) {
	c.mu.Lock()
	c.floor, c.floorSet, c.floorHeld = floor, true, held
	c.updateMRPLocked()
	c.mu.Unlock()
}

// MinReadPoint is the min_read_point this client sends storage (0: held).
func (c *Client) MinReadPoint() uint64 { return c.mrp.Load() }

// ReadFloor returns the oldest read point this client pins, leaving out
// pins older than maxAge (0: none left out), and at most the VDL: what a
// replica reports for the PGMRPL.
func (c *Client) ReadFloor(now time.Time, maxAge time.Duration) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	lo := c.vdl.Load()
	for l := range c.pins {
		if l < lo && (maxAge <= 0 || now.Sub(c.pinAt[l]) <= maxAge) {
			lo = l
		}
	}
	return lo
}

// SetVDL raises a read-only client's VDL: the replica applied every MTR up
// to vdl. Waiters for it are released.
func (c *Client) SetVDL(vdl uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if vdl <= c.vdl.Load() {
		return
	}
	c.vdl.Store(vdl)
	c.wakeLocked(vdl, false)
	c.updateMRPLocked()
	// LSNs below the oldest read point are no longer needed to route a
	// read, but the last of them is (see pgState.lsns).
	mrp := c.mrp.Load()
	for idx, l := range c.roTails {
		k := 0
		for k+1 < len(l) && l[k+1] <= mrp {
			k++
		}
		if k > 0 {
			c.roTails[idx] = append(l[:0], l[k:]...)
		}
	}
}

// NoteRedo records, in a read-only client, that PG pg has a record at lsn
// (in LSN order per PG); reads at or above lsn route to segments complete to
// it.
func (c *Client) NoteRedo(pg uint32, lsn uint64) {
	c.mu.Lock()
	l := c.roTails[pg]
	if len(l) == 0 || l[len(l)-1] < lsn {
		c.roTails[pg] = append(l, lsn)
	}
	c.mu.Unlock()
}

// NotePGStates takes the PG states the writer's stream sent, in a read-only
// client: tails, recovered LSNs and segment SCLs.
func (c *Client) NotePGStates(states []PGState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	for _, st := range states {
		if st.Tail > 0 {
			l := c.roTails[st.PG]
			if len(l) == 0 || l[len(l)-1] < st.Tail {
				c.roTails[st.PG] = append(l, st.Tail)
			}
		}
		if st.Recovered > c.roRecovered[st.PG] {
			c.roRecovered[st.PG] = st.Recovered
		}
		if p, ok := c.pgs[st.PG]; ok {
			for id, scl := range st.SCLs {
				p.noteSCLLocked(id, scl, now, time.Time{})
			}
			continue
		}
		if len(st.SCLs) > 0 {
			m := c.roSCLs[st.PG]
			if m == nil {
				m = map[string]uint64{}
				c.roSCLs[st.PG] = m
			}
			for id, scl := range st.SCLs {
				m[id] = max(m[id], scl)
			}
		}
	}
}

// roTail is a read-only client's tail of PG idx at readLSN (0: unknown).
func (c *Client) roTail(idx uint32, readLSN uint64) uint64 {
	if !c.cfg.ReadOnly {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.roTails[idx]
	i := sort.Search(len(l), func(i int) bool { return l[i] > readLSN })
	if i == 0 {
		return 0
	}
	return l[i-1]
}

// SetStreamEpoch sets a read-only client's epoch: that of the writer whose
// stream it follows. Its reads carry it, so that a segment serves a read
// above that epoch's recovery only once it applied its truncation.
func (c *Client) SetStreamEpoch(epoch uint64) { c.roEpoch.Store(epoch) }

// Pinned is how many read points this client's readers pin now.
func (c *Client) Pinned() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, k := range c.pins {
		n += k
	}
	return n
}
