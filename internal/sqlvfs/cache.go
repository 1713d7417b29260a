package sqlvfs

import (
	"container/list"
	"sync"
)

// pageCache is an LRU of committed page images, shared by the connections of
// one database. Images are never modified once cached.
type pageCache struct {
	mu    sync.Mutex
	max   int
	lru   *list.List // front: most recent; values are *cacheEntry
	pages map[uint64]*list.Element
}

type cacheEntry struct {
	page uint64
	img  []byte
}

func newPageCache(maxPages int) *pageCache {
	if maxPages < 16 {
		maxPages = 16
	}
	return &pageCache{max: maxPages, lru: list.New(), pages: map[uint64]*list.Element{}}
}

func (c *pageCache) get(page uint64) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.pages[page]
	if !ok {
		return nil, false
	}
	c.lru.MoveToFront(e)
	return e.Value.(*cacheEntry).img, true
}

func (c *pageCache) put(page uint64, img []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.pages[page]; ok {
		e.Value.(*cacheEntry).img = img
		c.lru.MoveToFront(e)
		return
	}
	c.pages[page] = c.lru.PushFront(&cacheEntry{page: page, img: img})
	for c.lru.Len() > c.max {
		e := c.lru.Back()
		c.lru.Remove(e)
		delete(c.pages, e.Value.(*cacheEntry).page)
	}
}

func (c *pageCache) drop(page uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.pages[page]; ok {
		c.lru.Remove(e)
		delete(c.pages, page)
	}
}
