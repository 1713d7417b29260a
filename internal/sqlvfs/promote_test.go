package sqlvfs

import (
	"context"
	"database/sql"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/borealis-db/borealis/internal/volume"
)

// countingVolume is a volume client that counts its page reads and
// submits; a readOnly one refuses to submit, as a replica's does.
type countingVolume struct {
	Volume
	readOnly       bool
	reads, submits atomic.Uint64
}

func (v *countingVolume) ReadPage(ctx context.Context, page, readLSN uint64) ([]byte, error) {
	v.reads.Add(1)
	return v.Volume.ReadPage(ctx, page, readLSN)
}

func (v *countingVolume) Submit(ctx context.Context, mtr []volume.PageWrite) (uint64, error) {
	if v.readOnly {
		return 0, volume.ErrReadOnly
	}
	v.submits.Add(1)
	return v.Volume.Submit(ctx, mtr)
}

// lowVDL is a volume client that says its VDL is vdl.
type lowVDL struct {
	Volume
	vdl uint64
}

func (v lowVDL) VDL() uint64 { return v.vdl }

// oldWriter opens a writer's database on a fresh volume at epoch 1 with a
// table of n rows; it returns the database and its volume client.
func oldWriter(t *testing.T, cl *cluster, n int) (*DB, *volume.Client) {
	t.Helper()
	vc := cl.client(t, 1, 0)
	db, err := OpenDB(vc, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	mustExec(t, db.Writer, "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
	insertRows(t, db.Writer, 0, n)
	return db, vc
}

// count runs a query that returns one integer.
func count(t *testing.T, db *sql.DB, q string) int {
	t.Helper()
	var n int
	if err := db.QueryRow(q).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// A replica's database promoted onto a new writer's volume client, at the
// VDL the replica applied, keeps its page cache: what the replica had read
// is served without a page read from storage, on the read and on the
// writer connections alike. Then it writes, under the new epoch, and what
// it wrote is durable on storage.
func TestPromoteKeepsThePageCache(t *testing.T) {
	cl := startCluster(t)
	old, vc1 := oldWriter(t, cl, 300)
	vdl := vc1.VDL()
	old.Close()
	vc1.Close()

	// A replica at that VDL reads the whole table: its cache is warm.
	ro := &countingVolume{Volume: cl.client(t, 1, vdl), readOnly: true}
	db, err := OpenReplicaDB(ro, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	checkRows(t, db.Reader, 300)
	integrityOK(t, db.Reader)
	if _, err := db.Reader.Exec("INSERT INTO t(k, v) VALUES (1000, 'x')"); err == nil {
		t.Fatal("a replica's read connection wrote")
	}

	// The new writer recovered at the replica's VDL.
	nw := &countingVolume{Volume: cl.client(t, 2, vdl)}
	if _, err := db.Promote(lowVDL{Volume: nw, vdl: vdl - 1}); err == nil || !strings.Contains(err.Error(), "below") {
		t.Fatalf("promotion onto a volume client below what the replica applied: %v", err)
	}
	if db.Writer != nil {
		t.Fatal("a refused promotion opened the writer pool")
	}
	checkRows(t, db.Reader, 300)
	before := db.Stats().VolumeReads
	if _, err := db.Promote(nw); err != nil {
		t.Fatal(err)
	}
	if db.Writer == nil {
		t.Fatal("Promote opened no writer pool")
	}
	if _, err := db.Promote(nw); err == nil {
		t.Fatal("a second Promote succeeded")
	}
	checkRows(t, db.Reader, 300)
	checkRows(t, db.Writer, 300)
	integrityOK(t, db.Writer)
	if n := nw.reads.Load(); n != 0 {
		t.Fatalf("after the promotion, %d page reads went to storage for a table the replica had cached", n)
	}
	if n := db.Stats().VolumeReads - before; n != 0 {
		t.Fatalf("after the promotion, %d page reads missed the cache", n)
	}

	// It writes, through the new volume client.
	insertRows(t, db.Writer, 300, 50)
	checkRows(t, db.Reader, 350)
	if nw.submits.Load() == 0 || ro.submits.Load() != 0 {
		t.Fatalf("submits: %d to the new writer's client, %d to the replica's", nw.submits.Load(), ro.submits.Load())
	}
	if st := db.Stats(); st.Commits != 1 {
		t.Fatalf("stats after the promoted writes: %+v", st)
	}
	vdl2 := nw.VDL()
	if vdl2 <= vdl {
		t.Fatalf("VDL %d after the promoted writes, was %d", vdl2, vdl)
	}
	db.Close()

	// Durable: a later writer sees it all.
	next, err := OpenDB(cl.client(t, 3, vdl2), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { next.Close() })
	checkRows(t, next.Reader, 350)
	integrityOK(t, next.Reader)
}

// A replica that had not applied everything the new writer's recovery
// found durable cannot trust its cache: the MTRs it missed changed pages it
// holds. Promote drops the cache, and the promoted database sees the
// missed commits.
func TestPromoteBehindDropsThePageCache(t *testing.T) {
	cl := startCluster(t)
	old, vc1 := oldWriter(t, cl, 200)
	a := vc1.VDL()
	ro := &countingVolume{Volume: cl.client(t, 1, a), readOnly: true}
	db, err := OpenReplicaDB(ro, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	checkRows(t, db.Reader, 200)

	// The old writer goes on; the replica misses it.
	mustExec(t, old.Writer, "UPDATE t SET v = 'changed' WHERE k <= 100")
	insertRows(t, old.Writer, 200, 50)
	b := vc1.VDL()
	old.Close()
	vc1.Close()
	if n := count(t, db.Reader, "SELECT count(*) FROM t WHERE v = 'changed'"); n != 0 {
		t.Fatalf("the replica at LSN %d sees %d changed rows", a, n)
	}

	nw := &countingVolume{Volume: cl.client(t, 2, b)}
	if _, err := db.Promote(nw); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		db   *sql.DB
	}{{"reader", db.Reader}, {"writer", db.Writer}} {
		if n := count(t, c.db, "SELECT count(*) FROM t WHERE v = 'changed'"); n != 100 {
			t.Fatalf("the promoted %s sees %d changed rows, want 100", c.name, n)
		}
		if n := count(t, c.db, "SELECT count(*) FROM t"); n != 250 {
			t.Fatalf("the promoted %s sees %d rows, want 250", c.name, n)
		}
	}
	if nw.reads.Load() == 0 {
		t.Fatal("no page was read from storage: the stale cache served")
	}
	integrityOK(t, db.Writer)
	insertRows(t, db.Writer, 250, 10)
	if n := count(t, db.Reader, "SELECT count(*) FROM t"); n != 260 {
		t.Fatalf("%d rows after writing on the promoted database, want 260", n)
	}
}

// A replica behind the new writer's recovered VDL is promoted with the
// records it lacked, read from storage (volume.Client.RedoSince): Promote
// applies them to its cache and keeps it. The promoted database sees the
// missed commits, and the pages the replica had cached are served without
// a read from storage. Given records that do not reach the VDL, Promote
// drops the cache instead.
func TestPromoteBehindAppliesWhatItLacked(t *testing.T) {
	for _, whole := range []bool{true, false} {
		t.Run(map[bool]string{true: "whole", false: "short"}[whole], func(t *testing.T) {
			cl := startCluster(t)
			old, vc1 := oldWriter(t, cl, 200)
			a := vc1.VDL()
			ro := &countingVolume{Volume: cl.client(t, 1, a), readOnly: true}
			db, err := OpenReplicaDB(ro, Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			checkRows(t, db.Reader, 200)

			mustExec(t, old.Writer, "UPDATE t SET v = 'changed' WHERE k <= 100")
			insertRows(t, old.Writer, 200, 50)
			b := vc1.VDL()
			old.Close()
			vc1.Close()

			nc := cl.client(t, 2, b)
			lacking, err := nc.RedoSince(context.Background(), a)
			if err != nil {
				t.Fatal(err)
			}
			if len(lacking) == 0 || lacking[0].LSN <= a || lacking[len(lacking)-1].LSN != b {
				t.Fatalf("RedoSince(%d) gave %d records, up to %d; want them in (%d, %d]", a, len(lacking), lacking[len(lacking)-1].LSN, a, b)
			}
			if !whole {
				lacking = lacking[:len(lacking)-1]
			}
			nw := &countingVolume{Volume: nc}
			warm, err := db.Promote(nw, lacking...)
			if err != nil {
				t.Fatal(err)
			}
			if warm != whole {
				t.Fatalf("Promote with the records in (%d, %d], whole %v: warm %v", a, b, whole, warm)
			}
			if whole {
				// The pages of the first 200 rows, cached and brought up
				// to date by the records.
				if n := count(t, db.Reader, "SELECT count(*) FROM t WHERE k < 200 AND v = 'changed'"); n != 100 {
					t.Fatalf("the promoted database sees %d changed rows, want 100", n)
				}
				if n := nw.reads.Load(); n != 0 {
					t.Fatalf("%d page reads went to storage for pages the replica had cached", n)
				}
			}
			for _, c := range []struct {
				name string
				db   *sql.DB
			}{{"reader", db.Reader}, {"writer", db.Writer}} {
				if n := count(t, c.db, "SELECT count(*) FROM t WHERE v = 'changed'"); n != 100 {
					t.Fatalf("the promoted %s sees %d changed rows, want 100", c.name, n)
				}
				if n := count(t, c.db, "SELECT count(*) FROM t"); n != 250 {
					t.Fatalf("the promoted %s sees %d rows, want 250", c.name, n)
				}
			}
			integrityOK(t, db.Writer)
		})
	}
}
