package sqlvfs

import (
	"context"
	"database/sql"
	"errors"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/storage"
	"github.com/borealis-db/borealis/internal/volume"
)

// descheduledVolume makes the committing goroutine pause right after Submit
// returned, once, until its MTR is durable, and runs during() there: the
// window in which a read point can already be at or above an MTR whose pages
// the VFS has not put in its cache yet.
type descheduledVolume struct {
	*volume.Client
	during atomic.Pointer[func()]
}

func (v *descheduledVolume) Submit(ctx context.Context, mtr []volume.PageWrite) (uint64, error) {
	lsn, err := v.Client.Submit(ctx, mtr)
	if err == nil {
		if f := v.during.Swap(nil); f != nil {
			if err := v.Client.WaitDurable(ctx, lsn); err != nil {
				return lsn, err
			}
			(*f)()
		}
	}
	return lsn, err
}

func twoTableCounts(t *testing.T, db *sql.DB) (int, int) {
	t.Helper()
	var a, b int
	if err := db.QueryRow("SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b)").Scan(&a, &b); err != nil {
		t.Fatal(err)
	}
	return a, b
}

func twoTables(t *testing.T) (*descheduledVolume, *DB) {
	t.Helper()
	cl := startCluster(t)
	vol := &descheduledVolume{Client: cl.client(t, 1, 0)}
	db, err := OpenDB(vol, Options{CacheMiB: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	db.Reader.SetMaxOpenConns(1)
	mustExec(t, db.Writer, "CREATE TABLE a(k INTEGER PRIMARY KEY)")
	mustExec(t, db.Writer, "CREATE TABLE b(k INTEGER PRIMARY KEY)")
	mustExec(t, db.Writer, "BEGIN; INSERT INTO a VALUES(1); INSERT INTO b VALUES(1); COMMIT")
	if a, b := twoTableCounts(t, db.Reader); a != 1 || b != 1 {
		t.Fatalf("set up: %d %d", a, b)
	}
	return vol, db
}

// A read point at or above an MTR whose pages are not cached yet reads
// storage, not the older cached pages: never half a transaction (one of its
// pages evicted, the other cached), and never a stale page that SQLite then
// keeps after the commit was acknowledged.
func TestReadsInTheWindowBeforeTheCacheHasTheMTR(t *testing.T) {
	for _, evict := range []bool{false, true} {
		vol, db := twoTables(t)
		var rootB uint64
		if err := db.Writer.QueryRow("SELECT rootpage FROM sqlite_master WHERE name = 'b'").Scan(&rootB); err != nil {
			t.Fatal(err)
		}
		var during [2]int
		f := func() {
			if evict {
				db.d.cache.drop(rootB) // what the LRU may do to an entry at or below the VDL
			}
			during[0], during[1] = twoTableCounts(t, db.Reader)
		}
		vol.during.Store(&f)
		mustExec(t, db.Writer, "BEGIN; INSERT INTO a VALUES(2); INSERT INTO b VALUES(2); COMMIT")
		if during[0] != during[1] {
			t.Fatalf("evict %v: a read in the window saw a=%d b=%d of one transaction", evict, during[0], during[1])
		}
		if a, b := twoTableCounts(t, db.Reader); a != 2 || b != 2 {
			t.Fatalf("evict %v: after COMMIT returned the read connection sees a=%d b=%d", evict, a, b)
		}
	}
}

// A writer connection's read outside a write transaction never returns a
// commit that is not durable: after a commit failed for lack of a write
// quorum, reading through the writer pool fails instead of showing it. So it
// is for OpenDB's pool, and for a database/sql pool opened on DSN, as
// borealis.DSN users open it (without OpenDB's connect hook).
func TestWriterPoolReadsOnlyDurableState(t *testing.T) {
	for _, pool := range []string{"OpenDB", "sql.Open(DSN)", "sql.Open(DSN with a forged setup mark)"} {
		t.Run(pool, func(t *testing.T) {
			cl := startCluster(t)
			db := openDBPools(t, cl.client(t, 1, 0, time.Second), Options{CacheMiB: 8})
			writer := db.Writer
			if pool != "OpenDB" {
				dsn := DSN(db.d.name, Options{})
				if pool != "sql.Open(DSN)" {
					// Only OpenDB's pools may skip the wait during setup.
					dsn += "&" + setupParam + "=1"
				}
				var err error
				if writer, err = sql.Open("sqlite3", dsn); err != nil {
					t.Fatal(err)
				}
				defer writer.Close()
				// Every read below gets a new connection, setup included.
				writer.SetMaxIdleConns(0)
			}
			mustExec(t, writer, "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT)")
			for k := 1; k <= 10; k++ {
				mustExec(t, writer, "INSERT INTO t(k, v) VALUES(?, 'x')", k)
			}
			for _, i := range []int{0, 2, 4} {
				cl.nodes[i].Close()
			}
			if _, err := writer.Exec("INSERT INTO t(k, v) VALUES(11, 'never acknowledged')"); err == nil {
				t.Fatal("insert with 3 nodes down succeeded")
			}
			ctx := context.Background()
			conn, err := writer.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			var n int
			err = conn.QueryRowContext(ctx, "SELECT count(*) FROM t").Scan(&n)
			if err == nil {
				t.Fatalf("the writer pool read %d rows, the unacknowledged one included, without an error", n)
			}
			var unack *UnacknowledgedError
			if cause := ConnError(ctx, conn); !errors.As(cause, &unack) {
				t.Fatalf("read of an undurable state: %v, cause %v; want an *UnacknowledgedError", err, cause)
			}
			if err := db.Reader.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil || n != 10 {
				t.Fatalf("read connection: %d rows, %v; want the 10 acknowledged", n, err)
			}
		})
	}
}

// SQLite pages of another size than the volume's are refused at the first
// commit with an error that says what to do, instead of making a database
// the volume's page size can never open again.
func TestSQLitePageSizeMustMatchTheVolume(t *testing.T) {
	cl := startCluster(t)
	cfg := volume.Config{VolumeID: 1, Epoch: 1, PageSize: 8192,
		Placement:    func(uint32) (volume.Membership, error) { return volume.OneSet(cl.members), nil },
		WriteTimeout: 5 * time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	vc, err := volume.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vc.Close() })
	name := "pagesize"
	if err := Register(name, vc, Options{PageSize: 8192}); err != nil {
		t.Fatal(err)
	}
	defer Unregister(name)
	q := url.Values{}
	q.Set("vfs", VFSName)
	q.Add("_pragma", "journal_mode(memory)") // no page_size: SQLite's default 4096
	db, err := sql.Open("sqlite3", "file:"+name+"?"+q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = conn.ExecContext(context.Background(), "CREATE TABLE t(k INTEGER PRIMARY KEY)")
	cause := ConnError(context.Background(), conn)
	if err == nil || cause == nil || !strings.Contains(cause.Error(), "page_size=8192") {
		t.Fatalf("a 4096-byte SQLite page on an 8192-byte volume: %v, cause %v", err, cause)
	}
	if vc.Stats().Commits != 0 {
		t.Fatal("the refused commit reached storage")
	}
}

// Full disks on the SQL path: with two nodes refusing appends for lack of
// space, commits go on; with a third, a commit fails with the volume's
// unavailability error that says the disks are full, reads answer with exactly the
// acknowledged rows, and once the space is back the database takes writes
// again with nothing lost or half-written.
func TestFullDisksOnTheSQLPath(t *testing.T) {
	cl := startCluster(t)
	vc := cl.client(t, 1, 0, time.Second)
	db := openDBPools(t, vc, Options{CacheMiB: 8})
	mustExec(t, db.Writer, "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT)")
	full := func(c *storage.Config) { c.MinFreeBytes = 1 << 62 }
	roomy := func(c *storage.Config) {}
	k := 0
	insert := func() error {
		k++
		_, err := db.Writer.Exec("INSERT INTO t(k, v) VALUES(?, ?)", k, payload(k))
		return err
	}
	for range 5 {
		if err := insert(); err != nil {
			t.Fatal(err)
		}
	}
	cl.restart(t, 0, full)
	cl.restart(t, 2, full)
	for range 5 {
		if err := insert(); err != nil {
			t.Fatalf("insert with two full disks: %v", err)
		}
	}
	cl.restart(t, 4, full)
	ctx := context.Background()
	conn, err := db.Writer.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	k++
	if _, err := conn.ExecContext(ctx, "INSERT INTO t(k, v) VALUES(?, ?)", k, payload(k)); err == nil {
		t.Fatal("insert with three full disks succeeded")
	}
	cause := ConnError(ctx, conn)
	conn.Close()
	var unavailable *volume.UnavailableError
	if !errors.As(cause, &unavailable) || !strings.Contains(cause.Error(), "kept in reserve") {
		t.Fatalf("insert with three full disks: cause %v; want a *volume.UnavailableError saying the disks are full", cause)
	}
	var n, top int
	if err := db.Reader.QueryRow("SELECT count(*), max(k) FROM t").Scan(&n, &top); err != nil || n != 10 || top != 10 {
		t.Fatalf("read with three full disks: %d rows up to %d, %v; want the 10 acknowledged", n, top, err)
	}
	for _, i := range []int{0, 2, 4} {
		cl.restart(t, i, roomy)
	}
	// The insert that was not acknowledged commits now that storage has room.
	if err := vc.WaitDurable(ctx, vc.Stats().LastAllocated); err != nil {
		t.Fatalf("the pending commit after space came back: %v", err)
	}
	for range 5 {
		if err := insert(); err != nil {
			t.Fatalf("insert after space came back: %v", err)
		}
	}
	if err := db.Reader.QueryRow("SELECT count(*), max(k) FROM t").Scan(&n, &top); err != nil || n != 16 || top != 16 {
		t.Fatalf("after space came back: %d rows up to %d, %v; want 16", n, top, err)
	}
	integrityOK(t, db.Reader)
}
