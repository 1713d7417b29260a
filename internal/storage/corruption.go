package storage

import (
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// CorruptItem says what a corruption damaged.
type CorruptItem int

const (
	// CorruptRecord: a stored redo record (family 'r') failed its CRC32C.
	CorruptRecord CorruptItem = iota + 1
	// CorruptPageVersion: a stored page version (family 'p') failed its
	// CRC32C.
	CorruptPageVersion
	// CorruptStoreFile: a file of the store failed Pebble's own checksums,
	// or what the store says of its segments does not decode.
	CorruptStoreFile
	// StoreStopped: Pebble stopped on an error it cannot go on from.
	StoreStopped
)

func (i CorruptItem) String() string {
	switch i {
	case CorruptRecord:
		return "record"
	case CorruptPageVersion:
		return "page version"
	case CorruptStoreFile:
		return "store file"
	case StoreStopped:
		return "store stopped"
	}
	return fmt.Sprintf("CorruptItem(%d)", int(i))
}

// CorruptionInfo describes a corruption the node met (Config.OnCorruption).
type CorruptionInfo struct {
	Item CorruptItem
	// Volume, PG, Page and LSN locate a damaged record or page version.
	Volume uint64
	PG     uint32
	Page   uint64
	LSN    uint64
	// Path is the store's damaged file, when Pebble names it.
	Path string
	Err  error
	// StoreDamaged: the store as a whole can no longer be trusted. The node
	// refuses writes from now on; the next Open moves a store with a
	// damaged file aside and starts empty, its segments copied again from
	// peers (after StoreStopped it tries the store again first). Otherwise
	// the node repairs the item from a peer while it goes on serving, and
	// refuses to serve the damaged item meanwhile.
	StoreDamaged bool
}

// corruptItem is a damaged record or page version, queued for repair.
type corruptItem struct {
	item      CorruptItem
	seg       segKey
	page, lsn uint64
}

// errCorrupt is a stored item that failed its check, met by a read.
type errCorrupt struct {
	corruptItem
	err error
}

func (e *errCorrupt) Error() string {
	return fmt.Sprintf("stored %s of %s page %d at LSN %d is corrupt: %v", e.item, e.seg, e.page, e.lsn, e.err)
}

func (e *errCorrupt) Unwrap() error { return e.err }

// errCorruptMeta marks segment metadata in the store that does not decode.
var errCorruptMeta = errors.New("corrupt segment metadata")

// isCorruption reports whether err says the store's data is damaged (as
// opposed to a store that is in use, or an I/O error that may pass), which
// is what makes Open move the store aside.
func isCorruption(err error) bool {
	return pebble.IsCorruptionError(err) || errors.Is(err, errCorruptMeta)
}

// repairAction is what the node does about a damaged item.
type repairAction int

const (
	// repairNothing: the item is gone since, or its segment is being
	// copied anyway; a later scrub pass finds it again if it stays.
	repairNothing repairAction = iota
	// repairFetchRecord: pull the record again from a peer and rewrite it.
	repairFetchRecord
	// repairRehydrate: copy the segment again from a complete peer, as a
	// segment that holds nothing would be: the versions copied replace all
	// the segment's versions, and the records they cover are deleted.
	repairRehydrate
)

func (a repairAction) String() string {
	return [...]string{"nothing", "fetch the record from a peer", "rehydrate the segment"}[a]
}

// repairFor decides what to do about a damaged item of a segment. A record
// is fetched again by LSN from a peer, unless it has been collected since
// (at or below the log floor) or no peer could give it (fetchFailed, all
// having collected it). A page version is the fold of records that are
// gone, here and mostly on the peers: only a copy of the segment from a
// peer's pages replaces it soundly. A segment that is hydrating already is
// left to its copy; its reads are refused until it completes.
func repairFor(item CorruptItem, lsn, logFloor uint64, hydrating, fetchFailed bool) repairAction {
	if hydrating {
		return repairNothing
	}
	switch item {
	case CorruptRecord:
		if lsn <= logFloor {
			return repairNothing
		}
		if fetchFailed {
			return repairRehydrate
		}
		return repairFetchRecord
	case CorruptPageVersion:
		return repairRehydrate
	}
	return repairNothing
}
