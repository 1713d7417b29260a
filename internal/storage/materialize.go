package storage

import (
	"encoding/json"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

const (
	// materializeChunk bounds the chain entries one materializer step folds,
	// so that a step is short and foreground appends wait little behind it.
	materializeChunk = 512
	// collectChunk bounds the log entries one GC step deletes.
	collectChunk = 4096
	// materializeBacklog and materializeDelay decide when a segment is worth
	// materializing: folding many records per page at once costs less than
	// rewriting hot pages after every few records.
	materializeBacklog = 8192
	materializeDelay   = time.Second
	// maxYield bounds how long background work defers to appends, so that a
	// steady write load cannot starve it and let the log grow without limit.
	maxYield = 20 * time.Millisecond
	// idleFlushMinLog: logs smaller than this are not worth an idle flush.
	idleFlushMinLog = 4 << 20
)

func (n *Node) materializeLoop() {
	t := time.NewTicker(n.cfg.MaterializeInterval)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		for _, s := range n.segments() {
			for {
				select {
				case <-n.stop:
					return
				default:
				}
				n.yield()
				did, err := n.backgroundStep(s)
				if n.metCorruption(err) {
					// Queued for repair; the segment waits for it.
					break
				}
				if err != nil {
					n.log.Error("materializer step failed", "segment", s.key.String(), "err", err)
					break
				}
				if !did {
					break
				}
				n.lastBackground = time.Now().UnixNano()
			}
		}
		n.maybeIdleFlush()
		n.expireSources(time.Now())
	}
}

// maybeIdleFlush flushes the store's memtables once writes have stopped
// for a while (see idleFlushDue), after the steps above folded and
// collected what they could. The steps' own writes count: the versions and
// deletions they make after the appends stop would otherwise stay in the
// logs until the next append. Once idle, and after that flush if it was
// due, it also empties the old logs Pebble keeps to recycle, once per idle
// spell (see logFiles).
func (n *Node) maybeIdleFlush() {
	last := max(n.lastAppend.Load(), n.lastBackground)
	if last == 0 {
		return
	}
	since := time.Since(time.Unix(0, last))
	live := n.liveWALBytes()
	if idleFlushDue(since, n.cfg.IdleFlushAfter, n.flushedAt >= last, live, idleFlushMinLog) {
		if err := n.db.Flush(); err != nil {
			n.log.Error("idle flush failed", "err", err)
			return
		}
		n.flushedAt = last
		n.log.Debug("flushed the memtables of an idle store", "log_bytes", live)
	}
	if since >= n.cfg.IdleFlushAfter && n.emptiedAt < last {
		freed, err := n.emptyObsoleteLogs()
		if err != nil {
			n.log.Warn("emptying the old write-ahead logs failed", "err", err)
			return
		}
		n.emptiedAt = last
		if freed > 0 {
			n.log.Debug("emptied the old write-ahead logs of an idle store", "bytes", freed)
		}
	}
}

// backgroundStep materializes, or else collects, one chunk of a segment,
// unless its volume has been dropped.
func (n *Node) backgroundStep(s *seg) (bool, error) {
	n.dropMu.Lock()
	defer n.dropMu.Unlock()
	// A hydrating segment's versions are the copy's, and its log is not
	// yet complete below them.
	if s.dropped.Load() || s.hydrating.Load() {
		return false, nil
	}
	did, err := n.materializeStep(s)
	if err == nil && !did {
		did, err = n.collectStep(s)
	}
	return did, err
}

// yield waits while appends are in flight, up to maxYield.
func (n *Node) yield() {
	deadline := time.Now().Add(maxYield)
	for n.appending.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Microsecond)
	}
}

