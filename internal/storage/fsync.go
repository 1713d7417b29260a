package storage

import (
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// syncCountingFS counts the syncs Pebble really issues, so that group commit
// is measured at the file system rather than inferred from our own loop, and
// the bytes it writes to its files (what the node costs the disk: the
// kernel's own per-process count, /proc/PID/io write_bytes, charges a whole
// large folio each time a page of it is dirtied). Its files do not
// preallocate (see syncCountingFile.Preallocate); its logs are zeroed ahead
// instead (see zeroAheadFile).
type syncCountingFS struct {
	vfs.FS
	syncs, written *atomic.Uint64
	// logs serializes the creation and reuse of write-ahead logs with the
	// emptying of obsolete ones (see logFiles).
	logs *logFiles
}

func (fs syncCountingFS) wrap(f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return syncCountingFile{File: f, syncs: fs.syncs, written: fs.written}, nil
}

// wrapLog wraps a file being written from its start: a write-ahead log
// keeps zeros ahead of its writes (see zeroAheadFile).
func (fs syncCountingFS) wrapLog(name string, f vfs.File, err error) (vfs.File, error) {
	if err == nil && isWAL(name) {
		f, err = newZeroAheadFile(f, fs.written)
	}
	return fs.wrap(f, err)
}

func (fs syncCountingFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	if isWAL(name) {
		fs.logs.mu.Lock()
		defer fs.logs.mu.Unlock()
		fs.logs.creating(name, "")
	}
	f, err := fs.FS.Create(name, c)
	return fs.wrapLog(name, f, err)
}

func (fs syncCountingFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	return fs.wrap(fs.FS.OpenReadWrite(name, c, opts...))
}

func (fs syncCountingFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	fs.logs.mu.Lock()
	defer fs.logs.mu.Unlock()
	fs.logs.creating(newname, oldname)
	f, err := fs.FS.ReuseForWrite(oldname, newname, c)
	return fs.wrapLog(newname, f, err)
}

// Remove keeps logFiles up to date with the logs Pebble deletes.
func (fs syncCountingFS) Remove(name string) error {
	if isWAL(name) {
		fs.logs.mu.Lock()
		defer fs.logs.mu.Unlock()
		fs.logs.removing(name)
	}
	return fs.FS.Remove(name)
}

type syncCountingFile struct {
	vfs.File
	syncs, written *atomic.Uint64
}

func (f syncCountingFile) Write(p []byte) (int, error) {
	n, err := f.File.Write(p)
	f.written.Add(uint64(n))
	return n, err
}

func (f syncCountingFile) WriteAt(p []byte, off int64) (int, error) {
	n, err := f.File.WriteAt(p, off)
	f.written.Add(uint64(n))
	return n, err
}

func (f syncCountingFile) Sync() error {
	f.syncs.Add(1)
	return f.File.Sync()
}

func (f syncCountingFile) SyncData() error {
	f.syncs.Add(1)
	return f.File.SyncData()
}

func (f syncCountingFile) SyncTo(length int64) (bool, error) {
	f.syncs.Add(1)
	return f.File.SyncTo(length)
}

// Preallocate does nothing. Pebble preallocates every new write-ahead log to
// 110% of the largest memtable size (70 MiB for the 64 MiB default), in
// blocks counted as used on disk, while its memtables start at 256 KiB and
// double: the first logs of a store held under a few MiB each but took 70 MiB
// apiece, 422 MiB per node for a database of a few MiB. Preallocation saves
// no work here: on ext4 it makes unwritten extents, whose conversion on
// first write is a metadata update an fdatasync has to write anyway, as is
// the file size, which grows either way. What does save a sync's metadata
// write is recycling an old log (Pebble overwrites it in place), which is
// unaffected.
func (f syncCountingFile) Preallocate(offset, length int64) error { return nil }
