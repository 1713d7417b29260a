package sqlvfs

import (
	"errors"
	"fmt"

	"github.com/borealis-db/borealis/internal/redo"
)

// Promote makes a replica's database (OpenReplicaDB) a writer's: from now
// on it reads and writes through vol, a writer's volume client (at the new
// epoch, opened at the VDL its recovery found), and it opens the Writer
// pool. The page cache is kept, warm: failover turns a replica into the
// writer without reading its working set from storage again.
//
// The cache holds the newest version of each page as of the VDL the
// replica applied. That is the state at vol's VDL when the replica applied
// every MTR up to it (a replica that caught up with the old writer's
// durable log); if vol's VDL is above what the replica applied, MTRs the
// replica never saw may have changed any cached page, and Promote drops the
// cache (as Resync does) rather than serve them stale. A VDL below what the
// replica applied is refused: the replica exposed MTRs the new writer's
// recovery did not find durable.
//
// Call it once the replica has stopped applying (no Apply or Resync runs
// during or after it), and not concurrently with Close. Read connections
// keep serving throughout: a read transaction begun before keeps its read
// point and its pin on the old volume client (close that client once they
// ended); later ones pin vol's VDL. If the Writer pool does not open, the
// database goes back to the old volume client and stays a replica's.
//
// lacking, if given, are the records in (applied, vol's VDL], every one of
// them in LSN order (volume.Client.RedoSince): Promote applies them to the
// cached pages, as a replica applies MTRs, and keeps the cache. If they do
// not end at the VDL, the cache is dropped. Promote reports whether it kept
// the cache.
func (db *DB) Promote(vol Volume, lacking ...redo.Record) (warm bool, err error) {
	if db.Writer != nil {
		return false, errors.New("sqlvfs: the database has a writer already")
	}
	d := db.d
	applied, vdl := d.cache.lastSubmitted(), vol.VDL()
	if vdl < applied {
		return false, fmt.Errorf("sqlvfs: cannot promote the database of %s: the new volume client's VDL %d is below the LSN %d the database applied", d.name, vdl, applied)
	}
	old := d.volume()
	d.setVolume(vol)
	warm = true
	if vdl > applied {
		warm = len(lacking) > 0 && lacking[0].LSN > applied && lacking[len(lacking)-1].LSN == vdl
		if warm {
			warm = d.cache.apply(vdl, lacking, d.pageSize) == nil
		}
		if !warm {
			d.cache.reset(vdl)
		}
	}
	if err := db.openWriter(); err != nil {
		d.setVolume(old)
		return false, fmt.Errorf("sqlvfs: promoting the database of %s: %w", d.name, err)
	}
	return warm, nil
}
