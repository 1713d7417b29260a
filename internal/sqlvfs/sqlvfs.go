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
// goes to Submit as one MTR. An Unlock below RESERVED without phase two (a
// ROLLBACK, a failed statement's rollback, a closed connection) discards the
// buffer: storage is untouched.
//
// Connections. A connection opened read-only (mode=ro; OpenDB's Reader) is a
// read connection: each read transaction is pinned at the VDL when it takes
// SHARED and reads pages as of that LSN, so it sees every acknowledged commit
// and never one that is not durable, and it keeps answering while writes
// stall. Replicas use the same mechanism. Any other connection is a writer
// connection: only writer connections may take RESERVED, and they run one at
// a time from SHARED to the end of their write transaction, against the
// newest state (every MTR submitted, durable or not).
//
// Pipelined commits. Phase two hands the MTR to the volume client and
// returns; the Unlock that ends the write transaction lets the next writer in
// at once and only then waits until the VDL reaches the MTR's LSN. So COMMIT
// returns once the commit is durable (its error, such as a
// *volume.UnavailableError, comes back from COMMIT and unwraps from SQLite's
// error), while many transactions are in flight per quorum round trip.
// Commits are acknowledged in LSN order because the VDL only rises. A writer
// connection that only read waits, at its Unlock, for the newest state it
// read to be durable.
//
// Journal. Connections use journal_mode=MEMORY (set by DSN); the VFS
// never creates a journal or WAL file on storage. Temporary files SQLite asks
// for (sorter, statement journals, temp databases) live in memory.
//
// File size. The size of the main file is the page count that SQLite keeps
// in page 1's header (offset 28, big-endian), read from page 1 (on the
// volume) at the read point. SQLite trusts that field because the VFS serves
// equal values at offsets 24 and 92 (see below), and it maintains it on every
// commit. No local file is involved.
//
// Change counter. With batch-atomic writes SQLite does not bump the change
// counter at offset 24 of page 1, so another connection would keep a stale
// page cache. The VFS therefore serves page 1 with a counter (at offset 24,
// and the same value as version-valid-for at offset 92) that is chosen when
// the connection takes its SHARED lock: it changes whenever the connection's
// read point moved since its previous one by commits other than its own, and
// a new value is always above every value SQLite could hold (those served,
// and those it wrote itself into page 1), so SQLite drops its page cache
// exactly when another connection committed. Both fields are stored as zero
// on the volume (smaller diffs; the stored page 1 is still a valid header).
//
// Page cache. A per-volume LRU of page images (its size in MiB) serves reads
// and the Old images of diffs without reading storage. It keeps only the
// newest version of a page, tagged with its LSN: a read connection uses it
// when that version is at or below its read point and otherwise reads storage
// at its read point (see pageCache).
package sqlvfs

import (
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ncruces/go-sqlite3"
	"github.com/ncruces/go-sqlite3/driver" // also registers "sqlite3" with database/sql
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
	// PinReadPoint returns the VDL and keeps storage from collecting the
	// page versions a read at it needs until release is called.
	PinReadPoint() (lsn uint64, release func())
}

var _ Volume = (*volume.Client)(nil)

// Options configure a registered database.
type Options struct {
	// PageSize must equal the volume's page size (volume.Client has no
	// accessor for it). Default 4096.
	PageSize int
	// CacheMiB sizes the page cache of recent page images. Default 64.
	CacheMiB int
	// BusyTimeout is the busy_timeout DSN and ReaderDSN set. Default 10s.
	BusyTimeout time.Duration
	// OnConnect, if set, runs on every new connection of OpenDB's pools,
	// after the DSN's pragmas (reader tells which pool); a server that runs
	// other people's SQL sets its authorizer there.
	OnConnect func(c *sqlite3.Conn, reader bool) error
	// OnClose, if set, runs as each connection of OpenDB's pools closes,
	// before SQLite checks that none of its statements is left open: a user
	// that keeps statements prepared on a connection closes them there.
	OnClose func(c *sqlite3.Conn)
	// MaxReadAge bounds how long a read transaction may stay pinned at its
	// read point: past it, its page reads fail with ErrSnapshotTooOld (and a
	// replica stops holding storage's GC back for it). 0: no bound.
	MaxReadAge time.Duration
}

