package sqlvfs

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/redo"
	"github.com/borealis-db/borealis/internal/volume"
	"github.com/borealis-db/borealis/internal/wait"
)

// redoFeed is the writer's redo stream in miniature: a RedoObserver on the
// writer's volume client whose applier hands every MTR at or below the
// writer's VDL, in order, to a replica (records' tails to its read-only
// client, the MTR to its DB.Apply), then exposes the VDL with SetVDL, as
// internal/instance does with what the Follower decides.
type redoFeed struct {
	t     testing.TB
	wake  chan struct{}
	mu    sync.Mutex
	mtrs  []fedMTR // submitted, not applied yet
	vdl   uint64
	w     *volume.Client
	ro    *volume.Client
	rdb   *DB
	stats struct {
		applied, resyncs, batches atomic.Int64
	}
	// resyncEvery: every so many batches, the replica misses the batch's
	// MTRs and resyncs at the VDL instead (0: never).
	resyncEvery int
	err         error
}

type fedMTR struct {
	first, last uint64
	records     [][]byte
}

func (f *redoFeed) Submitted(first, last uint64, records [][]byte) {
	f.mu.Lock()
	f.mtrs = append(f.mtrs, fedMTR{first, last, records})
	f.mu.Unlock()
}

func (f *redoFeed) Durable(vdl uint64, at time.Time) {
	f.mu.Lock()
	f.vdl = max(f.vdl, vdl)
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// run applies batches until ctx ends.
func (f *redoFeed) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.wake:
		}
		f.mu.Lock()
		vdl := f.vdl
		k := 0
		for k < len(f.mtrs) && f.mtrs[k].last <= vdl {
			k++
		}
		batch := f.mtrs[:k:k]
		f.mtrs = f.mtrs[k:]
		f.mu.Unlock()
		if len(batch) == 0 {
			continue
		}
		batches := f.stats.batches.Add(1)
		resync := f.resyncEvery > 0 && batches%int64(f.resyncEvery) == 0
		if resync {
			// The replica missed these MTRs: it drops its cache and stands
			// at the VDL, with the tails the writer's start would send.
			f.ro.NotePGStates(f.w.PGStates(vdl))
			f.rdb.Resync(vdl)
			f.stats.resyncs.Add(1)
		} else {
			for _, m := range batch {
				recs := make([]redo.Record, 0, len(m.records))
				for _, b := range m.records {
					rec, err := redo.Decode(b)
					if err != nil {
						f.fail(fmt.Errorf("MTR %d..%d: %w", m.first, m.last, err))
						return
					}
					f.ro.NoteRedo(rec.PG, rec.LSN)
					recs = append(recs, rec)
				}
				if err := f.rdb.Apply(m.last, recs); err != nil {
					f.fail(fmt.Errorf("apply MTR %d..%d: %w", m.first, m.last, err))
					return
				}
				f.stats.applied.Add(1)
			}
			f.ro.NotePGStates(f.w.PGStates(vdl))
		}
		f.ro.SetVDL(vdl)
	}
}

func (f *redoFeed) fail(err error) {
	f.mu.Lock()
	if f.err == nil {
		f.err = err
	}
	f.mu.Unlock()
}

