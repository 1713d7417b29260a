package quorum

import (
	"slices"
	"time"
)

// A normal read is not a quorum read: it goes to one segment that holds the
// PG through the read point, and hedges to another if that one is slow (see
// DESIGN.md §3, Read). The functions below make the decisions of such a
// read: whom to ask in which order, when to ask the next one too, and what
// it means when none of them can serve the page. The caller gathers what it
// knows of each segment and sends the requests.

// ReadCandidate is what a reader knows of one segment it could ask for a
// page.
type ReadCandidate struct {
	ID SegmentID
	// SCL is the highest segment complete LSN the reader knows the segment
	// reported (from acks and earlier reads), 0 if none.
	SCL uint64
	// Reachable: the reader's stream to the segment's node answers.
	Reachable bool
	// Latency is the segment's usual round trip (0 if not known yet).
	Latency time.Duration
}

// ReadNeed returns the LSN a segment must be complete through to serve a
// read at readLSN without waiting: tail, the PG's last LSN at or below
// readLSN as far as the reader knows it, or readLSN itself when the tail is
// unknown (0). A segment complete through the tail holds every record of
// the PG up to readLSN, because the PG has none between them; asking for
// readLSN instead would rule out segments that only lack other PGs' LSNs.
func ReadNeed(readLSN, tail uint64) uint64 {
	if tail > 0 {
		return tail
	}
	return readLSN
}

// ReadOrder returns the indexes of cands in the order a read should ask
// them: first those known complete through need (SCL >= need), which can
// answer at once, while any other may refuse or make the read wait for
// gossip; then, among equals, the reachable ones, since a segment whose
// stream does not answer is likely down; then the lowest latency. Ties keep
// the order of cands, so the same inputs always give the same order. Every
// candidate is listed: one not known complete may well be (a fresh reader
// knows no SCLs), so it is tried last rather than never.
func ReadOrder(cands []ReadCandidate, need uint64) []int {
	order := make([]int, len(cands))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(i, j int) int {
		a, b := cands[i], cands[j]
		if ca, cb := a.SCL >= need, b.SCL >= need; ca != cb {
			if ca {
				return -1
			}
			return 1
		}
		if a.Reachable != b.Reachable {
			if a.Reachable {
				return -1
			}
			return 1
		}
		switch {
		case a.Latency < b.Latency:
			return -1
		case a.Latency > b.Latency:
			return 1
		}
		return 0
	})
	return order
}

// HedgeDelay is how long a read waits for a segment of the given usual
// latency before asking the next segment in ReadOrder as well:
// max(3 x latency, min). Three times the usual round trip is well past a
// healthy answer, so a hedge is a sign of a slow segment rather than extra
// load on every read; min keeps a read of a fast (or not yet measured)
// segment from hedging on scheduling noise. A refusal or an error is no
// reason to wait: the reader asks the next segment at once.
func HedgeDelay(latency, min time.Duration) time.Duration {
	return max(3*latency, min)
}

// ReadsAsZeros decides whether a page of a PG whose every segment failed a
// read is all zeros, given which members answered that they do not host the
// PG, and whether the reader knows the PG holds records at or below the read
// point (it wrote some, or knows a tail there).
//
// A segment is created on its node by the first records the writer sends
// it, and a record is durable only on a write quorum of every set. A read
// quorum of a set meets every write quorum of that set, so when a read
// quorum of every set (FullReadQuorum: during a membership change a record
// may be durable on the old set's write quorum only) says "not hosted", no
// record of the PG was ever durable and every page of it is still zeros. A
// read quorum of one set alone is not enough, for the reason FullReadQuorum
// gives. A reader that knows of records (wrote) trusts that over the
// segments: they may have lost their copies (an emptied node) but the data
// exists, and zeros would be a wrong answer rather than an error.
func (c Config) ReadsAsZeros(notHosted func(SegmentID) bool, wrote bool) bool {
	return !wrote && c.FullReadQuorum(notHosted)
}
