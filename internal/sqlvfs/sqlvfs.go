// Package sqlvfs runs SQLite on a Borealis volume: a VFS of
// github.com/ncruces/go-sqlite3 (pure Go, no cgo) whose main database file
// is the volume's pages.
//
// Mapping. The SQLite page size is the volume page size, and SQLite page N
// (pages numbered from 1) is volume page N.
//
// One SQLite transaction is one MTR. Writes to the main database file are
// buffered from the first write (under RESERVED) until FileCommitPhaseTwo,
// which SQLite calls on every commit and never on a rollback. There each
// dirty page becomes a volume.PageWrite (Old: the page's image before the
// transaction, nil for a page beyond the previous file size; the volume
// client turns that into a byte-range diff or a full image) and the whole set
// goes to Submit as one MTR; the commit then waits for WaitDurable while it
// still holds SQLite's EXCLUSIVE lock. An Unlock below RESERVED without phase
// two (a ROLLBACK, a failed statement's rollback, a closed connection)
// discards the buffer: storage is untouched.
//
// TODO(issue 4, next step): pipelined commits. The VFS should hand the MTR
// to the client and release the write lock at once, the COMMIT returning only
// when VDL >= its LSN, with read connections pinned at a read point.
//
// Journal. Connections use journal_mode=MEMORY (set by Open / DSN); the VFS
// never creates a journal or WAL file on storage. Temporary files SQLite asks
// for (sorter, statement journals, temp databases) live in memory.
//
// File size. The size of the main file is the page count that SQLite keeps
// in page 1's header (offset 28, big-endian), read from page 1 at the read
// point (through the page cache). SQLite trusts that field because the VFS
// serves equal values at offsets 24 and 92 (see below), and it maintains it on
// every commit. No local file is involved.
//
// Change counter. With batch-atomic writes SQLite does not bump the change
// counter at offset 24 of page 1, so another connection would keep a stale
// page cache. The VFS therefore serves page 1 with a counter (at offset 24,
// and the same value as version-valid-for at offset 92) that is chosen when
// the connection takes its SHARED lock: it changes whenever the volume's VDL
// has moved since the connection's previous read point by commits other than
// the connection's own, and a new value is always above every value SQLite
// could hold (those served, and those it wrote itself into page 1), so SQLite
// drops its page cache exactly when another connection committed. After its
// own commit a connection keeps its cache. Both fields are stored as zero on
// the volume (smaller diffs; the stored page 1 is still a valid header).
//
// Page cache. A per-volume LRU of committed page images (its size in MiB)
// serves reads and the Old images of diffs without reading storage. In this
// step commits hold EXCLUSIVE while they wait for durability, so no reader
// holds SHARED during a commit and the cache is always the state at every
// current read point.
package sqlvfs

import (
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"io"
	"net/url"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ncruces/go-sqlite3"
	_ "github.com/ncruces/go-sqlite3/driver" // registers "sqlite3" with database/sql
	"github.com/ncruces/go-sqlite3/util/vfsutil"
	"github.com/ncruces/go-sqlite3/vfs"

	"github.com/borealis-db/borealis/internal/volume"
)

// VFSName is the name the VFS is registered under.
const VFSName = "borealis"

// Defaults.
const (
	DefaultPageSize    = 4096
	DefaultCacheMiB    = 64
	DefaultBusyTimeout = 10 * time.Second
)

// Volume is what the VFS needs of a volume; *volume.Client implements it.
type Volume interface {
	ReadPage(ctx context.Context, page uint64, readLSN uint64) ([]byte, error)
	Submit(ctx context.Context, mtr []volume.PageWrite) (uint64, error)
	WaitDurable(ctx context.Context, lsn uint64) error
	VDL() uint64
}

var _ Volume = (*volume.Client)(nil)

// Options configure a registered database.
type Options struct {
	// PageSize must equal the volume's page size (volume.Client has no
	// accessor for it). Default 4096.
	PageSize int
	// CacheMiB sizes the page cache of recent page images. Default 64.
	CacheMiB int
	// BusyTimeout is SQLite's busy_timeout used by Open. Default 10s.
	BusyTimeout time.Duration
}

func (o Options) withDefaults() Options {
	if o.PageSize == 0 {
		o.PageSize = DefaultPageSize
	}
	if o.CacheMiB <= 0 {
		o.CacheMiB = DefaultCacheMiB
	}
	if o.BusyTimeout <= 0 {
		o.BusyTimeout = DefaultBusyTimeout
	}
	return o
}

// counterTrick can be turned off by tests to show that without it a second
// connection misses commits.
var counterTrick = true