// openPool opens a database/sql pool on dsn, with opts.OnConnect on every
// connection.
func openPool(dsn string, opts Options, reader bool) (*sql.DB, error) {
	return driver.Open(dsn+"&"+setupParam+"="+setupToken, func(c *sqlite3.Conn) error {
		if !reader {
			if err := checkConn(c, opts); err != nil {
				return err
			}
		}
		if opts.OnConnect != nil {
			if err := opts.OnConnect(c, reader); err != nil {
				return err
			}
		}
		f, err := fileOf(c)
		if err != nil {
			return err
		}
		f.opened = true
		// Setup read the newest state without waiting, and SQLite keeps
		// what it read (the schema): a new counter at the next SHARED makes
		// it read again, under a transaction that waits.
		f.rpValid = false
		return nil
	}, func(c *sqlite3.Conn) error {
		if opts.OnClose != nil {
			opts.OnClose(c)
		}
		return nil
	})
}

// setupParam marks the connections of openPool, whose setup does not wait
// (see file.opened).
const setupParam = "borealis_setup"

// setupToken is setupParam's value, drawn once per process, so that no DSN
// written by hand can turn a connection's durability wait off.
var setupToken = strconv.FormatUint(rand.Uint64(), 36)

// fileOf returns the VFS file of c's main database.
func fileOf(c *sqlite3.Conn) (*file, error) {
	h, err := c.FileControl("main", sqlite3.FCNTL_FILE_POINTER)
	if err != nil {
		return nil, err
	}
	if u, ok := h.(interface{ Unwrap() vfs.File }); ok {
		h = u.Unwrap()
	}
	f, ok := h.(*file)
	if !ok {
		return nil, fmt.Errorf("sqlvfs: the connection's database is not on a Borealis volume")
	}
	return f, nil
}

// checkConn verifies the pragmas the VFS depends on, on each new writer
// connection, before OnConnect's authorizer could refuse reading them.
func checkConn(c *sqlite3.Conn, opts Options) error {
	read := func(pragma string) (string, error) {
		st, _, err := c.Prepare("PRAGMA " + pragma)
		if err != nil {
			return "", err
		}
		defer st.Close()
		if !st.Step() {
			return "", st.Err()
		}
		return st.ColumnText(0), nil
	}
	ps, err := read("page_size")
	if err != nil {
		return err
	}
	jm, err := read("journal_mode")
	if err != nil {
		return err
	}
	if ps != strconv.Itoa(opts.PageSize) || jm != "memory" {
		return fmt.Errorf("sqlvfs: database has page_size %s, journal_mode %s; want %d, memory", ps, jm, opts.PageSize)
	}
	return nil
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
	// registry indexes the open databases by name, for the VFS's Open: a
	// DB owns its database, and its Close removes it.
	registry = map[string]*database{}
	nameSeq  atomic.Uint64
)

// newDatabase makes the database of vol, named name (not yet indexed).
func newDatabase(name string, vol Volume, opts Options) (*database, error) {
	opts = opts.withDefaults()
	if opts.PageSize < 512 || opts.PageSize > 65536 || opts.PageSize&(opts.PageSize-1) != 0 {
		return nil, fmt.Errorf("sqlvfs: page size %d is not a SQLite page size", opts.PageSize)
	}
	d := &database{
		name:     name,
		pageSize: opts.PageSize,
		writer:   make(chan struct{}, 1),
		busy:     opts.BusyTimeout,
		maxAge:   opts.MaxReadAge,
	}
	d.setVolume(vol)
	d.cache = newPageCache(opts.CacheMiB<<20/opts.PageSize, func() uint64 { return d.volume().VDL() })
	return d, nil
}

// index makes d available to SQLite under its name; it fails if the name
// is taken.
func index(d *database) error {
	registerOnce.Do(func() { vfs.Register(VFSName, borealisVFS{}) })
	regMu.Lock()
	defer regMu.Unlock()
	if _, ok := registry[d.name]; ok {
		return fmt.Errorf("sqlvfs: database %q already registered", d.name)
	}
	registry[d.name] = d
	return nil
}

// unindex removes d from the registry (and not another database that took
// its name since).
func unindex(d *database) {
	regMu.Lock()
	if registry[d.name] == d {
		delete(registry, d.name)
	}
	regMu.Unlock()
}

