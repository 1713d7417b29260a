// Package quorum decides durability for a Borealis writer: quorum sets,
// membership configurations with dual quorums, and the PGCL/VCL/VDL tracker.
//
// Like etcd's raft package it is pure: callers feed in allocations, acks and
// membership changes, and read back decisions. It has no goroutines, clocks
// or I/O, and a Tracker is not safe for concurrent use; the writer serializes
// access to it.
package quorum

import (
	"errors"
	"fmt"
	"slices"
)

// SegmentID names one segment of a PG. It is unique within the PG (in
// practice the storage node's id), not across PGs.
type SegmentID string

// Set is one quorum set: Write of its Members must hold a record for it to be
// durable; Read of them answer a recovery read.
type Set struct {
	Members []SegmentID
	Write   int
	Read    int
}

// Default returns the usual quorum set for members: 4/6 writes and 3/6 reads
// for the standard six segments, and a simple majority otherwise, with the
// read quorum sized so that every read quorum meets every write quorum.
func Default(members []SegmentID) Set {
	n := len(members)
	w := n/2 + 1
	if n == 6 {
		w = 4
	}
	return Set{Members: slices.Clone(members), Write: w, Read: n - w + 1}
}

// count reports how many members satisfy has.
func (s Set) count(has func(SegmentID) bool) int {
	k := 0
	for _, m := range s.Members {
		if has(m) {
			k++
		}
	}
	return k
}

func (s Set) contains(id SegmentID) bool { return slices.Contains(s.Members, id) }

// Validate checks that reads and writes of the set intersect, and that two
// write quorums intersect (so two writers cannot both believe they won).
func (s Set) Validate() error {
	n := len(s.Members)
	if n == 0 {
		return errors.New("quorum: empty set")
	}
	seen := make(map[SegmentID]bool, n)
	for _, m := range s.Members {
		if seen[m] {
			return fmt.Errorf("quorum: duplicate member %q", m)
		}
		seen[m] = true
	}
	if s.Write < 1 || s.Write > n || s.Read < 1 || s.Read > n {
		return fmt.Errorf("quorum: write %d / read %d out of range for %d members", s.Write, s.Read, n)
	}
	if s.Read+s.Write <= n {
		return fmt.Errorf("quorum: read %d + write %d do not intersect over %d members", s.Read, s.Write, n)
	}
	if 2*s.Write <= n {
		return fmt.Errorf("quorum: two write quorums of %d do not intersect over %d members", s.Write, n)
	}
	return nil
}

// Config is a PG's membership: one Set normally, two during a membership
// change (ABCDEF -> ABCDEG). A write quorum needs the write quorum of EVERY
// set, so that whichever way the change resolves the record is durable; a read
// quorum needs the read quorum of ANY set, because each set's read quorum
// alone meets every write quorum made under this config.
type Config struct {
	Epoch uint64
	Sets  []Set
}

// WriteQuorum reports whether the segments for which has is true form a
// write quorum of every set.
func (c Config) WriteQuorum(has func(SegmentID) bool) bool {
	if len(c.Sets) == 0 {
		return false
	}
	for _, s := range c.Sets {
		if s.count(has) < s.Write {
			return false
		}
	}
	return true
}

// ReadQuorum reports whether the segments for which has is true form a read
// quorum of at least one set.
func (c Config) ReadQuorum(has func(SegmentID) bool) bool {
	for _, s := range c.Sets {
		if s.count(has) >= s.Read {
			return true
		}
	}
	return false
}

// FullReadQuorum reports whether the segments for which has is true form a
// read quorum of every set. Recovery needs it: during a membership change a
// record made durable before the change is on a write quorum of the old set
// only, and the new set, whose new member may not be hydrated yet, can hold
// it on fewer than a write quorum, so a read quorum of the new set alone can
// miss it (the simulator found such a schedule). A read quorum of each set
// meets every write quorum of that set.
func (c Config) FullReadQuorum(has func(SegmentID) bool) bool {
	if len(c.Sets) == 0 {
		return false
	}
	for _, s := range c.Sets {
		if s.count(has) < s.Read {
			return false
		}
	}
	return true
}

// Members returns the union of all sets' members, in order of first
// appearance, so that the same config always lists them the same way.
func (c Config) Members() []SegmentID {
	var out []SegmentID
	for _, s := range c.Sets {
		for _, m := range s.Members {
			if !slices.Contains(out, m) {
				out = append(out, m)
			}
		}
	}
	return out
}

// Contains reports whether id is a member of any set.
func (c Config) Contains(id SegmentID) bool {
	for _, s := range c.Sets {
		if s.contains(id) {
			return true
		}
	}
	return false
}

// Validate checks every set (see Set.Validate) and that there is at least one.
func (c Config) Validate() error {
	if len(c.Sets) == 0 {
		return errors.New("quorum: config has no sets")
	}
	for i, s := range c.Sets {
		if err := s.Validate(); err != nil {
			return fmt.Errorf("set %d: %w", i, err)
		}
	}
	return nil
}

// Clone returns a deep copy, so a caller can keep a config without aliasing
// the member slices of another.
func (c Config) Clone() Config {
	out := Config{Epoch: c.Epoch, Sets: make([]Set, len(c.Sets))}
	for i, s := range c.Sets {
		out.Sets[i] = Set{Members: slices.Clone(s.Members), Write: s.Write, Read: s.Read}
	}
	return out
}

// String renders the config compactly for logs and error messages, e.g.
// "e3{ABCDEF w4 r3, ABCDEG w4 r3}".
func (c Config) String() string {
	b := fmt.Appendf(nil, "e%d{", c.Epoch)
	for i, s := range c.Sets {
		if i > 0 {
			b = append(b, ", "...)
		}
		for j, m := range s.Members {
			if j > 0 {
				b = append(b, ' ')
			}
			b = append(b, m...)
		}
		b = fmt.Appendf(b, " w%d r%d", s.Write, s.Read)
	}
	return string(append(b, '}'))
}
