package sqlvfs

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/volume"
)

// heldVolume is the real volume client whose durability can be held back:
// while held, VDL reports nothing durable beyond what it was, and
// WaitDurable blocks until the hold is released (or fails at once with
// failWith).
type heldVolume struct {
	*volume.Client
	held     atomic.Bool
	heldVDL  atomic.Uint64
	release  chan struct{}
	waits    atomic.Int64
	failWith error
}

func (v *heldVolume) hold() {
	v.release = make(chan struct{})
	v.heldVDL.Store(v.Client.VDL())
	v.waits.Store(0)
	v.held.Store(true)
}

func (v *heldVolume) VDL() uint64 {
	if v.held.Load() {
		return v.heldVDL.Load()
	}
	return v.Client.VDL()
}

func (v *heldVolume) WaitDurable(ctx context.Context, lsn uint64) error {
	v.waits.Add(1)
	if v.held.Load() {
		if v.failWith != nil {
			return v.failWith
		}
		<-v.release
	}
	return v.Client.WaitDurable(ctx, lsn)
}

func (v *heldVolume) unhold() {
	v.held.Store(false)
	close(v.release)
}

// heldDB is a database with a table t on a heldVolume over six nodes.
func heldDB(t *testing.T) (*heldVolume, *DB) {
	cl := startCluster(t)
	vol := &heldVolume{Client: cl.client(t, 1, 0)}
	db := openDBPools(t, vol, Options{CacheMiB: 8})
	mustExec(t, db.Writer, "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT)")
	return vol, db
}

// Under DeferDurability a COMMIT returns without waiting for its quorum,
// and done hands over the LSN to wait for; DB.WaitDurable waits for it
// after the connection went back. Once done is called the connection waits
// in COMMIT again.
func TestDeferredDurabilityWaitsOutsideTheConnection(t *testing.T) {
	vol, db := heldDB(t)
	ctx := context.Background()

	vol.hold()
	conn, err := db.Writer.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	done, err := DeferDurability(conn)
	if err != nil {
		t.Fatal(err)
	}
	execd := make(chan error, 1)
	go func() {
		_, err := conn.ExecContext(ctx, "INSERT INTO t VALUES(1, 'one')")
		execd <- err
	}()
	select {
	case err := <-execd:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a deferred COMMIT waited for durability")
	}
	lsn, err := done()
	if err != nil || lsn == 0 {
		t.Fatalf("done = %d, %v; want the commit's LSN", lsn, err)
	}
	if n := vol.waits.Load(); n != 0 {
		t.Fatalf("%d durability waits during the deferred transaction", n)
	}
	conn.Close()

	waited := make(chan error, 1)
	go func() { waited <- db.WaitDurable(ctx, lsn) }()
	select {
	case err := <-waited:
		t.Fatalf("WaitDurable returned %v while the commit was not durable", err)
	case <-time.After(50 * time.Millisecond):
	}
	vol.unhold()
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	var n int
	if err := db.Reader.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil || n != 1 {
		t.Fatalf("count %d, %v after the wait; want 1", n, err)
	}

	// Off again: the next COMMIT on the same pool waits itself.
	vol.hold()
	execd2 := make(chan error, 1)
	go func() {
		_, err := db.Writer.ExecContext(ctx, "INSERT INTO t VALUES(2, 'two')")
		execd2 <- err
	}()
	for vol.waits.Load() == 0 {
		select {
		case err := <-execd2:
			t.Fatalf("a COMMIT after done returned (%v) without waiting for durability", err)
		case <-time.After(time.Millisecond):
		}
	}
	vol.unhold()
	if err := <-execd2; err != nil {
		t.Fatal(err)
	}
}

// A deferred commit that does not become durable fails WaitDurable with an
// UnacknowledgedError, and writer connections read their pages again.
func TestDeferredDurabilityFailure(t *testing.T) {
	vol, db := heldDB(t)
	ctx := context.Background()

	vol.hold()
	vol.failWith = errors.New("no write quorum")
	conn, err := db.Writer.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	done, err := DeferDurability(conn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, "INSERT INTO t VALUES(1, 'one')"); err != nil {
		t.Fatal(err)
	}
	lsn, _ := done()
	conn.Close()
	gen := db.d.cacheGen.Load()
	err = db.WaitDurable(ctx, lsn)
	var unack *UnacknowledgedError
	if !errors.As(err, &unack) || unack.LSN != lsn || unack.Err != vol.failWith {
		t.Fatalf("WaitDurable = %v; want an UnacknowledgedError of LSN %d", err, lsn)
	}
	if db.d.cacheGen.Load() == gen {
		t.Fatal("a failed deferred commit left the writer connections' caches trusted")
	}
	vol.failWith = nil
	vol.unhold()
	// A read connection cannot take deferred durability.
	rc, err := db.Reader.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := DeferDurability(rc); err == nil {
		t.Fatal("deferred durability on a read connection")
	}
}
