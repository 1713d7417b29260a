package storage

import "encoding/binary"

// Pebble key layout. Big-endian integers keep each family in numeric order.
//
//	e vol                  -> newest volume epoch seen (8 bytes)
//	m vol pg               -> segment metadata (JSON)
//	l vol pg lsn           -> chain entry: prevLSN, epoch, page (24 bytes)
//	r vol pg page lsn      -> encoded redo record
//	p vol pg page lsn      -> materialized page image
//	x vol inc              -> incarnation inc of the volume was deleted and dropped here (unix nanos; see drop.go);
//	                          x vol alone, from before incarnations, is read as inc 0
//
// The chain entry is kept apart from the record so that the chain can be
// rebuilt and gossiped in LSN order, while reads find a page's records by
// page.
const (
	famEpoch   = 'e'
	famMeta    = 'm'
	famChain   = 'l'
	famRecord  = 'r'
	famVersion = 'p'
	famDeleted = 'x'
)

func epochKey(vol uint64) []byte {
	k := make([]byte, 0, 9)
	k = append(k, famEpoch)
	return binary.BigEndian.AppendUint64(k, vol)
}

func segPrefix(fam byte, vol uint64, pg uint32) []byte {
	k := make([]byte, 0, 29)
	k = append(k, fam)
	k = binary.BigEndian.AppendUint64(k, vol)
	return binary.BigEndian.AppendUint32(k, pg)
}

func metaKey(vol uint64, pg uint32) []byte { return segPrefix(famMeta, vol, pg) }

func chainKey(vol uint64, pg uint32, lsn uint64) []byte {
	return binary.BigEndian.AppendUint64(segPrefix(famChain, vol, pg), lsn)
}

func pagePrefix(fam byte, vol uint64, pg uint32, page uint64) []byte {
	return binary.BigEndian.AppendUint64(segPrefix(fam, vol, pg), page)
}

func pageKey(fam byte, vol uint64, pg uint32, page, lsn uint64) []byte {
	return binary.BigEndian.AppendUint64(pagePrefix(fam, vol, pg, page), lsn)
}

// parseMetaKey splits a segment metadata key into its segment and sub-key;
// ok is false for any other key.
func parseMetaKey(k []byte) (vol uint64, pg uint32, sub byte, ok bool) {
	if len(k) != 1+8+4+1 || k[0] != famMeta {
		return 0, 0, 0, false
	}
	return binary.BigEndian.Uint64(k[1:]), binary.BigEndian.Uint32(k[9:]), k[13], true
}

// lastUint64 reads the trailing LSN of a chain, record or version key.
func lastUint64(k []byte) uint64 { return binary.BigEndian.Uint64(k[len(k)-8:]) }

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil
}

type chainEntry struct {
	prev, epoch, page uint64
}

func (e chainEntry) encode() []byte {
	b := make([]byte, 24)
	binary.BigEndian.PutUint64(b, e.prev)
	binary.BigEndian.PutUint64(b[8:], e.epoch)
	binary.BigEndian.PutUint64(b[16:], e.page)
	return b
}

func decodeChainEntry(b []byte) (chainEntry, bool) {
	if len(b) != 24 {
		return chainEntry{}, false
	}
	return chainEntry{
		prev:  binary.BigEndian.Uint64(b),
		epoch: binary.BigEndian.Uint64(b[8:]),
		page:  binary.BigEndian.Uint64(b[16:]),
	}, true
}