var (
	registerOnce sync.Once
	regMu        sync.Mutex
	registry     = map[string]*database{}
	nameSeq      atomic.Uint64
)

// Register makes vol available to SQLite as the main database file name
// (open it with "file:NAME?vfs=borealis"). It fails if name is taken.
func Register(name string, vol Volume, opts Options) error {
	opts = opts.withDefaults()
	if opts.PageSize < 512 || opts.PageSize > 65536 || opts.PageSize&(opts.PageSize-1) != 0 {
		return fmt.Errorf("sqlvfs: page size %d is not a SQLite page size", opts.PageSize)
	}
	registerOnce.Do(func() { vfs.Register(VFSName, borealisVFS{}) })
	regMu.Lock()
	defer regMu.Unlock()
	if _, ok := registry[name]; ok {
		return fmt.Errorf("sqlvfs: database %q already registered", name)
	}
	registry[name] = &database{
		name:     name,
		vol:      vol,
		pageSize: opts.PageSize,
		cache:    newPageCache(opts.CacheMiB << 20 / opts.PageSize),
	}
	return nil
}

// Unregister forgets name; connections already open keep working.
func Unregister(name string) {
	regMu.Lock()
	delete(registry, name)
	regMu.Unlock()
}

// DSN returns the database/sql data source name of a registered database,
// with the pragmas the VFS requires.
func DSN(name string, opts Options) string {
	opts = opts.withDefaults()
	q := url.Values{}
	q.Set("vfs", VFSName)
	// busy_timeout first: the others may wait for another connection's lock.
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", opts.BusyTimeout.Milliseconds()))
	q.Add("_pragma", fmt.Sprintf("page_size(%d)", opts.PageSize))
	q.Add("_pragma", "journal_mode(memory)")
	return "file:" + url.PathEscape(name) + "?" + q.Encode()
}

// Open registers vol under a fresh name and opens it with database/sql and
// the ncruces driver. It checks that SQLite uses the volume's page size.
func Open(vol Volume, opts Options) (*sql.DB, error) {
	db, _, err := open(vol, opts)
	return db, err
}

func open(vol Volume, opts Options) (*sql.DB, *database, error) {
	opts = opts.withDefaults()
	name := fmt.Sprintf("vol%d", nameSeq.Add(1))
	if err := Register(name, vol, opts); err != nil {
		return nil, nil, err
	}
	regMu.Lock()
	d := registry[name]
	regMu.Unlock()
	db, err := sql.Open("sqlite3", DSN(name, opts))
	if err != nil {
		Unregister(name)
		return nil, nil, err
	}
	if err := check(db, opts); err != nil {
		db.Close()
		Unregister(name)
		return nil, nil, err
	}
	return db, d, nil
}

// check verifies the pragmas the VFS depends on.
func check(db *sql.DB, opts Options) error {
	var ps int
	var jm string
	if err := db.QueryRow("PRAGMA page_size").Scan(&ps); err != nil {
		return err
	}
	if err := db.QueryRow("PRAGMA journal_mode").Scan(&jm); err != nil {
		return err
	}
	if ps != opts.PageSize || jm != "memory" {
		return fmt.Errorf("sqlvfs: database has page_size %d, journal_mode %s; want %d, memory", ps, jm, opts.PageSize)
	}
	return nil
}

// database is one registered volume, shared by all its connections.
type database struct {
	name     string
	vol      Volume
	pageSize int
	cache    *pageCache

	// Counters for tests and later metrics.
	batches     atomic.Uint64 // transactions committed by batch-atomic write
	spilled     atomic.Uint64 // page writes outside a batch (cache spills, big transactions)
	volumeReads atomic.Uint64 // page reads that missed the cache
	readAts     atomic.Uint64 // ReadAt calls on the main file

	lockMu   sync.Mutex
	waiter   *sync.Cond
	shared   int
	pending  bool
	reserved bool
}

// page returns the committed image of page pg at read point rp (the slice
// must not be modified). Images are cached only when cache is true.
func (d *database) page(pg, rp uint64, cache bool) ([]byte, error) {
	if b, ok := d.cache.get(pg); ok {
		return b, nil
	}
	d.volumeReads.Add(1)
	b, err := d.vol.ReadPage(context.Background(), pg, rp)
	if err != nil {
		return nil, err
	}
	if len(b) != d.pageSize {
		return nil, fmt.Errorf("sqlvfs: page %d is %d bytes, want %d", pg, len(b), d.pageSize)
	}
	if cache {
		d.cache.put(pg, b)
	}
	return b, nil
}

type borealisVFS struct{}

