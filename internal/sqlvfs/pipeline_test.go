package sqlvfs

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/volume"
)

// watchedVolume is the real volume client, with a record of how many MTRs
// were submitted and not yet durable when each new one was submitted.
type watchedVolume struct {
	*volume.Client
	mu          sync.Mutex
	submitted   []uint64
	maxInFlight int
}

func (w *watchedVolume) Submit(ctx context.Context, mtr []volume.PageWrite) (uint64, error) {
	lsn, err := w.Client.Submit(ctx, mtr)
	if err != nil {
		return lsn, err
	}
	vdl := w.Client.VDL()
	w.mu.Lock()
	defer w.mu.Unlock()
	inFlight := 1
	for _, l := range w.submitted {
		if l > vdl {
			inFlight++
		}
	}
	w.submitted = append(w.submitted, lsn)
	w.maxInFlight = max(w.maxInFlight, inFlight)
	return lsn, nil
}

// Concurrent writers do not wait for each other's quorum round trips: more
// than one MTR is in flight at once. Every insert is visible to a read
// connection (pinned at the VDL) as soon as its Exec returns, so an Exec
// returns only once its commit is durable.
func TestCommitsArePipelined(t *testing.T) {
	cl := startCluster(t)
	vol := &watchedVolume{Client: cl.client(t, 1, 0)}
	db, err := OpenDB(vol, Options{CacheMiB: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	mustExec(t, db.Writer, "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT)")

	const writers, each = 16, 40
	var wg sync.WaitGroup
	var failed atomic.Value
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				k := g*each + i + 1
				if _, err := db.Writer.Exec("INSERT INTO t(k, v) VALUES(?, ?)", k, payload(k)); err != nil {
					failed.Store(err)
					return
				}
				var n int
				if err := db.Reader.QueryRow("SELECT count(*) FROM t WHERE k = ?", k).Scan(&n); err != nil || n != 1 {
					failed.Store(errors.New("an acknowledged insert is not visible to a read connection"))
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := db.Reader.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil || n != writers*each {
		t.Fatalf("count %d, %v; want %d", n, err, writers*each)
	}
	integrityOK(t, db.Reader)
	vol.mu.Lock()
	defer vol.mu.Unlock()
	t.Logf("%d MTRs, up to %d in flight at once", len(vol.submitted), vol.maxInFlight)
	if vol.maxInFlight < 2 {
		t.Fatalf("commits were never pipelined: at most %d MTR in flight", vol.maxInFlight)
	}
}

// With three of six nodes gone a commit fails with the volume's
// unavailability error within the write timeout, while read connections go
// on answering with the last acknowledged state and never show the
// unacknowledged insert.
func TestReadsAnswerWhileWritesStall(t *testing.T) {
	cl := startCluster(t)
	db := openDBPools(t, cl.client(t, 1, 0, time.Second), Options{CacheMiB: 8})
	mustExec(t, db.Writer, "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT)")
	for k := 1; k <= 10; k++ {
		mustExec(t, db.Writer, "INSERT INTO t(k, v) VALUES(?, ?)", k, payload(k))
	}
	for _, i := range []int{0, 2, 4} {
		cl.nodes[i].Close()
	}
	ctx := context.Background()
	conn, err := db.Writer.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	if _, err = conn.ExecContext(ctx, "INSERT INTO t(k, v) VALUES(11, 'never acknowledged')"); err == nil {
		t.Fatal("insert with 3 nodes down succeeded")
	}
	cause := ConnError(ctx, conn)
	var unavailable *volume.UnavailableError
	if !errors.As(cause, &unavailable) {
		t.Fatalf("insert with 3 nodes down: %v, cause %v; want a *volume.UnavailableError", err, cause)
	}
	t.Logf("failed after %s: %v (%v)", time.Since(start).Round(time.Millisecond), err, cause)
	var n, max int
	if err := db.Reader.QueryRow("SELECT count(*), max(k) FROM t").Scan(&n, &max); err != nil {
		t.Fatal(err)
	}
	if n != 10 || max != 10 {
		t.Fatalf("read connection shows %d rows up to k=%d; want the 10 acknowledged", n, max)
	}
	integrityOK(t, db.Reader)
}

// A 50 MB transaction, far beyond SQLite's page cache and the VFS's, is one
// MTR: it commits whole, reads back, and a second one that rolls back leaves
// no trace.
func TestFiftyMegabyteTransaction(t *testing.T) {
	cl := startCluster(t)
	db := openDBPools(t, cl.client(t, 1, 0), Options{CacheMiB: 4})
	mustExec(t, db.Writer, "CREATE TABLE big(k INTEGER PRIMARY KEY, v BLOB)")
	const rows, size = 12800, 4096 // 50 MiB of values
	fill := func(from int, commit bool) {
		tx, err := db.Writer.Begin()
		if err != nil {
			t.Fatal(err)
		}
		for k := from; k < from+rows; k++ {
			if _, err := tx.Exec("INSERT INTO big(k, v) VALUES(?, randomblob(?))", k, size); err != nil {
				t.Fatal(err)
			}
		}
		if commit {
			err = tx.Commit()
		} else {
			err = tx.Rollback()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	before := db.Stats().Commits
	start := time.Now()
	fill(1, true)
	t.Logf("50 MiB transaction committed in %s", time.Since(start).Round(time.Millisecond))
	if got := db.Stats().Commits - before; got != 1 {
		t.Fatalf("the transaction became %d MTRs, want 1", got)
	}
	fill(rows+1, false)
	var n, total int
	if err := db.Reader.QueryRow("SELECT count(*), sum(length(v)) FROM big").Scan(&n, &total); err != nil {
		t.Fatal(err)
	}
	if n != rows || total != rows*size {
		t.Fatalf("read back %d rows, %d bytes; want %d, %d", n, total, rows, rows*size)
	}
	integrityOK(t, db.Reader)
}
