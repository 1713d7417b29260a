package storage

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// group is one group commit: every append that joined it shares one synced
// Pebble batch, and so one fsync.
type group struct {
	batch  *pebble.Batch
	joined int
	// scls is the SCL of each segment the group's appends and truncations
	// left (the last one set wins, as fills run in order), and vdls the
	// highest writer VDL its appends told: written once per group at commit
	// rather than once per request, and published once synced.
	scls map[*seg]uint64
	vdls map[*seg]uint64
	done chan struct{}
	err  error
}

// committer runs group commit: while one group is being synced, the next one
// fills. Groups commit strictly in the order they were opened.
type committer struct {
	n      *Node
	mu     sync.Mutex
	cur    *group
	kick   chan struct{}
	closed bool
	quit   chan struct{}
}

func newCommitter(n *Node) *committer {
	c := &committer{n: n, kick: make(chan struct{}, 1), quit: make(chan struct{})}
	c.cur = c.newGroup()
	return c
}

func (c *committer) newGroup() *group {
	return &group{batch: c.n.db.NewBatch(), scls: map[*seg]uint64{}, vdls: map[*seg]uint64{}, done: make(chan struct{})}
}

// join lets fill write into the open group and returns it. The caller holds
// Node.mu, so groups are filled in offer order.
func (c *committer) join(fill func(b *pebble.Batch, g *group)) *group {
	c.mu.Lock()
	g := c.cur
	if err := c.n.failure(); err != nil {
		c.mu.Unlock()
		return failedGroup(err)
	}
	if c.closed {
		c.mu.Unlock()
		return closedGroup
	}
	fill(g.batch, g)
	g.joined++
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return g
}

func failedGroup(err error) *group {
	g := &group{done: make(chan struct{}), err: err}
	close(g.done)
	return g
}

var closedGroup = func() *group {
	g := &group{done: make(chan struct{}), err: errors.New("storage: node is shutting down")}
	close(g.done)
	return g
}()

func (c *committer) run() {
	for {
		select {
		case <-c.kick:
		case <-c.quit:
			c.mu.Lock()
			g := c.cur
			c.closed = true
			c.mu.Unlock()
			if g.joined > 0 {
				c.commit(g)
			}
			return
		}
		c.mu.Lock()
		g := c.cur
		if g.joined == 0 {
			c.mu.Unlock()
			continue
		}
		c.cur = c.newGroup()
		c.mu.Unlock()
		c.commit(g)
	}
}

func (c *committer) commit(g *group) {
	start := time.Now()
	err := c.n.failure()
	if err == nil {
		g.writeMeta()
		err = g.batch.Commit(pebble.Sync)
	}
	c.n.stats.commitLatency.Observe(time.Since(start).Seconds())
	c.n.stats.groupSize.Observe(float64(g.joined))
	g.batch.Close()
	c.n.stats.groupCommits.Add(1)
	if err != nil {
		// The chains already hold what this group failed to store, and later
		// groups were filled on top of them: no ack from here on could be
		// trusted. The node stops taking writes; a restart rebuilds its
		// state from what is on disk.
		c.n.fail(fmt.Errorf("group commit failed: %w", err))
		g.err = c.n.failure()
	} else {
		for s, scl := range g.scls {
			raise(&s.durableSCL, scl)
		}
	}
	close(g.done)
}

func (c *committer) close() {
	close(c.quit)
}

// writeMeta adds the group's segment metadata to its batch, after every
// fill. A segment dropped since (DropVolumes marks it before its deletions
// join a group) gets none: its keys are gone or about to be.
func (g *group) writeMeta() {
	for s, scl := range g.scls {
		if !s.dropped.Load() {
			g.batch.Set(metaSubKey(s.key.vol, s.key.pg, metaSCL), u64(scl), nil)
		}
	}
	for s, vdl := range g.vdls {
		if !s.dropped.Load() {
			g.batch.Set(metaSubKey(s.key.vol, s.key.pg, metaVDL), u64(vdl), nil)
		}
	}
}