func (borealisVFS) Open(name string, flags vfs.OpenFlag) (vfs.File, vfs.OpenFlag, error) {
	const temps = vfs.OPEN_TEMP_JOURNAL | vfs.OPEN_SUBJOURNAL | vfs.OPEN_TEMP_DB | vfs.OPEN_TRANSIENT_DB
	if flags&temps != 0 {
		return &vfsutil.SliceFile{}, flags | vfs.OPEN_MEMORY, nil
	}
	if flags&vfs.OPEN_MAIN_DB == 0 {
		// A main journal, WAL or super-journal: journal_mode must be MEMORY.
		return nil, flags, sqlite3.CANTOPEN
	}
	regMu.Lock()
	d := registry[name]
	regMu.Unlock()
	if d == nil {
		return nil, flags, sqlite3.CANTOPEN
	}
	return &file{db: d}, flags, nil
}

func (borealisVFS) Delete(name string, syncDir bool) error {
	return sqlite3.IOERR_DELETE_NOENT
}

func (borealisVFS) Access(name string, flags vfs.AccessFlag) (bool, error) {
	return false, nil // no journal or WAL ever exists
}

func (borealisVFS) FullPathname(name string) (string, error) { return name, nil }

// dirtyPage is a page written by the current transaction.
type dirtyPage struct {
	old []byte // committed image; nil if the page was beyond the file
	new []byte
}

// file is one connection's handle on the main database file.
type file struct {
	db   *database
	lock vfs.LockLevel

	// Read point and the page-1 counter served at it. hi is the highest
	// counter SQLite can hold for this file: served ones and ones it wrote
	// itself (it bumps the counter whenever it writes page 1). A new
	// counter is always above it, so it differs from whatever SQLite kept.
	rp      uint64
	served  uint32
	hi      uint32
	rpValid bool

	// The current write transaction's buffer.
	inTxn bool
	size  int64 // file size in the transaction
	dirty map[uint64]*dirtyPage
	// Batch-atomic undo: dirty entries (nil: absent) as they were at
	// BeginAtomicWrite, for pages touched since.
	inBatch   bool
	batchSize int64
	undo      map[uint64]*dirtyPage
}

var (
	_ vfs.FileLockState        = (*file)(nil)
	_ vfs.FileCommitPhaseTwo   = (*file)(nil)
	_ vfs.FileBatchAtomicWrite = (*file)(nil)
	_ vfs.FileSizeHint         = (*file)(nil)
)

func (f *file) Close() error {
	f.discard()
	return f.Unlock(vfs.LOCK_NONE)
}

// readPoint is the LSN reads are served at: the one taken with SHARED, or
// the VDL when no lock is held (SQLite's header read at open).
func (f *file) readPoint() uint64 {
	if f.lock >= vfs.LOCK_SHARED && f.rpValid {
		return f.rp
	}
	return f.db.vol.VDL()
}

// committedSize is the file size at the read point: page 1's page count.
func (f *file) committedSize() (int64, error) {
	p1, err := f.db.page(1, f.readPoint(), f.lock >= vfs.LOCK_SHARED)
	if err != nil {
		return 0, err
	}
	return int64(binary.BigEndian.Uint32(p1[28:32])) * int64(f.db.pageSize), nil
}

func (f *file) Size() (int64, error) {
	if f.inTxn {
		return f.size, nil
	}
	return f.committedSize()
}

// image returns page pg as the connection sees it (not to be modified), and
// whether it is the transaction's own image.
func (f *file) image(pg uint64) ([]byte, bool, error) {
	if f.inTxn {
		if dp := f.dirty[pg]; dp != nil {
			return dp.new, true, nil
		}
	}
	img, err := f.db.page(pg, f.readPoint(), f.lock >= vfs.LOCK_SHARED)
	return img, false, err
}

func (f *file) ReadAt(b []byte, off int64) (int, error) {
	f.db.readAts.Add(1)
	size, err := f.Size()
	if err != nil {
		return 0, err
	}
	ps := int64(f.db.pageSize)
	n := 0
	for n < len(b) {
		pos := off + int64(n)
		if pos >= size {
			clear(b[n:])
			return n, io.EOF
		}
		pg := uint64(pos/ps) + 1
		img, own, err := f.image(pg)
		if err != nil {
			return n, err
		}
		in := int(pos % ps)
		c := copy(b[n:], img[in:])
		if pg == 1 && !own {
			f.overlayCounter(b[n:n+c], in)
		}
		n += c
	}
	return n, nil
}

