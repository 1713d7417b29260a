package storage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// A damaged store: one whose files Pebble finds damaged, at open or later.
// The node cannot tell which of its acknowledged records such a store
// still holds, so it stops acknowledging (it refuses writes) and leaves a
// marker; the next Open moves the store aside, whole, and starts on an
// empty one. Every durable record is on a write quorum of its PG's peers:
// the control plane, seeing a node back under a new boot that lacks the
// segments its peers hold, declares them to hydrate (MissingSegments). The
// node's identity (node.json) lives beside the store, not in it, so the
// node comes back as itself.

// damagedMarker is the file, in the data directory, that says the store
// is damaged and why.
const damagedMarker = "store-damaged"

func (n *Node) damagedMarkPath() string { return filepath.Join(n.cfg.Dir, damagedMarker) }

// openStore opens the node's store, moving it aside first if it was marked
// damaged, and if Pebble finds it damaged.
func (n *Node) openStore() (*pebble.DB, error) {
	if why, err := readFile(n.cfg.FS, n.damagedMarkPath()); err == nil {
		if err := n.moveStoreAside(fmt.Errorf("the node marked it damaged: %s", why)); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("storage: read %s: %w", n.damagedMarkPath(), err)
	}
	db, err := n.openPebble()
	if err == nil || !isCorruption(err) {
		return db, err
	}
	if err := n.moveStoreAside(err); err != nil {
		return nil, err
	}
	return n.openPebble()
}

func (n *Node) openPebble() (*pebble.DB, error) {
	opts := &pebble.Options{
		FS:           n.fs,
		Logger:       pebbleLogger{log: n.log, n: n},
		MemTableSize: n.cfg.MemTableBytes,
		EventListener: &pebble.EventListener{
			WALCreated: n.fs.logs.created,
			// A store with a damaged file can no longer back the SCLs it
			// has acknowledged (see storeDamaged).
			DataCorruption: func(info pebble.DataCorruptionInfo) {
				n.storeDamaged(CorruptionInfo{Item: CorruptStoreFile, Path: info.Path, Err: info.Details})
			},
		},
	}
	// Pebble syncs its directory, not the directory's entry in the data
	// directory.
	if err := mkdirAllSynced(n.cfg.FS, n.pebbleDir()); err != nil {
		return nil, fmt.Errorf("storage: create %s: %w", n.pebbleDir(), err)
	}
	db, err := pebble.Open(n.pebbleDir(), opts)
	if errors.Is(err, syscall.EAGAIN) {
		return nil, n.errInUse()
	}
	if err != nil {
		return nil, fmt.Errorf("storage: open store in %s: %w", n.cfg.Dir, err)
	}
	return db, nil
}

// moveStoreAside renames the store's directory to damaged-<time> beside
// it, where it stays for an operator to look at or delete, and forgets the
// marker.
func (n *Node) moveStoreAside(why error) error {
	// Under the store's own lock: a store another running node holds is
	// not this one's to move.
	if _, err := n.cfg.FS.Stat(n.pebbleDir()); err == nil {
		lock, err := n.cfg.FS.Lock(filepath.Join(n.pebbleDir(), "LOCK"))
		if errors.Is(err, syscall.EAGAIN) {
			return n.errInUse()
		}
		if err != nil {
			return fmt.Errorf("storage: lock the damaged store %s to move it aside: %w", n.pebbleDir(), err)
		}
		defer lock.Close()
	}
	aside := filepath.Join(n.cfg.Dir, "damaged-"+time.Now().UTC().Format("20060102T150405.000000000Z"))
	n.log.Error("the store is damaged: moved aside, whole; the node starts on an empty store and its segments are copied again from their peers, which hold every durable record (the control plane declares them to hydrate once the node heartbeats lacking them); delete the moved directory once it is not needed",
		"store", n.pebbleDir(), "moved_to", aside, "reason", why.Error())
	if err := n.cfg.FS.Rename(n.pebbleDir(), aside); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("storage: move the damaged store %s aside to %s: %w", n.pebbleDir(), aside, err)
	}
	if err := n.cfg.FS.Remove(n.damagedMarkPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("storage: remove %s: %w", n.damagedMarkPath(), err)
	}
	if err := syncDir(n.cfg.FS, n.cfg.Dir); err != nil {
		return fmt.Errorf("storage: sync %s: %w", n.cfg.Dir, err)
	}
	// The logs of the store moved aside are not this store's.
	n.fs.logs = newLogFiles()
	n.failed.Store(nil)
	n.damaged.Store(false)
	return nil
}

func (n *Node) errInUse() error {
	return fmt.Errorf("storage: %s is in use by another running storage node (its store is locked); stop that one first, or use another --dir", n.cfg.Dir)
}

// resetLoaded forgets what load took from a store that was then moved
// aside.
func (n *Node) resetLoaded() {
	n.segs = map[segKey]*seg{}
	n.volEpochs = map[uint64]uint64{}
	n.deleted = map[uint64]map[uint64]bool{}
	n.incs = map[uint64]uint64{}
}

// storeDamaged marks the store damaged: the node refuses writes from now
// on, and, for a damaged file, the next Open moves the store aside (see
// above). Reads go on: Pebble checks each block it reads against its
// checksum, so a read either meets the damage and fails, or is sound. When
// Pebble stopped (StoreStopped) the cause may be an I/O error that a
// restart does not meet again: the next Open tries the store, and moves it
// aside only if Pebble then finds it damaged.
func (n *Node) storeDamaged(info CorruptionInfo) {
	info.StoreDamaged = true
	n.stats.corruptionsFound.Add(1)
	if n.damaged.CompareAndSwap(false, true) {
		n.log.Error("the store is damaged: the node refuses writes from now on; once opened again, it moves a store with damaged files aside and copies its segments again from peers, which hold every durable record",
			"item", info.Item.String(), "file", info.Path, "error", errString(info.Err), "dir", n.cfg.Dir)
		if info.Item == StoreStopped {
			// Not marked: see above.
		} else if err := writeFileSync(n.cfg.FS, n.damagedMarkPath(), []byte(errString(info.Err))); err != nil {
			n.log.Error("cannot mark the store damaged; it is not moved aside when the node opens again unless Pebble finds the damage then", "marker", n.damagedMarkPath(), "err", err)
		}
		n.fail(fmt.Errorf("the store is damaged (%s %s): %s", info.Item, info.Path, errString(info.Err)))
	}
	n.tellCorruption(info)
}

// StoreDamaged reports whether the node has found its store damaged since
// it opened it: it refuses writes, and the next Open moves the store
// aside.
func (n *Node) StoreDamaged() bool { return n.damaged.Load() }

func (n *Node) tellCorruption(info CorruptionInfo) {
	if f := n.cfg.OnCorruption; f != nil {
		f(info)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
