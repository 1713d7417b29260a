package sqlvfs

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/storage"
	"github.com/borealis-db/borealis/internal/volume"
)

// cluster is six in-process storage nodes in AZs a, a, b, b, c, c.
type cluster struct {
	members []volume.Member
	nodes   []*storage.Node
	dirs    []string
}

func startCluster(t testing.TB) *cluster {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	cl := &cluster{}
	for i, az := range []string{"a", "a", "b", "b", "c", "c"} {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprintf("s%d", i)
		dir := t.TempDir()
		n, err := storage.Open(storage.Config{ID: id, AZ: az, Dir: dir, Logger: logger})
		if err != nil {
			t.Fatal(err)
		}
		go n.Serve(lis)
		t.Cleanup(func() { n.Close() })
		cl.members = append(cl.members, volume.Member{NodeID: id, AZ: az, Addr: lis.Addr().String()})
		cl.nodes = append(cl.nodes, n)
		cl.dirs = append(cl.dirs, dir)
	}
	return cl
}

// restart closes node i and opens it again on its directory and address,
// with change applied to its config.
func (cl *cluster) restart(t testing.TB, i int, change func(*storage.Config)) {
	t.Helper()
	cl.nodes[i].Close()
	m := cl.members[i]
	cfg := storage.Config{ID: m.NodeID, AZ: m.AZ, Dir: cl.dirs[i], Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	change(&cfg)
	n, err := storage.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", m.Addr)
	if err != nil {
		n.Close()
		t.Fatal(err)
	}
	go n.Serve(lis)
	t.Cleanup(func() { n.Close() })
	cl.nodes[i] = n
}

// client opens a volume client. A reopened volume passes the VDL and the
// (single) PG's tail, standing in for recovery.
func (cl *cluster) client(t testing.TB, epoch, base uint64, writeTimeout ...time.Duration) *volume.Client {
	t.Helper()
	wt := 5 * time.Second
	if len(writeTimeout) > 0 {
		wt = writeTimeout[0]
	}
	cfg := volume.Config{
		VolumeID:     1,
		Epoch:        epoch,
		PageSize:     4096,
		Placement:    func(uint32) (volume.Membership, error) { return volume.OneSet(cl.members), nil },
		WriteTimeout: wt,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if base > 0 {
		cfg.BaseLSN = base
		cfg.PGTails = map[uint32]uint64{0: base}
	}
	c, err := volume.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// open opens a database's writer pool on vol (under a fresh name, left in
// the registry) and returns it with the database.
func open(vol Volume, opts Options) (*sql.DB, *database, error) {
	db, err := newDB("vol", vol, opts)
	if err != nil {
		return nil, nil, err
	}
	if err := db.openWriter(); err != nil {
		db.Close()
		return nil, nil, err
	}
	return db.Writer, db.d, nil
}

func openDB(t *testing.T, vol Volume) (*sql.DB, *database) {
	t.Helper()
	db, d, err := open(vol, Options{CacheMiB: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, d
}

func mustExec(t *testing.T, db interface {
	Exec(string, ...any) (sql.Result, error)
}, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func integrityOK(t *testing.T, db *sql.DB) {
	t.Helper()
	var s string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&s); err != nil || s != "ok" {
		t.Fatalf("integrity_check: %q %v", s, err)
	}
}

// checkRows verifies the table holds exactly rows 1..n with their payloads.
func checkRows(t *testing.T, db *sql.DB, n int) {
	t.Helper()
	rows, err := db.Query("SELECT k, v FROM t ORDER BY k")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	i := 0
	for rows.Next() {
		var k int
		var v string
		if err := rows.Scan(&k, &v); err != nil {
			t.Fatal(err)
		}
		i++
		if k != i || v != payload(i) {
			t.Fatalf("row %d: got k=%d v=%.20q...", i, k, v)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if i != n {
		t.Fatalf("got %d rows, want %d", i, n)
	}
}

func payload(i int) string { return fmt.Sprintf("row-%06d-", i) + strings.Repeat("x", 100+i%200) }

// insertRows inserts rows from+1..from+n in one transaction.
func insertRows(t *testing.T, db *sql.DB, from, n int) {
	t.Helper()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for i := from + 1; i <= from+n; i++ {
		mustExec(t, tx, "INSERT INTO t(k, v) VALUES(?, ?)", i, payload(i))
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

func TestInsertReadBackReopen(t *testing.T) {
	cl := startCluster(t)
	vc := cl.client(t, 1, 0)
	db, d := openDB(t, vc)
	mustExec(t, db, "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
	commits := vc.Stats().Commits
	if commits != 1 {
		t.Fatalf("CREATE TABLE made %d MTRs, want 1", commits)
	}
	n, txns := 0, 0
	for _, size := range []int{1, 2, 3, 7, 10, 50, 100, 1, 300, 26, 500} {
		insertRows(t, db, n, size)
		n += size
		txns++
		if got := vc.Stats().Commits; got != commits+uint64(txns) {
			t.Fatalf("after %d transactions: %d MTRs, want %d", txns, got-commits, txns)
		}
	}
	if n != 1000 {
		t.Fatalf("inserted %d", n)
	}
	checkRows(t, db, n)
	integrityOK(t, db)
	// Transactions that fit SQLite's page cache commit as a batch-atomic
	// write: nothing reaches the file before it.
	if d.batches.Load() != uint64(txns+1) || d.spilled.Load() != 0 {
		t.Fatalf("batch-atomic commits %d (want %d), writes outside a batch %d", d.batches.Load(), txns+1, d.spilled.Load())
	}
	// Reads and a write-less transaction make no MTR.
	mustExec(t, db, "BEGIN IMMEDIATE")
	mustExec(t, db, "COMMIT")
	if got := vc.Stats().Commits; got != commits+uint64(txns) {
		t.Fatalf("read-only work made MTRs: %d", got-commits-uint64(txns))
	}
	var pages int
	if err := db.QueryRow("PRAGMA page_count").Scan(&pages); err != nil {
		t.Fatal(err)
	}
	db.Close()
	vdl := vc.VDL()
	vc.Close()

	// A new client (as after recovery) and a new *sql.DB on the same nodes:
	// the size comes from page 1, every row is there, and it can write.
	vc2 := cl.client(t, 2, vdl)
	db2, d2 := openDB(t, vc2)
	var pages2 int
	if err := db2.QueryRow("PRAGMA page_count").Scan(&pages2); err != nil {
		t.Fatal(err)
	}
	if pages2 != pages || pages < 10 {
		t.Fatalf("reopened page_count %d, want %d", pages2, pages)
	}
	checkRows(t, db2, n)
	integrityOK(t, db2)
	if d2.volumeReads.Load() < uint64(pages) {
		t.Fatalf("reopened database read %d pages from the volume, want >= %d", d2.volumeReads.Load(), pages)
	}
	insertRows(t, db2, n, 5)
	checkRows(t, db2, n+5)
	if vc2.Stats().Commits != 1 {
		t.Fatalf("reopened writer made %d MTRs, want 1", vc2.Stats().Commits)
	}
}

func TestRollbackAndFailedStatementLeaveNoTrace(t *testing.T) {
	cl := startCluster(t)
	vc := cl.client(t, 1, 0)
	db, d := openDB(t, vc)
	db.SetMaxOpenConns(1) // the small cache_size below is per connection
	mustExec(t, db, "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
	insertRows(t, db, 0, 200)
	before := vc.Stats().Commits
	vdl := vc.VDL()

	// A plain rollback.
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, tx, "INSERT INTO t(k, v) VALUES(1000, 'gone')")
	mustExec(t, tx, "DELETE FROM t WHERE k < 50")
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	// A large rollback that spills SQLite's page cache to the file (it goes
	// to the transaction buffer and is read back from it).
	mustExec(t, db, "PRAGMA cache_size=10")
	tx, err = db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for i := 1000; i < 4000; i++ {
		mustExec(t, tx, "INSERT INTO t(k, v) VALUES(?, ?)", i, payload(i))
	}
	mustExec(t, tx, "UPDATE t SET v = 'changed' WHERE k <= 200")
	var cnt int
	if err := tx.QueryRow("SELECT count(*) FROM t WHERE v = 'changed'").Scan(&cnt); err != nil || cnt != 200 {
		t.Fatalf("inside the transaction: %d %v", cnt, err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if d.spilled.Load() == 0 {
		t.Fatal("the large transaction did not spill to the file")
	}
	// A statement failing half-way (a constraint violation) inside a
	// multi-statement transaction, which is then rolled back.
	tx, err = db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, tx, "INSERT INTO t(k, v) VALUES(5000, 'x')")
	if _, err := tx.Exec("INSERT INTO t(k, v) SELECT k + 4900, v FROM t WHERE k >= 90 ORDER BY k"); err == nil ||
		!strings.Contains(err.Error(), "UNIQUE") {
		t.Fatalf("want a UNIQUE violation, got %v", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if got := vc.Stats().Commits; got != before || vc.VDL() != vdl {
		t.Fatalf("rollbacks reached storage: %d MTRs, VDL %d -> %d", got-before, vdl, vc.VDL())
	}
	checkRows(t, db, 200)
	integrityOK(t, db)

	// A failed statement in autocommit, then a transaction that commits
	// after a failed statement: only its successful statements persist.
	if _, err := db.Exec("INSERT INTO t(k, v) VALUES(1, 'dup')"); err == nil {
		t.Fatal("duplicate key accepted")
	}
	tx, err = db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, tx, "INSERT INTO t(k, v) VALUES(201, ?)", payload(201))
	if _, err := tx.Exec("INSERT INTO t(k, v) VALUES(2, 'dup')"); err == nil {
		t.Fatal("duplicate key accepted")
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := vc.Stats().Commits; got != before+1 {
		t.Fatalf("%d MTRs, want 1", got-before)
	}
	checkRows(t, db, 201)
	integrityOK(t, db)

	// What is on storage is the same: read it through a fresh client.
	db.Close()
	vdl = vc.VDL()
	vc.Close()
	db2, _ := openDB(t, cl.client(t, 2, vdl))
	checkRows(t, db2, 201)
	integrityOK(t, db2)
}

// twoConnections updates one row in place (the page count never changes)
// on one connection and reads it on another after every commit; it returns
// how many reads were stale.
// twoConnections updates a row 20 times on a writer connection and reads it
// after each commit on a second connection (a read connection, or another
// writer connection); it returns how many reads missed the commit.
func twoConnections(t *testing.T, reader bool) int {
	cl := startCluster(t)
	vc := cl.client(t, 1, 0)
	name := fmt.Sprintf("two%d", nameSeq.Add(1))
	if err := Register(name, vc, Options{}); err != nil {
		t.Fatal(err)
	}
	defer Unregister(name)
	open := func(dsn string) *sql.DB {
		db, err := sql.Open("sqlite3", dsn)
		if err != nil {
			t.Fatal(err)
		}
		db.SetMaxOpenConns(1)
		t.Cleanup(func() { db.Close() })
		return db
	}
	w, r := open(DSN(name, Options{})), open(DSN(name, Options{}))
	if reader {
		r = open(ReaderDSN(name, Options{}))
	}
	mustExec(t, w, "CREATE TABLE c(id INTEGER PRIMARY KEY, n INTEGER)")
	mustExec(t, w, "INSERT INTO c VALUES(1, 0)")
	var n int
	if err := r.QueryRow("SELECT n FROM c WHERE id = 1").Scan(&n); err != nil || n != 0 {
		t.Fatalf("first read: %d %v", n, err)
	}
	stale := 0
	for i := 1; i <= 20; i++ {
		mustExec(t, w, "UPDATE c SET n = ? WHERE id = 1", i)
		if err := r.QueryRow("SELECT n FROM c WHERE id = 1").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != i {
			stale++
		}
	}
	return stale
}

func TestSecondConnectionSeesEveryCommit(t *testing.T) {
	for _, reader := range []bool{true, false} {
		if stale := twoConnections(t, reader); stale != 0 {
			t.Fatalf("read connection %v: %d of 20 reads missed a commit", reader, stale)
		}
	}
}

// Without the page-1 counter the same test misses commits: this checks that
// the test above tests something.
func TestWithoutCounterTrickReadsAreStale(t *testing.T) {
	counterTrick = false
	defer func() { counterTrick = true }()
	if stale := twoConnections(t, true); stale == 0 {
		t.Fatal("no stale read without the counter trick: the visibility test proves nothing")
	}
}

// A transaction far larger than SQLite's page cache: SQLite writes pages to
// the file before the commit (and bumps the change counter itself); it is
// still one MTR.
func TestLargeTransactionSpills(t *testing.T) {
	cl := startCluster(t)
	vc := cl.client(t, 1, 0)
	db, d := openDB(t, vc)
	db.SetMaxOpenConns(1)
	mustExec(t, db, "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
	mustExec(t, db, "PRAGMA cache_size=10")
	before := vc.Stats().Commits
	insertRows(t, db, 0, 5000)
	if got := vc.Stats().Commits - before; got != 1 {
		t.Fatalf("%d MTRs, want 1", got)
	}
	if d.spilled.Load() == 0 {
		t.Fatal("no spill")
	}
	insertRows(t, db, 5000, 10)
	checkRows(t, db, 5010)
	integrityOK(t, db)
	db.Close()
	vdl := vc.VDL()
	vc.Close()
	db2, _ := openDB(t, cl.client(t, 2, vdl))
	checkRows(t, db2, 5010)
	integrityOK(t, db2)
}

// The writer's own commits do not change the counter it is served, so
// SQLite keeps its page cache across transactions: a small transaction then
// reads only the 16 header bytes at offset 24 from the file.
func TestWriterKeepsItsPageCache(t *testing.T) {
	cl := startCluster(t)
	vc := cl.client(t, 1, 0)
	db, d := openDB(t, vc)
	db.SetMaxOpenConns(1)
	mustExec(t, db, "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
	insertRows(t, db, 0, 500) // grows the file: SQLite writes page 1
	insertRows(t, db, 500, 1)
	start := d.readAts.Load()
	st0 := vc.Stats()
	for i := 1; i <= 50; i++ {
		mustExec(t, db, "UPDATE t SET v = ? WHERE k = ?", payload(i+1000), i*7)
	}
	// One header read per transaction; a dropped cache would re-read
	// page 1, the root and the leaves.
	if got := d.readAts.Load() - start; got > 50+5 {
		t.Fatalf("50 small transactions made %d file reads: the page cache was dropped", got)
	}
	// Each update ships a diff of its leaf page, not the page: redo per
	// transaction and segment stays far below 4096 bytes.
	st := vc.Stats()
	if st.Commits-st0.Commits != 50 {
		t.Fatalf("%d MTRs, want 50", st.Commits-st0.Commits)
	}
	perTxn := (st.RecordBytesSent - st0.RecordBytesSent) / 50 / 6
	t.Logf("redo bytes per transaction and segment: %d", perTxn)
	if perTxn > 1024 {
		t.Fatalf("%d redo bytes per transaction: diffs are not used", perTxn)
	}
}

// Concurrent writers and readers on one pool of connections: SQLite's locks
// (kept by the VFS across connections) serialize the writers, readers always
// see a consistent, growing table.
func TestConcurrentConnections(t *testing.T) {
	cl := startCluster(t)
	vc := cl.client(t, 1, 0)
	db, _ := openDB(t, vc)
	db.SetMaxOpenConns(12)
	mustExec(t, db, "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
	before := vc.Stats().Commits
	const writers, each = 8, 25
	errc := make(chan error, writers+4)
	done := make(chan struct{})
	for w := range writers {
		go func() {
			for i := range each {
				k := w*each + i + 1
				if _, err := db.Exec("INSERT INTO t(k, v) VALUES(?, ?)", k, payload(k)); err != nil {
					errc <- fmt.Errorf("insert %d: %w", k, err)
					return
				}
			}
			errc <- nil
		}()
	}
	for range 4 {
		go func() {
			last := 0
			for {
				select {
				case <-done:
					errc <- nil
					return
				default:
				}
				var n, sum int
				if err := db.QueryRow("SELECT count(*), coalesce(sum(length(v)), 0) FROM t").Scan(&n, &sum); err != nil {
					errc <- err
					return
				}
				if n < last {
					errc <- fmt.Errorf("count went back from %d to %d", last, n)
					return
				}
				last = n
			}
		}()
	}
	for range writers {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	for range 4 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if got := vc.Stats().Commits - before; got != writers*each {
		t.Fatalf("%d MTRs, want %d", got, writers*each)
	}
	checkRows(t, db, writers*each)
	integrityOK(t, db)
}

// openDBPools opens a database (writer and read pools) on vc, closed when
// the test ends.
func openDBPools(t *testing.T, vc Volume, opts Options) *DB {
	t.Helper()
	db, err := OpenDB(vc, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}
