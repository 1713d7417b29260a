package storage

import (
	"math"
	"time"
)

// This file is pure: it decides, from a segment's horizons, how far the
// materializer and the GC may go. It reads no clock and touches no store;
// materialize.go calls it with what it loaded.

// horizons are a segment's LSNs that bound its background work.
type horizons struct {
	// DurableSCL: every record up to it is synced here.
	DurableSCL uint64
	// ReadPoint: the PGMRPL the writer last reported; no instance reads
	// below it.
	ReadPoint uint64
	// Materialized: every record up to it is folded into page versions,
	// and older versions are gone.
	Materialized uint64
	// Retain: the lowest SCL among the PG's members, last reported; a
	// record above it may still be pulled by a peer.
	Retain uint64
	// LogFloor: chain entries and records up to it are collected.
	LogFloor uint64
}

// materializeTarget says up to which LSN the materializer may fold now, and
// whether it is worth doing: it goes no higher than the synced log nor than
// the oldest read point (a version above it would hide an older one that a
// reader may need), and it folds a backlog below backlog records' worth of
// LSNs only once sinceLast (the time since its last fold) reaches delay, so
// that it folds many records per page at once rather than rewrite hot pages
// after every few.
func materializeTarget(h horizons, sinceLast time.Duration, backlog uint64, delay time.Duration) (uint64, bool) {
	target := min(h.DurableSCL, h.ReadPoint)
	if target <= h.Materialized {
		return 0, false
	}
	if target-h.Materialized < backlog && sinceLast < delay {
		return 0, false
	}
	return target, true
}

// collectFloor says up to which LSN the GC may delete chain entries and
// records: those folded into page versions that every member of the PG
// already holds (a peer may still pull one above its retain LSN).
func collectFloor(h horizons) (uint64, bool) {
	floor := min(h.Materialized, h.Retain)
	if floor <= h.LogFloor {
		return 0, false
	}
	return floor, true
}

// idleFlushDue says whether the store's memtables are worth flushing now
// that the node is idle: appends stopped at least idle ago (sinceAppend),
// nothing was flushed since (flushedSince), and the logs the memtables keep
// alive hold more than minLog bytes. Pebble flushes a memtable only once the
// queued ones reach its memtable size, so a quiet node would otherwise keep
// every record it ever took, and the versions and deletions that replaced
// them, in its logs: a footprint of many times its live data, and a long
// replay at restart. A flush keeps only what is live, and frees the logs.
func idleFlushDue(sinceAppend, idle time.Duration, flushedSince bool, logBytes, minLog uint64) bool {
	return sinceAppend >= idle && !flushedSince && logBytes > minLog
}

// peerHorizon is what a segment knows of another member of its PG, for
// how much of its log to keep.
type peerHorizon struct {
	// SCL the member last reported (in its pulls, or in answers to this
	// segment's); Known is false when none was heard since the node
	// started or the member last failed to answer.
	SCL   uint64
	Known bool
	// Joining: the member is being added by a membership change under
	// way; it copies the PG from a peer's pages (hydration) and needs no
	// log below them.
	Joining bool
}

// retainFloor says up to which LSN no peer needs this segment's log, for
// collectFloor's Retain. The writer's retain LSN is the lowest SCL it knows
// among the members it counts, which may include one that hydrates (its SCL
// is low until its copy is in, and it needs no log below the copy) or one
// that is gone. The node's own knowledge may therefore go higher: every
// member of the held sets that is not joining has reported an SCL at least
// this high, so no such member needs a record at or below it. One member
// not heard from leaves the writer's retain LSN alone in force. Joining
// members count for nothing, and members of no set (removed, retired) are
// not among peers at all. The copies this node serves to hydrating peers
// (pins, their tails) hold the floor below the log they pull next.
func retainFloor(writerRetain uint64, peers []peerHorizon, pins []uint64) uint64 {
	floor := writerRetain
	members, lowest := 0, uint64(0)
	allKnown := true
	for _, p := range peers {
		if p.Joining {
			continue
		}
		if !p.Known {
			allKnown = false
			break
		}
		if members == 0 || p.SCL < lowest {
			lowest = p.SCL
		}
		members++
	}
	if allKnown {
		if members == 0 {
			// No other member holds the PG's log from this one.
			floor = math.MaxUint64
		} else {
			floor = max(floor, lowest)
		}
	}
	for _, pin := range pins {
		floor = min(floor, pin)
	}
	return floor
}