// Register makes vol available to SQLite as the main database file name
// (open it with "file:NAME?vfs=borealis"). It fails if name is taken.
// OpenDB and OpenReplicaDB register their database themselves, under a
// fresh name.
func Register(name string, vol Volume, opts Options) error {
	d, err := newDatabase(name, vol, opts)
	if err != nil {
		return err
	}
	return index(d)
}

// Unregister forgets name; connections already open keep working.
func Unregister(name string) {
	regMu.Lock()
	delete(registry, name)
	regMu.Unlock()
}

// DSN returns the database/sql data source name of a registered database's
// writer connections, with the pragmas the VFS requires. Transactions begin
// IMMEDIATE: a writer transaction takes the writer turn at BEGIN.
func DSN(name string, opts Options) string {
	return dsn(name, opts, false)
}

// ReaderDSN is DSN for read connections: read-only, each read transaction
// pinned at the VDL when it starts.
func ReaderDSN(name string, opts Options) string {
	return dsn(name, opts, true)
}

func dsn(name string, opts Options, reader bool) string {
	opts = opts.withDefaults()
	q := url.Values{}
	q.Set("vfs", VFSName)
	if reader {
		q.Set("mode", "ro")
	} else {
		q.Set("_txlock", "immediate")
	}
	// busy_timeout first: the others may wait for another connection's lock.
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", opts.BusyTimeout.Milliseconds()))
	q.Add("_pragma", fmt.Sprintf("page_size(%d)", opts.PageSize))
	q.Add("_pragma", "journal_mode(memory)")
	if reader {
		// mode=ro keeps the volume's file unwritten, but not SQLite's
		// per-connection temp database: a TEMP table made by one query would
		// outlive it in the pool and show up in another client's query.
		q.Add("_pragma", "query_only(1)")
	}
	return "file:" + url.PathEscape(name) + "?" + q.Encode()
}

// DB is a SQL database on a volume: Writer runs statements that write (one
// writer transaction at a time, commits pipelined), Reader runs read-only
// queries at the VDL. The DB owns its database (page cache, writer turn,
// counters, volume client binding); the registry only indexes it by name
// for SQLite's VFS, and Close removes it.
type DB struct {
	Writer *sql.DB
	Reader *sql.DB
	d      *database
	// opts, with defaults, open the pools (Promote opens Writer later).
	opts Options
}

// Stats are a database's counters since it was opened.
type Stats struct {
	// Commits is the number of MTRs submitted.
	Commits uint64
	// FullPageBytes is what shipping the whole dirty pages of those MTRs
	// would have taken.
	FullPageBytes uint64
	// VolumeReads counts page reads that missed the page cache;
	// CacheHits, those it served.
	VolumeReads, CacheHits uint64
}

// newDB makes the database of vol under a fresh name (prefix and a
// number) and indexes it; it has no pools yet.
func newDB(prefix string, vol Volume, opts Options) (*DB, error) {
	opts = opts.withDefaults()
	d, err := newDatabase(fmt.Sprintf("%s%d", prefix, nameSeq.Add(1)), vol, opts)
	if err != nil {
		return nil, err
	}
	if err := index(d); err != nil {
		return nil, err
	}
	return &DB{d: d, opts: opts}, nil
}

// openWriter opens the Writer pool. Its first connection runs checkConn.
func (db *DB) openWriter() error {
	w, err := openPool(DSN(db.d.name, db.opts), db.opts, false)
	if err != nil {
		return err
	}
	if err := w.Ping(); err != nil {
		w.Close()
		return err
	}
	db.Writer = w
	return nil
}

// openReader opens the Reader pool.
func (db *DB) openReader() error {
	r, err := openPool(ReaderDSN(db.d.name, db.opts), db.opts, true)
	if err != nil {
		return err
	}
	if err := r.Ping(); err != nil {
		r.Close()
		return err
	}
	db.Reader = r
	return nil
}