// materializeStep folds the next chunk of records into page versions. It only
// goes up to the oldest read point any instance holds (PGMRPL), so every
// version it writes is one a reader may use, and the versions it replaces are
// ones no reader can need.
func (n *Node) materializeStep(s *seg) (bool, error) {
	mat := s.mat.Load()
	target, ok := materializeTarget(horizons{DurableSCL: s.durableSCL.Load(), ReadPoint: s.readPoint.Load(), Materialized: mat},
		time.Since(s.lastMaterialized), materializeBacklog, materializeDelay)
	if !ok {
		return false, nil
	}
	vol, pg := s.key.vol, s.key.pg
	it, err := n.db.NewIter(&pebble.IterOptions{
		LowerBound: chainKey(vol, pg, mat+1),
		UpperBound: chainKey(vol, pg, target+1),
	})
	if err != nil {
		return false, err
	}
	end := mat
	pages := map[uint64]bool{}
	for it.First(); it.Valid() && len(pages) < materializeChunk; it.Next() {
		e, ok := decodeChainEntry(it.Value())
		if !ok {
			it.Close()
			return false, errCorruptChain(s, lastUint64(it.Key()))
		}
		pages[e.page] = true
		end = lastUint64(it.Key())
	}
	if err := it.Close(); err != nil {
		return false, err
	}
	if len(pages) == 0 {
		// Nothing of this PG lies in (mat, target]: other PGs' LSNs.
		end = target
	}
	b := n.db.NewBatch()
	defer b.Close()
	for page := range pages {
		img, pageLSN, base, err := n.pageAt(n.db, s, page, end)
		if err != nil {
			return false, err
		}
		key := pageKey(famVersion, vol, pg, page, pageLSN)
		b.Set(key, encodeVersion(key, img), nil)
		// Each step leaves one version per page, so the version it started
		// from is the only older one.
		if base != 0 && base != pageLSN {
			b.Delete(pageKey(famVersion, vol, pg, page, base), nil)
		}
	}
	state, _ := json.Marshal(materState{Materialized: end, LogFloor: s.logFloor.Load()})
	b.Set(metaSubKey(vol, pg, metaMater), state, nil)
	// Publish the new horizon before older versions disappear, so a reader
	// that could see the deletion also sees the horizon and is refused.
	s.mat.Store(end)
	if h := n.hooks.materializeCommit.Load(); h != nil {
		(*h)(s)
	}
	// No sync: versions are derived from the synced log, and Pebble's WAL
	// replays in order, so a crash loses at most this step, never the log.
	if err := b.Commit(pebble.NoSync); err != nil {
		s.mat.Store(mat)
		return false, err
	}
	n.stats.pagesMaterialized.Add(uint64(len(pages)))
	s.lastMaterialized = time.Now()
	return true, nil
}

// collectStep deletes chain entries and records that are folded into page
// versions and that every member of the PG already holds.
func (n *Node) collectStep(s *seg) (bool, error) {
	old := s.logFloor.Load()
	retain := retainFloor(s.retain.Load(), n.peerHorizons(s), n.hydrationPins(s))
	floor, ok := collectFloor(horizons{Materialized: s.mat.Load(), Retain: retain, LogFloor: old})
	if !ok {
		return false, nil
	}
	vol, pg := s.key.vol, s.key.pg
	it, err := n.db.NewIter(&pebble.IterOptions{
		LowerBound: chainKey(vol, pg, old+1),
		UpperBound: chainKey(vol, pg, floor+1),
	})
	if err != nil {
		return false, err
	}
	b := n.db.NewBatch()
	defer b.Close()
	newFloor, count := floor, 0
	// The records of each page in (old, newFloor]: a page with several goes
	// with one range deletion, a page with one with a point deletion.
	type span struct{ first, last uint64 }
	pages := map[uint64]span{}
	for it.First(); it.Valid(); it.Next() {
		if count == collectChunk {
			newFloor = lastUint64(it.Key()) - 1
			break
		}
		lsn := lastUint64(it.Key())
		e, ok := decodeChainEntry(it.Value())
		if !ok {
			it.Close()
			return false, errCorruptChain(s, lsn)
		}
		if sp, ok := pages[e.page]; ok {
			sp.last = lsn
			pages[e.page] = sp
		} else {
			pages[e.page] = span{lsn, lsn}
		}
		count++
	}
	if err := it.Close(); err != nil {
		return false, err
	}
	// Nothing of the segment is written at or below newFloor any more
	// (it is below the SCL, and truncations are above the VDL), so range
	// deletions cover exactly the entries and records scanned above.
	if count > 0 {
		b.DeleteRange(chainKey(vol, pg, old+1), chainKey(vol, pg, newFloor+1), nil)
	}
	for page, sp := range pages {
		if sp.first == sp.last {
			b.Delete(pageKey(famRecord, vol, pg, page, sp.first), nil)
		} else {
			b.DeleteRange(pageKey(famRecord, vol, pg, page, sp.first), pageKey(famRecord, vol, pg, page, sp.last+1), nil)
		}
	}
	state, _ := json.Marshal(materState{Materialized: s.mat.Load(), LogFloor: newFloor})
	b.Set(metaSubKey(vol, pg, metaMater), state, nil)
	if err := b.Commit(pebble.NoSync); err != nil {
		return false, err
	}
	s.logFloor.Store(newFloor)
	return true, nil
}