// replicaPair is a writer database and a replica database on one volume.
type replicaPair struct {
	cl     *cluster
	w, ro  *volume.Client
	writer *DB
	rdb    *DB
	feed   *redoFeed
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startReplica starts storage, a writer database and a replica fed by the
// writer's redo; the replica's read floor is reported to the writer, as its
// stream's Reports do. mod changes the feed before it starts.
func startReplica(t *testing.T, ropts Options, mod func(*redoFeed)) *replicaPair {
	t.Helper()
	cl := startCluster(t)
	p := &replicaPair{cl: cl, feed: &redoFeed{t: t, wake: make(chan struct{}, 1)}}
	open := func(readOnly bool) *volume.Client {
		cfg := volume.Config{
			VolumeID: 1, Epoch: 1, PageSize: 4096,
			Placement:    func(uint32) (volume.Membership, error) { return volume.OneSet(cl.members), nil },
			WriteTimeout: 5 * time.Second, Logger: quietLogger(), ReadOnly: readOnly,
		}
		if !readOnly {
			cfg.Redo = p.feed
		}
		c, err := volume.Open(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	p.w, p.ro = open(false), open(true)
	p.ro.SetStreamEpoch(1)
	p.writer = openDBPools(t, p.w, Options{CacheMiB: 8})
	rdb, err := OpenReplicaDB(p.ro, ropts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	if rdb.Writer != nil {
		t.Fatal("a replica database has a writer pool")
	}
	p.rdb = rdb
	p.feed.w, p.feed.ro, p.feed.rdb = p.w, p.ro, rdb
	if mod != nil {
		mod(p.feed)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var done sync.WaitGroup
	done.Go(func() { p.feed.run(ctx) })
	done.Go(func() {
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			p.w.SetReadFloor(p.ro.ReadFloor(time.Now(), ropts.MaxReadAge), false)
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
		}
	})
	t.Cleanup(func() {
		cancel()
		done.Wait()
		if p.feed.err != nil {
			t.Errorf("replica feed: %v", p.feed.err)
		}
	})
	return p
}

// caughtUp waits until the replica exposes the writer's VDL.
func (p *replicaPair) caughtUp(t *testing.T) {
	t.Helper()
	vdl := p.w.VDL()
	wait.For(t, 20*time.Second, fmt.Sprintf("the replica to apply VDL %d", vdl), func() bool { return p.ro.VDL() >= vdl })
}

// tableDump is every row of a query, as one string.
func tableDump(t *testing.T, q interface {
	Query(string, ...any) (*sql.Rows, error)
}, query string) string {
	t.Helper()
	rows, err := q.Query(query)
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintln(&b, vals...)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return b.String()
}

const accounts, startBalance = 300, 100

// bank makes the accounts (a few hundred bytes each, over many pages), the
// transfer counter and the transfer history.
func bank(t *testing.T, db *sql.DB) {
	t.Helper()
	mustExec(t, db, "CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER NOT NULL, pad TEXT NOT NULL)")
	mustExec(t, db, "CREATE TABLE counter(k INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
	mustExec(t, db, "CREATE TABLE history(seq INTEGER PRIMARY KEY, a INTEGER, b INTEGER, x INTEGER, note TEXT)")
	mustExec(t, db, "INSERT INTO counter VALUES(1, 0)")
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for id := 1; id <= accounts; id++ {
		mustExec(t, tx, "INSERT INTO acct VALUES(?, ?, ?)", id, startBalance, strings.Repeat("p", 200+id%150))
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// transfer moves x from a to b, counts it and logs it, in one transaction.
func transfer(db *sql.DB, rng *rand.Rand) error {
	tx, err := db.Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	a, b, x := 1+rng.IntN(accounts), 1+rng.IntN(accounts), 1+rng.IntN(50)
	var n int
	if err := tx.QueryRow("UPDATE counter SET n = n + 1 WHERE k = 1 RETURNING n").Scan(&n); err != nil {
		return err
	}
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{"UPDATE acct SET bal = bal - ? WHERE id = ?", []any{x, a}},
		{"UPDATE acct SET bal = bal + ? WHERE id = ?", []any{x, b}},
		{"INSERT INTO history(seq, a, b, x, note) VALUES(?, ?, ?, ?, ?)", []any{n, a, b, x, strings.Repeat("h", rng.IntN(300))}},
	} {
		if _, err := tx.Exec(q.sql, q.args...); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// snapshot is what one read transaction sees of the bank.
type snapshot struct {
	sum, count, n, hist, histSum int
}

func readBank(ctx context.Context, db *sql.DB) (snapshot, error) {
	var s snapshot
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return s, err
	}
	defer tx.Rollback()
	if err := tx.QueryRow("SELECT coalesce(sum(bal), 0), count(*) FROM acct").Scan(&s.sum, &s.count); err != nil {
		return s, err
	}
	if err := tx.QueryRow("SELECT n FROM counter WHERE k = 1").Scan(&s.n); err != nil {
		return s, err
	}
	if err := tx.QueryRow("SELECT count(*), coalesce(sum(x), 0) FROM history").Scan(&s.hist, &s.histSum); err != nil {
		return s, err
	}
	return s, tx.Commit()
}

// check is the bank's invariant in one snapshot: money is conserved, and
// the counter, the history and the accounts are of the same transfers.
func (s snapshot) check() error {
	if s.sum != accounts*startBalance || s.count != accounts || s.hist != s.n {
		return fmt.Errorf("a read transaction saw sum %d over %d accounts, counter %d, %d transfers in the history: not one state", s.sum, s.count, s.n, s.hist)
	}
	return nil
}

// bankRace runs transfers on the writer and read transactions on the
// replica at once; every replica snapshot must hold the invariant and its
// counter never go back, per connection.
func bankRace(t *testing.T, p *replicaPair, writers, each, readers int) {
	t.Helper()
	bank(t, p.writer.Writer)
	p.caughtUp(t)
	p.rdb.Reader.SetMaxOpenConns(readers)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, writers+readers)
	for g := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for range each {
				if err := transfer(p.writer.Writer, rng); err != nil {
					errc <- fmt.Errorf("transfer: %w", err)
					return
				}
			}
		})
	}
	var stop atomic.Bool
	var reads atomic.Int64
	var rg sync.WaitGroup
	for range readers {
		rg.Go(func() {
			conn, err := p.rdb.Reader.Conn(ctx)
			if err != nil {
				errc <- err
				return
			}
			defer conn.Close()
			last := -1
			for !stop.Load() {
				s, err := readConn(ctx, conn)
				if err != nil {
					errc <- fmt.Errorf("replica read: %w (cause %v)", err, ConnError(ctx, conn))
					return
				}
				if err := s.check(); err != nil {
					errc <- err
					return
				}
				if s.n < last {
					errc <- fmt.Errorf("a replica connection saw %d transfers after %d", s.n, last)
					return
				}
				last = s.n
				reads.Add(1)
			}
		})
	}
	wg.Wait()
	p.caughtUp(t)
	stop.Store(true)
	rg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	s, err := readBank(ctx, p.rdb.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.check(); err != nil || s.n != writers*each {
		t.Fatalf("after the writers: %+v, %v; want %d transfers", s, err, writers*each)
	}
	for _, q := range []string{"SELECT id, bal FROM acct ORDER BY id", "SELECT * FROM history ORDER BY seq"} {
		if got, want := tableDump(t, p.rdb.Reader, q), tableDump(t, p.writer.Reader, q); got != want {
			t.Fatalf("%s: the replica differs from the writer", q)
		}
	}
	integrityOK(t, p.rdb.Reader)
	t.Logf("%d replica snapshots checked; feed: %d MTRs applied in %d batches, %d resyncs; replica volume reads %d",
		reads.Load(), p.feed.stats.applied.Load(), p.feed.stats.batches.Load(), p.feed.stats.resyncs.Load(), p.rdb.Stats().VolumeReads)
	if reads.Load() < int64(readers) {
		t.Fatalf("only %d replica snapshots", reads.Load())
	}
}

// readConn is readBank on one connection.
func readConn(ctx context.Context, conn *sql.Conn) (snapshot, error) {
	var s snapshot
	tx, err := conn.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return s, err
	}
	defer tx.Rollback()
	if err := tx.QueryRow("SELECT coalesce(sum(bal), 0), count(*) FROM acct").Scan(&s.sum, &s.count); err != nil {
		return s, err
	}
	if err := tx.QueryRow("SELECT n FROM counter WHERE k = 1").Scan(&s.n); err != nil {
		return s, err
	}
	if err := tx.QueryRow("SELECT count(*), coalesce(sum(x), 0) FROM history").Scan(&s.hist, &s.histSum); err != nil {
		return s, err
	}
	return s, tx.Commit()
}

// Concurrent transfers on the writer and concurrent read transactions on
// the replica: every replica snapshot is one state of the bank (money
// conserved, counter and history of the same transfers), a connection
// never sees fewer transfers than before, and once caught up the replica
// holds exactly the writer's rows.
func TestReplicaSnapshotsUnderConcurrentTransfers(t *testing.T) {
	p := startReplica(t, Options{CacheMiB: 8}, nil)
	bankRace(t, p, 4, 60, 4)
}

// The same with a replica that now and then misses a batch of MTRs and
// resyncs at the VDL (its page cache dropped) while its reads go on.
func TestReplicaResyncKeepsResultsCorrect(t *testing.T) {
	p := startReplica(t, Options{CacheMiB: 8}, func(f *redoFeed) { f.resyncEvery = 5 })
	bankRace(t, p, 4, 60, 4)
	if p.feed.stats.resyncs.Load() == 0 {
		t.Fatal("no resync happened")
	}
}

// Schema changes on the writer become visible to a replica connection that
// stays open across them (its schema cache is refreshed), with the pages
// they touch cached on the replica and updated by the applied MTRs.
func TestReplicaSeesSchemaChanges(t *testing.T) {
	p := startReplica(t, Options{CacheMiB: 8}, nil)
	p.rdb.Reader.SetMaxOpenConns(1)
	w, r := p.writer.Writer, p.rdb.Reader
	same := func(step, query string) {
		t.Helper()
		p.caughtUp(t)
		if got, want := tableDump(t, r, query), tableDump(t, p.writer.Reader, query); got != want {
			t.Fatalf("%s: %s on the replica:\n%s\nwant (the writer's):\n%s", step, query, got, want)
		}
	}
	gone := func(step, query string) {
		t.Helper()
		p.caughtUp(t)
		if _, err := r.Exec(query); err == nil || !strings.Contains(err.Error(), "no such") {
			t.Fatalf("%s: %s on the replica: %v; want no such table/index/column", step, query, err)
		}
	}
	schema := "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY name"

	mustExec(t, w, "CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT)")
	for i := 1; i <= 200; i++ {
		mustExec(t, w, "INSERT INTO t(a, b) VALUES(?, ?)", i, payload(i))
	}
	same("create table", "SELECT * FROM t ORDER BY a")
	same("create table", schema)

	mustExec(t, w, "ALTER TABLE t ADD COLUMN c INTEGER NOT NULL DEFAULT 7")
	mustExec(t, w, "UPDATE t SET c = a * 3 WHERE a % 2 = 0")
	same("add column", "SELECT a, c FROM t ORDER BY a")

	mustExec(t, w, "CREATE INDEX t_c ON t(c)")
	same("create index", schema)
	same("create index", "SELECT a FROM t INDEXED BY t_c WHERE c > 100 ORDER BY c, a")

	mustExec(t, w, "ALTER TABLE t RENAME COLUMN b TO bb")
	same("rename column", "SELECT a, bb FROM t WHERE a < 20 ORDER BY a")
	gone("rename column", "SELECT b FROM t")

	mustExec(t, w, "ALTER TABLE t RENAME TO u")
	same("rename table", "SELECT count(*), sum(c) FROM u")
	gone("rename table", "SELECT * FROM t")

	mustExec(t, w, "ALTER TABLE u DROP COLUMN bb")
	// (The first "SELECT *" of a connection after its table lost a column
	// fails with SQLITE_MISUSE in the go-sqlite3 driver, with or without
	// this VFS: name the columns first.)
	same("drop column", "SELECT a, c FROM u ORDER BY a")
	same("drop column", "SELECT * FROM u ORDER BY a")
	gone("drop column", "SELECT bb FROM u")

	mustExec(t, w, "DROP INDEX t_c")
	gone("drop index", "SELECT a FROM u INDEXED BY t_c WHERE c > 100")

	mustExec(t, w, "CREATE TABLE v(k TEXT PRIMARY KEY, blob BLOB) WITHOUT ROWID")
	mustExec(t, w, "INSERT INTO v SELECT 'k' || a, randomblob(500) FROM u")
	mustExec(t, w, "DROP TABLE u")
	gone("drop table", "SELECT * FROM u")
	same("drop table", schema)
	same("drop table", "SELECT k, hex(blob) FROM v ORDER BY k")

	// The freed pages are reused, then the file shrinks.
	mustExec(t, w, "CREATE TABLE x(i INTEGER PRIMARY KEY, s TEXT)")
	mustExec(t, w, "INSERT INTO x SELECT value, printf('%0400d', value) FROM generate_series(1, 150)")
	same("reuse", "SELECT * FROM x ORDER BY i")
	mustExec(t, w, "DELETE FROM v")
	mustExec(t, w, "VACUUM")
	same("vacuum", schema)
	same("vacuum", "SELECT * FROM x ORDER BY i")
	same("vacuum", "PRAGMA page_count")
	integrityOK(t, r)
}

// A long read transaction on the replica keeps its snapshot while MTRs
// apply beneath it (to pages the replica caches, so the pages it reads are
// storage's versions at its read point), while a new transaction sees the
// newest state; after it ends, the same connection sees the newest state.
func TestReplicaLongReadKeepsItsSnapshot(t *testing.T) {
	p := startReplica(t, Options{CacheMiB: 8}, nil)
	w := p.writer.Writer
	mustExec(t, w, "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
	insertRows(t, w, 0, 600)
	p.caughtUp(t)
	ctx := context.Background()
	conn, err := p.rdb.Reader.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// SQLite's own cache holds few pages: every scan reads through the VFS.
	if _, err := conn.ExecContext(ctx, "PRAGMA cache_size=5"); err != nil {
		t.Fatal(err)
	}
	const q = "SELECT count(*), sum(length(v)), group_concat(k || '=' || substr(v, 1, 10)) FROM t"
	scan := func(qr interface {
		QueryRowContext(context.Context, string, ...any) *sql.Row
	}) string {
		t.Helper()
		var n, size int
		var all string
		if err := qr.QueryRowContext(ctx, q).Scan(&n, &size, &all); err != nil {
			t.Fatalf("scan: %v (cause %v)", err, ConnError(ctx, conn))
		}
		return fmt.Sprint(n, size, len(all), all)
	}
	// Warm the replica's page cache, so MTRs apply to cached pages.
	scan(p.rdb.Reader)
	tx, err := conn.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	before := scan(tx)
	pinned := p.ro.ReadFloor(time.Now(), 0)
	reads := p.rdb.Stats().VolumeReads
	rng := rand.New(rand.NewPCG(8, 9))
	for i := range 40 {
		k := 1 + rng.IntN(600)
		switch i % 3 {
		case 0:
			mustExec(t, w, "UPDATE t SET v = ? WHERE k = ?", payload(k+1000+i), k)
		case 1:
			mustExec(t, w, "DELETE FROM t WHERE k = ?", k)
		case 2:
			insertRows(t, w, 1000+i*10, 10)
		}
		if i%10 == 9 {
			p.caughtUp(t)
			if got := scan(tx); got != before {
				t.Fatalf("after %d transactions the long read transaction sees another state", i+1)
			}
		}
	}
	p.caughtUp(t)
	if p.rdb.Stats().VolumeReads == reads {
		t.Fatal("the long transaction's scans never read storage: the test reads nothing beneath the applied MTRs")
	}
	if p.ro.ReadFloor(time.Now(), 0) != pinned || p.ro.VDL() <= pinned {
		t.Fatalf("replica floor %d (pinned %d) at VDL %d", p.ro.ReadFloor(time.Now(), 0), pinned, p.ro.VDL())
	}
	want := scan(p.writer.Reader)
	if got := scan(p.rdb.Reader); got != want {
		t.Fatal("a new replica transaction does not see the writer's state")
	}
	if got := scan(tx); got != before {
		t.Fatal("the long read transaction changed at the end")
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := scan(conn); got != want {
		t.Fatal("after its long transaction the connection does not see the newest state")
	}
	if f := p.ro.ReadFloor(time.Now(), 0); f != p.ro.VDL() {
		t.Fatalf("replica floor %d after the transaction, want the VDL %d", f, p.ro.VDL())
	}
}

// A replica read transaction pinned longer than MaxReadAge fails its next
// page read with ErrSnapshotTooOld (through ConnError after SQLite's I/O
// error), and stops counting in the floor the replica reports; the
// connection then works again in a new transaction.
func TestReplicaMaxReadAge(t *testing.T) {
	const maxAge = 300 * time.Millisecond
	p := startReplica(t, Options{CacheMiB: 8, MaxReadAge: maxAge}, nil)
	w := p.writer.Writer
	mustExec(t, w, "CREATE TABLE small(k INTEGER PRIMARY KEY)")
	mustExec(t, w, "INSERT INTO small VALUES(1)")
	mustExec(t, w, "CREATE TABLE big(k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
	for i := range 5 {
		insertBig(t, w, i*100, 100)
	}
	p.caughtUp(t)
	ctx := context.Background()
	conn, err := p.rdb.Reader.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tx, err := conn.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM small").Scan(&n); err != nil || n != 1 {
		t.Fatalf("small: %d %v", n, err)
	}
	began := time.Now()
	pinned := p.ro.ReadFloor(began, 0)
	mustExec(t, w, "INSERT INTO small VALUES(2)")
	p.caughtUp(t)
	wait.For(t, 5*time.Second, "the read transaction to pass its age", func() bool { return time.Since(began) > maxAge+50*time.Millisecond })
	if f := p.ro.ReadFloor(time.Now(), maxAge); f != p.ro.VDL() {
		t.Fatalf("floor reported with a transaction past its age: %d, want the VDL %d (it was pinned at %d)", f, p.ro.VDL(), pinned)
	}
	err = tx.QueryRowContext(ctx, "SELECT count(*), sum(length(v)) FROM big").Scan(&n, new(int))
	if err == nil {
		t.Fatal("a read transaction past its age read big's pages")
	}
	if cause := ConnError(ctx, conn); !errors.Is(cause, ErrSnapshotTooOld) {
		t.Fatalf("read past the age: %v, cause %v; want ErrSnapshotTooOld", err, cause)
	}
	tx.Rollback()
	if err := conn.QueryRowContext(ctx, "SELECT count(*) FROM small").Scan(&n); err != nil || n != 2 {
		t.Fatalf("the connection after its old transaction: %d %v", n, err)
	}
}

func insertBig(t *testing.T, db *sql.DB, from, n int) {
	t.Helper()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for i := from + 1; i <= from+n; i++ {
		mustExec(t, tx, "INSERT INTO big(k, v) VALUES(?, ?)", i, strings.Repeat("b", 1000))
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}
