package storage

import (
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// Zeroed write-ahead logs. An fdatasync of an append that grows a file must
// also write the file's new size (and, on ext4, the extent the append
// allocated), which costs a fsync about 40% more CPU and latency than
// overwriting blocks the file already has. Pebble's write-ahead log appends
// at every group commit. So the log is kept ahead of its writes with zeros:
// when an append would pass the zeroed end, a chunk of zeros is written
// beyond it and synced, once per chunk, and the appends of the group commits
// after it overwrite blocks that exist. Pebble reads a zeroed tail as the end
// of the log (record.ErrZeroedChunk, the same as a preallocated log read
// back), so replay is unchanged; a recycled log is already as long as it was
// and is zeroed past that length only.
const walZeroChunk = 1 << 20

// isWAL reports whether name is a Pebble write-ahead log (NNNNNN.log).
func isWAL(name string) bool {
	return strings.HasSuffix(filepath.Base(name), ".log")
}

// zeroAheadFile is a write-ahead log whose appends land on zeroed blocks.
type zeroAheadFile struct {
	vfs.File
	mu sync.Mutex
	// off is where the next Write goes (the log is written only by Write,
	// in order); zeroed, how far the file holds data or zeros.
	off, zeroed int64
	// written counts the zeros (the node's file bytes).
	written *atomic.Uint64
}

func newZeroAheadFile(f vfs.File, written *atomic.Uint64) (vfs.File, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return &zeroAheadFile{File: f, zeroed: st.Size(), written: written}, nil
}

var zeros = make([]byte, walZeroChunk)

func (f *zeroAheadFile) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if end := f.off + int64(len(p)); end > f.zeroed {
		to := (end/walZeroChunk + 1) * walZeroChunk
		for f.zeroed < to {
			n := min(to-f.zeroed, walZeroChunk)
			w, err := f.File.WriteAt(zeros[:n], f.zeroed)
			f.written.Add(uint64(w))
			if err != nil {
				return 0, err
			}
			f.zeroed += n
		}
		// The new size and blocks become durable here, once, rather than in
		// the commit's own sync.
		if err := f.File.SyncData(); err != nil {
			return 0, err
		}
	}
	n, err := f.File.WriteAt(p, f.off)
	f.off += int64(n)
	return n, err
}