// overlayCounter writes the served counter into the part of page 1 at
// [in, in+len(b)) held in b, at offsets 24 and 92.
func (f *file) overlayCounter(b []byte, in int) {
	if !counterTrick {
		return
	}
	var v [4]byte
	binary.BigEndian.PutUint32(v[:], f.served)
	for _, at := range [2]int{24, 92} {
		for i := range 4 {
			if j := at + i - in; j >= 0 && j < len(b) {
				b[j] = v[i]
			}
		}
	}
}

// begin starts the transaction buffer on the first write.
func (f *file) begin() error {
	if f.inTxn {
		return nil
	}
	if f.lock < vfs.LOCK_RESERVED {
		return sqlite3.IOERR_WRITE
	}
	size, err := f.committedSize()
	if err != nil {
		return err
	}
	f.inTxn, f.size, f.dirty = true, size, map[uint64]*dirtyPage{}
	return nil
}

// touch returns the writable dirty entry of page pg.
func (f *file) touch(pg uint64) (*dirtyPage, error) {
	dp := f.dirty[pg]
	if f.inBatch {
		if _, saved := f.undo[pg]; !saved {
			var cp *dirtyPage
			if dp != nil {
				cp = &dirtyPage{old: dp.old, new: append([]byte(nil), dp.new...)}
			}
			f.undo[pg] = cp
		}
	}
	if dp != nil {
		return dp, nil
	}
	ps := int64(f.db.pageSize)
	dp = &dirtyPage{new: make([]byte, ps)}
	committed, err := f.committedSize()
	if err != nil {
		return nil, err
	}
	if int64(pg) <= committed/ps {
		old, err := f.db.page(pg, f.readPoint(), true)
		if err != nil {
			return nil, err
		}
		dp.old = old
		if int64(pg) <= f.size/ps {
			copy(dp.new, old)
		}
	}
	f.dirty[pg] = dp
	return dp, nil
}

func (f *file) WriteAt(b []byte, off int64) (int, error) {
	if err := f.begin(); err != nil {
		return 0, err
	}
	if !f.inBatch {
		f.db.spilled.Add(1)
	}
	ps := int64(f.db.pageSize)
	n := 0
	for n < len(b) {
		pos := off + int64(n)
		dp, err := f.touch(uint64(pos/ps) + 1)
		if err != nil {
			return n, err
		}
		n += copy(dp.new[pos%ps:], b[n:])
	}
	if end := off + int64(n); end > f.size {
		f.size = end
	}
	if off < 28 && off+int64(n) > 24 {
		if c := binary.BigEndian.Uint32(f.dirty[1].new[24:28]); c > f.hi {
			f.hi = c
		}
	}
	return n, nil
}

func (f *file) Truncate(size int64) error {
	if err := f.begin(); err != nil {
		return err
	}
	ps := int64(f.db.pageSize)
	if size < f.size {
		for pg := range f.dirty {
			if int64(pg-1)*ps >= size {
				if f.inBatch {
					if _, saved := f.undo[pg]; !saved {
						f.undo[pg] = f.dirty[pg]
					}
				}
				delete(f.dirty, pg)
			}
		}
	}
	f.size = size
	return nil
}

func (f *file) SizeHint(size int64) error { return nil }

// Sync does nothing: nothing is durable before the commit's MTR is.
func (f *file) Sync(flags vfs.SyncFlag) error { return nil }

func (f *file) SectorSize() int { return f.db.pageSize }

func (f *file) DeviceCharacteristics() vfs.DeviceCharacteristic {
	return vfs.IOCAP_BATCH_ATOMIC | vfs.IOCAP_SAFE_APPEND | vfs.IOCAP_SEQUENTIAL |
		vfs.IOCAP_POWERSAFE_OVERWRITE | vfs.IOCAP_UNDELETABLE_WHEN_OPEN
}

// BeginAtomicWrite: the writes of the batch are buffered like all others;
// remember how to undo them if SQLite rolls the batch back.
func (f *file) BeginAtomicWrite() error {
	if err := f.begin(); err != nil {
		return err
	}
	f.inBatch, f.batchSize, f.undo = true, f.size, map[uint64]*dirtyPage{}
	return nil
}

func (f *file) CommitAtomicWrite() error {
	f.db.batches.Add(1)
	f.inBatch, f.undo = false, nil
	return nil
}

func (f *file) RollbackAtomicWrite() error {
	if f.inBatch {
		for pg, dp := range f.undo {
			if dp == nil {
				delete(f.dirty, pg)
			} else {
				f.dirty[pg] = dp
			}
		}
		f.size = f.batchSize
	}
	f.inBatch, f.undo = false, nil
	return nil
}

