package sqlvfs

import (
	"errors"
	"fmt"

	"github.com/borealis-db/borealis/internal/redo"
)

// ErrSnapshotTooOld is what a read transaction gets once it has been pinned
// at its read point for longer than Options.MaxReadAge: storage may have
// collected the page versions it needs.
var ErrSnapshotTooOld = errors.New("sqlvfs: snapshot too old: the read transaction has been open longer than the maximum read age")

// OpenReplicaDB opens a read replica's database on vol, a read-only volume
// client whose VDL is the one the replica applied: read connections only
// (Writer is nil). The replica moves it forward with Apply; Promote makes
// it a writer's.
func OpenReplicaDB(vol Volume, opts Options) (*DB, error) {
	db, err := newDB("replica", vol, opts)
	if err != nil {
		return nil, err
	}
	if err := db.openReader(); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// Apply applies one MTR that ends at lsn to the page cache, atomically for
// every reader: the records of pages the cache holds update them, the
// others are dropped (storage serves those pages at any read point). Call it
// in LSN order, before the volume's VDL moves to lsn. A record that does not
// apply (a page it does not fit) drops its page from the cache; the error
// says which.
func (db *DB) Apply(lsn uint64, records []redo.Record) error {
	return db.d.cache.apply(lsn, records, db.d.pageSize)
}

// Resync drops every cached page and makes lsn the newest state: the
// replica resumes at lsn after missing MTRs, so no cached image can be
// trusted.
func (db *DB) Resync(lsn uint64) {
	db.d.cache.reset(lsn)
}

// apply is Apply under the cache's lock.
func (c *pageCache) apply(lsn uint64, records []redo.Record, pageSize int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	// Several records of one MTR may touch the same page: each builds on
	// the image the previous one made.
	made := map[uint64][]byte{}
	for i := range records {
		r := &records[i]
		img, ok := made[r.Page]
		if !ok {
			e, cached := c.pages[r.Page]
			if !cached {
				continue
			}
			img = append([]byte(nil), e.Value.(*cacheEntry).img...)
		}
		if img == nil {
			continue
		}
		if len(img) != pageSize {
			img = nil
		} else if err := redo.Apply(img, r); err != nil {
			errs = append(errs, fmt.Errorf("sqlvfs: record at LSN %d does not apply to cached page %d: %w", r.LSN, r.Page, err))
			img = nil
		}
		made[r.Page] = img
	}
	for pg, img := range made {
		if img == nil {
			if e, ok := c.pages[pg]; ok {
				c.lru.Remove(e)
				delete(c.pages, pg)
			}
			continue
		}
		c.putLocked(pg, img, lsn)
	}
	c.submitted = max(c.submitted, lsn)
	c.evictLocked()
	return errors.Join(errs...)
}

// reset drops every page and makes lsn the newest state.
func (c *pageCache) reset(lsn uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Init()
	clear(c.pages)
	c.submitted = max(c.submitted, lsn)
}
