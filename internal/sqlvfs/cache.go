package sqlvfs

import (
	"container/list"
	"sync"
)

// pageCache holds the newest image of recently used pages, shared by the
// connections of one database. Each entry carries an LSN at or above the
// LSN of the write that made the image, so that a reader pinned at a read
// point uses an entry only when the entry's version is the one at its read
// point. Images are never modified once cached.
//
// The cache holds the newest version of every page it holds (never an older
// one). Entries above the VDL are the only copy of the newest state a writer
// connection can see (storage cannot serve them yet), so they are never
// evicted; the LAL bounds how many there can be.
type pageCache struct {
	mu    sync.Mutex
	max   int
	lru   *list.List // front: most recent; values are *cacheEntry
	pages map[uint64]*list.Element
	vdl   func() uint64
	// submitted is the LSN of the newest MTR handed to the volume: the
	// newest state the writer connections see.
	submitted uint64
}

type cacheEntry struct {
	page uint64
	img  []byte
	lsn  uint64
}

func newPageCache(maxPages int, vdl func() uint64) *pageCache {
	if maxPages < 16 {
		maxPages = 16
	}
	return &pageCache{max: maxPages, lru: list.New(), pages: map[uint64]*list.Element{}, vdl: vdl, submitted: vdl()}
}

// newest returns the newest image of page and the LSN of its version (an
// upper bound), if cached.
func (c *pageCache) newest(page uint64) ([]byte, uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.pages[page]
	if !ok {
		return nil, 0, false
	}
	c.lru.MoveToFront(e)
	ce := e.Value.(*cacheEntry)
	return ce.img, ce.lsn, true
}

// at returns the image of page as of read point rp, if the cache has it.
func (c *pageCache) at(page, rp uint64) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rp > c.submitted {
		// An MTR at or below rp was handed to the volume (it may even be
		// durable already) but its pages are not in the cache yet: what the
		// cache holds may be older than rp. Storage has the state at rp.
		return nil, false
	}
	e, ok := c.pages[page]
	if !ok {
		return nil, false
	}
	ce := e.Value.(*cacheEntry)
	if ce.lsn > rp {
		return nil, false
	}
	c.lru.MoveToFront(e)
	return ce.img, true
}

// lastSubmitted is the LSN of the newest submitted MTR.
func (c *pageCache) lastSubmitted() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.submitted
}

// committed records the pages of the MTR that ends at lsn as the newest
// versions.
func (c *pageCache) committed(lsn uint64, pages map[uint64][]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.submitted = max(c.submitted, lsn)
	for pg, img := range pages {
		c.putLocked(pg, img, lsn)
	}
	c.evictLocked()
}

// readNewest adds an image a writer connection read from storage at read
// point rp while no newer version was cached: it is the newest version.
func (c *pageCache) readNewest(page uint64, img []byte, rp uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.pages[page]; ok {
		return
	}
	c.putLocked(page, img, rp)
	c.evictLocked()
}

// readAt adds an image a reader read from storage at read point rp, if it
// is still the newest version: nothing was submitted after rp.
func (c *pageCache) readAt(page uint64, img []byte, rp uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.pages[page]; ok || c.submitted > rp {
		return
	}
	c.putLocked(page, img, rp)
	c.evictLocked()
}

func (c *pageCache) putLocked(page uint64, img []byte, lsn uint64) {
	if e, ok := c.pages[page]; ok {
		ce := e.Value.(*cacheEntry)
		ce.img, ce.lsn = img, lsn
		c.lru.MoveToFront(e)
		return
	}
	c.pages[page] = c.lru.PushFront(&cacheEntry{page: page, img: img, lsn: lsn})
}

func (c *pageCache) evictLocked() {
	if c.lru.Len() <= c.max {
		return
	}
	vdl := c.vdl()
	e := c.lru.Back()
	for c.lru.Len() > c.max && e != nil {
		prev := e.Prev()
		if ce := e.Value.(*cacheEntry); ce.lsn <= vdl {
			c.lru.Remove(e)
			delete(c.pages, ce.page)
		}
		e = prev
	}
}

// drop forgets pages whose state is unknown.
func (c *pageCache) drop(pages ...uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, page := range pages {
		if e, ok := c.pages[page]; ok {
			c.lru.Remove(e)
			delete(c.pages, page)
		}
	}
}