// CommitPhaseTwo ships the transaction's dirty pages as one MTR and waits
// until it is durable (still under EXCLUSIVE; pipelining is a later step).
func (f *file) CommitPhaseTwo() error {
	if !f.inTxn {
		return nil
	}
	defer f.discard()
	ps := f.db.pageSize
	pages := int64(f.size) / int64(ps)
	mtr := make([]volume.PageWrite, 0, len(f.dirty))
	for pg, dp := range f.dirty {
		if int64(pg) > pages {
			continue
		}
		nw := dp.new
		if pg == 1 {
			// The counter fields are served per read point, stored as zero.
			nw = append([]byte(nil), nw...)
			clear(nw[24:28])
			clear(nw[92:96])
		}
		if dp.old != nil && string(dp.old) == string(nw) {
			continue
		}
		mtr = append(mtr, volume.PageWrite{Page: pg, Old: dp.old, New: nw})
	}
	if len(mtr) == 0 {
		return nil
	}
	sort.Slice(mtr, func(i, j int) bool { return mtr[i].Page < mtr[j].Page })
	ctx := context.Background()
	before := f.db.vol.VDL()
	lsn, err := f.db.vol.Submit(ctx, mtr)
	if err == nil {
		err = f.db.vol.WaitDurable(ctx, lsn)
	}
	if err != nil {
		// The MTR may or may not become durable: forget what we cached of
		// its pages (and page 1, which holds the size).
		for _, w := range mtr {
			f.db.cache.drop(w.Page)
		}
		f.db.cache.drop(1)
		f.rpValid = false // a new counter at the next SHARED lock
		return fmt.Errorf("sqlvfs: commit: %w", err)
	}
	for _, w := range mtr {
		f.db.cache.put(w.Page, w.New)
	}
	if f.rpValid && before == f.rp {
		// Only our own commit moved the VDL since our read point: SQLite's
		// page cache holds exactly the new state, so serve the counter it
		// now has (the one it wrote into page 1, if it wrote page 1) and
		// let it keep its cache.
		f.rp = lsn
		if dp := f.dirty[1]; dp != nil {
			f.served = binary.BigEndian.Uint32(dp.new[24:28])
		}
	}
	return nil
}

// discard drops the transaction buffer.
func (f *file) discard() {
	f.inTxn, f.size, f.dirty = false, 0, nil
	f.inBatch, f.undo = false, nil
}

func (f *file) Lock(lock vfs.LockLevel) error {
	if f.lock >= lock {
		return nil
	}
	d := f.db
	d.lockMu.Lock()
	defer d.lockMu.Unlock()
	switch lock {
	case vfs.LOCK_SHARED:
		if d.pending {
			return sqlite3.BUSY
		}
		d.shared++
		// A new read point; a new counter if others committed since.
		rp := d.vol.VDL()
		if !f.rpValid || rp != f.rp {
			f.hi++
			f.served = f.hi
			f.rp, f.rpValid = rp, true
		}
	case vfs.LOCK_RESERVED:
		if d.reserved {
			return sqlite3.BUSY
		}
		d.reserved = true
	case vfs.LOCK_EXCLUSIVE:
		if f.lock == vfs.LOCK_RESERVED {
			f.lock = vfs.LOCK_PENDING
			d.pending = true
		}
		if d.shared > 1 {
			before := time.Now()
			if d.waiter == nil {
				d.waiter = sync.NewCond(&d.lockMu)
			}
			defer time.AfterFunc(time.Millisecond, d.waiter.Broadcast).Stop()
			for d.shared > 1 {
				if time.Since(before) > time.Millisecond {
					return sqlite3.BUSY
				}
				d.waiter.Wait()
			}
		}
	}
	f.lock = lock
	return nil
}

func (f *file) Unlock(lock vfs.LockLevel) error {
	if lock < vfs.LOCK_RESERVED && f.inTxn {
		// No phase two: a rollback. Storage is untouched.
		f.discard()
	}
	if f.lock <= lock {
		return nil
	}
	d := f.db
	d.lockMu.Lock()
	defer d.lockMu.Unlock()
	if f.lock >= vfs.LOCK_RESERVED {
		d.reserved = false
	}
	if f.lock >= vfs.LOCK_PENDING {
		d.pending = false
	}
	if lock < vfs.LOCK_SHARED {
		if d.shared--; d.pending && d.shared <= 1 && d.waiter != nil {
			d.waiter.Broadcast()
		}
	}
	f.lock = lock
	return nil
}

func (f *file) CheckReservedLock() (bool, error) {
	if f.lock >= vfs.LOCK_RESERVED {
		return true, nil
	}
	f.db.lockMu.Lock()
	defer f.db.lockMu.Unlock()
	return f.db.reserved, nil
}

func (f *file) LockState() vfs.LockLevel { return f.lock }
