package storage

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/borealis-db/borealis/internal/redo"
)

// The scrub reads every stored record (family 'r') and page version
// (family 'p') in the background, at most Config.ScrubRate bytes a second,
// and checks each against its CRC32C (and the key it is stored under);
// what fails is repaired from a peer (see repair.go). Reads check what
// they use too, so the scrub is what finds damage in data no one reads
// (older versions kept for read points, records kept for peers) before a
// second copy of it is lost.

// scrubChunkBytes bounds what one iterator reads before it is closed and
// the scrub waits for its rate: a long-lived iterator would keep the store's
// old files and memtables alive for the whole pass.
const scrubChunkBytes = 256 << 10

func (n *Node) scrubLoop() {
	t := time.NewTimer(n.cfg.ScrubInterval)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		start := time.Now()
		for _, s := range n.segments() {
			for _, fam := range []byte{famRecord, famVersion} {
				if !n.scrubFamily(s, fam) {
					return
				}
			}
		}
		t.Reset(max(0, n.cfg.ScrubInterval-time.Since(start)))
	}
}

// scrubFamily checks s's items of family fam, chunk by chunk. It returns
// false once the node stops.
func (n *Node) scrubFamily(s *seg, fam byte) bool {
	lower := segPrefix(fam, s.key.vol, s.key.pg)
	upper := prefixEnd(lower)
	for lower != nil {
		if n.stopping() {
			return false
		}
		// A hydrating segment's data is the copy's, and is replaced or
		// checked as it comes.
		if s.dropped.Load() || s.hydrating.Load() {
			return true
		}
		n.yield()
		next, bytes, err := n.scrubChunk(s, fam, lower, upper)
		if err != nil {
			if !n.metCorruption(err) {
				n.log.Warn("scrub step failed", "segment", s.key.String(), "err", err)
			}
			return true
		}
		if !n.scrub.wait(n.stop, bytes) {
			return false
		}
		lower = next
	}
	return true
}

// scrubChunk checks the items in [lower, upper) until about
// scrubChunkBytes are read, and returns where to go on from (nil at the
// end) and the bytes read. A damaged item is reported (metCorruption) and
// the chunk goes on.
func (n *Node) scrubChunk(s *seg, fam byte, lower, upper []byte) ([]byte, int, error) {
	it, err := n.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, 0, err
	}
	defer it.Close()
	bytes := 0
	pageSize := int(s.pageSize.Load())
	for it.First(); it.Valid(); it.Next() {
		if bytes >= scrubChunkBytes {
			return append([]byte(nil), it.Key()...), bytes, nil
		}
		k, v := it.Key(), it.Value()
		bytes += len(k) + len(v)
		n.stats.scrubbedItems.Add(1)
		n.stats.scrubbedBytes.Add(uint64(len(k) + len(v)))
		if err := checkItem(fam, k, v, pageSize); err != nil {
			// The view may be older than a repair: judge what is stored
			// now.
			if now, ok, gerr := n.get(k); gerr == nil && (!ok || checkItem(fam, k, now, pageSize) == nil) {
				continue
			}
			item := CorruptRecord
			if fam == famVersion {
				item = CorruptPageVersion
			}
			n.metCorruption(&errCorrupt{corruptItem{item: item, seg: s.key, page: keyPage(k), lsn: lastUint64(k)}, err})
		}
	}
	return nil, bytes, it.Error()
}

// checkItem verifies one stored record or page version against its CRC32C
// and its key.
func checkItem(fam byte, k, v []byte, pageSize int) error {
	if len(k) != 1+8+4+8+8 {
		return fmt.Errorf("key of %d bytes", len(k))
	}
	switch fam {
	case famRecord:
		r, err := redo.PeekHeader(v)
		if err != nil {
			return err
		}
		if r.LSN != lastUint64(k) || r.Page != keyPage(k) {
			return fmt.Errorf("the record is of page %d at LSN %d, stored as page %d at LSN %d", r.Page, r.LSN, keyPage(k), lastUint64(k))
		}
		return nil
	case famVersion:
		_, err := decodeVersion(k, v, pageSize)
		return err
	}
	return fmt.Errorf("family %q is not scrubbed", fam)
}

// keyPage reads the page of a record or version key.
func keyPage(k []byte) uint64 { return binary.BigEndian.Uint64(k[13:21]) }