// OpenDB registers vol under a fresh name and opens writer and read
// connections on it.
func OpenDB(vol Volume, opts Options) (*DB, error) {
	db, err := newDB("vol", vol, opts)
	if err != nil {
		return nil, err
	}
	if err := db.openWriter(); err != nil {
		db.Close()
		return nil, err
	}
	if err := db.openReader(); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// Name is the name the database is registered under.
func (db *DB) Name() string { return db.d.name }

// BusyTimeout is how long a connection waits for the writer turn.
func (db *DB) BusyTimeout() time.Duration { return db.opts.BusyTimeout }

// PageSize is the database's page size: the volume's.
func (db *DB) PageSize() int { return db.d.pageSize }

// Stats returns the database's counters.
func (db *DB) Stats() Stats {
	return Stats{
		Commits:       db.d.commits.Load(),
		FullPageBytes: db.d.fullPageBytes.Load(),
		VolumeReads:   db.d.volumeReads.Load(),
		CacheHits:     db.d.cacheHits.Load(),
	}
}

// Close closes both pools and removes the database from the registry.
func (db *DB) Close() error {
	var err error
	if db.Reader != nil {
		err = db.Reader.Close()
	}
	if db.Writer != nil {
		if werr := db.Writer.Close(); err == nil {
			err = werr
		}
	}
	unindex(db.d)
	return err
}

// database is one volume's SQLite database, shared by all its connections:
// its page cache, its writer turn and its counters. It belongs to a DB (or
// to a name given to Register).
type database struct {
	name string
	// vol is the volume client; Promote replaces it.
	vol      atomic.Pointer[volRef]
	pageSize int
	cache    *pageCache
	maxAge   time.Duration
	// writer is held by the one writer connection in a transaction.
	writer chan struct{}
	busy   time.Duration

	// Counters for tests and metrics.
	batches       atomic.Uint64 // transactions committed by batch-atomic write
	spilled       atomic.Uint64 // page writes outside a batch (cache spills, big transactions)
	volumeReads   atomic.Uint64 // page reads that missed the cache
	cacheHits     atomic.Uint64 // page reads the cache served
	readAts       atomic.Uint64 // ReadAt calls on the main file
	commits       atomic.Uint64 // MTRs submitted
	fullPageBytes atomic.Uint64 // page size times the pages of those MTRs

	lockMu   sync.Mutex
	reserved bool

	// cacheGen rises when a deferred commit failed to become durable: each
	// writer connection then reads its pages again (see DB.WaitDurable), as
	// a connection whose own wait failed does.
	cacheGen atomic.Uint64
}

// volRef holds a Volume for atomic.Pointer.
type volRef struct{ Volume }

// volume is the database's volume client now.
func (d *database) volume() Volume { return d.vol.Load().Volume }

func (d *database) setVolume(vol Volume) { d.vol.Store(&volRef{vol}) }

// acquireWriter waits up to the busy timeout for the writer turn.
func (d *database) acquireWriter() error {
	select {
	case d.writer <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(d.busy)
	defer t.Stop()
	select {
	case d.writer <- struct{}{}:
		return nil
	case <-t.C:
		return sqlite3.BUSY
	}
}

func (d *database) tryWriter() bool {
	select {
	case d.writer <- struct{}{}:
		return true
	default:
		return false
	}
}

func (d *database) releaseWriter() { <-d.writer }

// pageAt returns page pg as of read point rp (the slice must not be
// modified).
func (d *database) pageAt(pg, rp uint64) ([]byte, error) {
	if b, ok := d.cache.at(pg, rp); ok {
		d.cacheHits.Add(1)
		return b, nil
	}
	b, err := d.read(pg, rp)
	if err != nil {
		return nil, err
	}
	d.cache.readAt(pg, b, rp)
	return b, nil
}

// pageNewest returns the newest version of page pg, committed or not. A
// version above the VDL is always cached, so a page not in the cache is
// served by storage at the VDL.
func (d *database) pageNewest(pg uint64) ([]byte, uint64, error) {
	if b, lsn, ok := d.cache.newest(pg); ok {
		d.cacheHits.Add(1)
		return b, lsn, nil
	}
	rp := d.volume().VDL()
	b, err := d.read(pg, rp)
	if err != nil {
		return nil, 0, err
	}
	d.cache.readNewest(pg, b, rp)
	return b, rp, nil
}

func (d *database) read(pg, rp uint64) ([]byte, error) {
	d.volumeReads.Add(1)
	b, err := d.volume().ReadPage(context.Background(), pg, rp)
	if err != nil {
		return nil, fmt.Errorf("sqlvfs: read page %d at LSN %d: %w", pg, rp, err)
	}
	if len(b) != d.pageSize {
		return nil, fmt.Errorf("sqlvfs: page %d is %d bytes, want %d", pg, len(b), d.pageSize)
	}
	return b, nil
}

type borealisVFS struct{}

func (v borealisVFS) Open(name string, flags vfs.OpenFlag) (vfs.File, vfs.OpenFlag, error) {
	return v.open(name, "", false, flags)
}

// OpenFilename opens name; a URI with a control parameter
// ("file:main?vfs=borealis&control=HOST:PORT") names a volume of a cluster,
// which the opener set with SetOpener starts serving in this process.
func (v borealisVFS) OpenFilename(name *vfs.Filename, flags vfs.OpenFlag) (vfs.File, vfs.OpenFlag, error) {
	if name == nil {
		return v.open("", "", false, flags)
	}
	return v.open(name.String(), name.URIParameter("control"), name.URIParameter(setupParam) == setupToken, flags)
}

func (borealisVFS) open(name, control string, setup bool, flags vfs.OpenFlag) (vfs.File, vfs.OpenFlag, error) {
	const temps = vfs.OPEN_TEMP_JOURNAL | vfs.OPEN_SUBJOURNAL | vfs.OPEN_TEMP_DB | vfs.OPEN_TRANSIENT_DB
	if flags&temps != 0 || name == "" {
		return &vfsutil.SliceFile{}, flags | vfs.OPEN_MEMORY, nil
	}
	if flags&vfs.OPEN_MAIN_DB == 0 {
		// A main journal, WAL or super-journal: journal_mode must be MEMORY.
		return nil, flags, sqlite3.CANTOPEN
	}
	if control != "" {
		reg, err := openByControl(control, name)
		if err != nil {
			return nil, flags, vfs.SystemError(err, sqlite3.CANTOPEN)
		}
		name = reg
	}
	regMu.Lock()
	d := registry[name]
	regMu.Unlock()
	if d == nil {
		return nil, flags, sqlite3.CANTOPEN
	}
	return &file{db: d, reader: flags&vfs.OPEN_READONLY != 0, opened: !setup}, flags, nil
}

// Opener starts serving volume, of the cluster whose control plane is at
// control, in this process and returns the name it registered it under.
type Opener func(control, volume string) (registered string, err error)

var (
	openerMu  sync.Mutex
	opener    Opener
	byControl = map[string]string{}
)

// SetOpener sets what opens a volume named by a control plane address.
func SetOpener(o Opener) {
	registerOnce.Do(func() { vfs.Register(VFSName, borealisVFS{}) })
	openerMu.Lock()
	opener = o
	openerMu.Unlock()
}

func openByControl(control, volume string) (string, error) {
	openerMu.Lock()
	defer openerMu.Unlock()
	key := control + "/" + volume
	if reg, ok := byControl[key]; ok {
		return reg, nil
	}
	if opener == nil {
		return "", fmt.Errorf("sqlvfs: %s names a control plane, but nothing in this program opens volumes by control plane (import github.com/borealis-db/borealis)", key)
	}
	reg, err := opener(control, volume)
	if err != nil {
		return "", err
	}
	byControl[key] = reg
	return reg, nil
}

// ForgetControl drops the registration made by the opener for a volume.
func ForgetControl(control, volume string) {
	openerMu.Lock()
	delete(byControl, control+"/"+volume)
	openerMu.Unlock()
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
	// reader: a read connection, pinned at the VDL; it never writes.
	reader bool
	// holdsWriter: this writer connection has the writer turn.
	holdsWriter bool
	// opened: what the connection reads may reach a caller, so a writer
	// connection waits for the newest state it read to be durable. A
	// connection of OpenDB's pools is not opened during its setup (its DSN
	// pragmas, checkConn, OnConnect): setup hands nothing it reads to a
	// caller, and waiting there made a write that needed a new connection
	// wait out the write timeout twice. Every other connection (a
	// database/sql pool on DSN, as borealis.DSN users open) is opened from
	// the start.
	opened bool
	unpin  func()
	// pinnedAt is when a read connection's transaction pinned its read
	// point.
	pinnedAt time.Time
	// commitLSN is the MTR this transaction submitted, waited for at Unlock.
	commitLSN uint64
	// deferred: Unlock does not wait, it raises undurable to what it would
	// have waited for (see DeferDurability).
	deferred  bool
	undurable uint64
	// cacheGen is the database's cacheGen when this writer connection last
	// took SHARED.
	cacheGen uint64
	// failure is the last error the volume gave this connection. SQLite
	// reports it only as an I/O error code; ConnError recovers it.
	failMu  sync.Mutex
	failure error

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

func (f *file) fail(err error) error {
	f.failMu.Lock()
	f.failure = err
	f.failMu.Unlock()
	return err
}

// ConnError returns, and forgets, the last error the volume gave conn's
// main database file (a commit not acknowledged in time, a fenced writer, a
// failed page read). SQLite reports such failures as "disk I/O error"; call
// this after one to learn what happened, e.g. with errors.As for a
// *volume.UnavailableError.
func ConnError(ctx context.Context, conn *sql.Conn) error {
	var out error
	err := conn.Raw(func(dc any) error {
		c, err := rawOf(dc)
		if err != nil {
			return err
		}
		f, err := fileOf(c)
		if err != nil {
			return err
		}
		f.failMu.Lock()
		out, f.failure = f.failure, nil
		f.failMu.Unlock()
		return nil
	})
	if err != nil {
		return err
	}
	return out
}

// page returns page pg as this connection sees it outside its own writes:
// the newest state for the writer in its turn, else the state at its read
// point (the VDL when it holds no lock: SQLite's header read at open).
func (f *file) page(pg uint64) ([]byte, error) {
	var b []byte
	var err error
	if f.holdsWriter {
		var lsn uint64
		b, lsn, err = f.db.pageNewest(pg)
		vol := f.db.volume()
		if err == nil && f.opened && !f.deferred && f.lock < vfs.LOCK_RESERVED && lsn > vol.VDL() {
			// A writer connection outside a write transaction hands what
			// it reads to the caller before the transaction ends: it may
			// not see what is not durable yet. (A write transaction may:
			// its COMMIT waits for everything it read. So may a deferred
			// connection: its caller waits for its read point, the newest
			// state, before handing anything on.)
			if err = vol.WaitDurable(context.Background(), lsn); err != nil {
				err = &UnacknowledgedError{LSN: lsn, Err: err}
			}
		}
	} else {
		rp := f.rp
		if f.lock < vfs.LOCK_SHARED || !f.rpValid {
			rp = f.db.volume().VDL()
		} else if f.reader && f.db.maxAge > 0 && time.Since(f.pinnedAt) > f.db.maxAge {
			return nil, f.fail(fmt.Errorf("%w (pinned at LSN %d for %s, above %s)", ErrSnapshotTooOld, rp, time.Since(f.pinnedAt).Round(time.Millisecond), f.db.maxAge))
		}
		b, err = f.db.pageAt(pg, rp)
	}
	if err != nil {
		return nil, f.fail(err)
	}
	return b, nil
}

// committedSize is the file size before this transaction: page 1's count.
func (f *file) committedSize() (int64, error) {
	p1, err := f.page(1)
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
	img, err := f.page(pg)
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
		old, err := f.page(pg)
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

// CommitPhaseTwo hands the transaction's dirty pages to the volume as one
// MTR and returns without waiting: the Unlock that follows waits for it to
// be durable after letting the next writer in.
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
			if ps16 := int(binary.BigEndian.Uint16(nw[16:18])); ps16 != ps && !(ps16 == 1 && ps == 65536) {
				// SQLite pages of another size would not line up with the
				// volume's pages, and the database could not be opened
				// again with the volume's page size.
				return f.fail(fmt.Errorf("sqlvfs: SQLite page size %d differs from the volume's %d-byte pages; open with PRAGMA page_size=%d", ps16, ps, ps))
			}
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
	lsn, err := f.db.volume().Submit(context.Background(), mtr)
	if err != nil {
		// Nothing was allocated: the cached images are still the newest.
		return f.fail(fmt.Errorf("sqlvfs: commit: %w", err))
	}
	images := make(map[uint64][]byte, len(mtr))
	for _, w := range mtr {
		images[w.Page] = w.New
	}
	f.db.cache.committed(lsn, images)
	f.db.commits.Add(1)
	f.db.fullPageBytes.Add(uint64(len(mtr) * ps))
	f.commitLSN = lsn
	// SQLite's page cache holds exactly the new state (this connection had
	// the writer turn since its read point): serve the counter it now has,
	// the one it wrote into page 1 if it wrote page 1, and let it keep its
	// cache.
	f.rp = lsn
	if dp := f.dirty[1]; dp != nil {
		f.served = binary.BigEndian.Uint32(dp.new[24:28])
	}
	return nil
}

// discard drops the transaction buffer.
func (f *file) discard() {
	f.inTxn, f.size, f.dirty = false, 0, nil
	f.inBatch, f.undo = false, nil
}

// setReadPoint moves the connection to read point rp, with a new page-1
// counter if rp is not the one SQLite's cache reflects.
func (f *file) setReadPoint(rp uint64) {
	if !f.rpValid || rp != f.rp {
		f.hi++
		f.served = f.hi
		f.rp, f.rpValid = rp, true
	}
}

func (f *file) Lock(lock vfs.LockLevel) error {
	if f.lock >= lock {
		return nil
	}
	d := f.db
	if f.lock < vfs.LOCK_SHARED {
		// A new transaction: an error of an earlier one is not its cause.
		f.failMu.Lock()
		f.failure = nil
		f.failMu.Unlock()
		if f.reader {
			rp, release := d.volume().PinReadPoint()
			f.unpin = release
			f.pinnedAt = time.Now()
			f.setReadPoint(rp)
		} else {
			if err := d.acquireWriter(); err != nil {
				return err
			}
			f.holdsWriter = true
			if g := d.cacheGen.Load(); g != f.cacheGen {
				f.cacheGen, f.rpValid = g, false
			}
			f.setReadPoint(d.cache.lastSubmitted())
		}
		f.lock = vfs.LOCK_SHARED
	}
	if lock >= vfs.LOCK_RESERVED && f.lock < vfs.LOCK_RESERVED {
		if f.reader {
			return sqlite3.READONLY
		}
		if !f.holdsWriter {
			// SHARED outlived this connection's previous write transaction;
			// it may write again only if nobody committed since.
			if !d.tryWriter() {
				return sqlite3.BUSY
			}
			if f.rp != d.cache.lastSubmitted() {
				d.releaseWriter()
				return sqlite3.BUSY
			}
			f.holdsWriter = true
		}
		d.lockMu.Lock()
		d.reserved = true
		d.lockMu.Unlock()
	}
	// EXCLUSIVE needs nothing more: readers read pinned read points, never
	// the pages being written.
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
	if f.lock >= vfs.LOCK_RESERVED {
		d.lockMu.Lock()
		d.reserved = false
		d.lockMu.Unlock()
	}
	var wait uint64
	if f.holdsWriter && (f.lock >= vfs.LOCK_RESERVED || lock < vfs.LOCK_SHARED) {
		// The transaction is over: the next writer may start while this
		// one's commit, and the newest state it read, become durable.
		d.releaseWriter()
		f.holdsWriter = false
		wait = f.commitLSN
		if f.opened {
			wait = max(wait, f.rp)
		}
		f.commitLSN = 0
	}
	if lock < vfs.LOCK_SHARED && f.unpin != nil {
		f.unpin()
		f.unpin = nil
	}
	f.lock = lock
	if vol := d.volume(); wait > vol.VDL() {
		if f.deferred {
			f.undurable = max(f.undurable, wait)
			return nil
		}
		if err := vol.WaitDurable(context.Background(), wait); err != nil {
			// SQLite may keep what it read in its page cache: a new
			// counter at the next SHARED makes it read again.
			f.rpValid = false
			return f.fail(&UnacknowledgedError{LSN: wait, Err: err})
		}
	}
	return nil
}

// UnacknowledgedError is a commit (or a read of the newest state) whose
// LSN did not become durable in time. The outcome is unknown: the MTR stays
// with the volume client and becomes durable if storage recovers before
// the writer stops.
type UnacknowledgedError struct {
	LSN uint64
	Err error
}

func (e *UnacknowledgedError) Error() string {
	return fmt.Sprintf("sqlvfs: LSN %d not acknowledged: %v", e.LSN, e.Err)
}

func (e *UnacknowledgedError) Unwrap() error { return e.Err }

func (f *file) CheckReservedLock() (bool, error) {
	if f.lock >= vfs.LOCK_RESERVED {
		return true, nil
	}
	f.db.lockMu.Lock()
	defer f.db.lockMu.Unlock()
	return f.db.reserved, nil
}

func (f *file) LockState() vfs.LockLevel { return f.lock }
