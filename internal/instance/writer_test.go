package instance

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/volume"
	"github.com/borealis-db/borealis/internal/wait"
)

// startedWriter starts a writer of volume "main" named id (see
// hookedWriterOf); cfg, if set, changes its config first.
func startedWriter(t *testing.T, addr, id string, cfg func(*WriterConfig)) (*Writer, *hookedControl) {
	t.Helper()
	// The catalog takes no instance record without a SQL endpoint.
	c := WriterConfig{Volume: "main", ID: id, Endpoint: "127.0.0.1:1", LeaseTTL: 1500 * time.Millisecond}
	if cfg != nil {
		cfg(&c)
	}
	w, h := hookedWriterOf(t, addr, c)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return w, h
}

// A writer serves once started: the database writes, the redo stream is
// served, the catalog has its record. Close releases the lease, so that
// the next writer starts at once (a lease left to expire would make it wait
// for the TTL) and sees what the first committed.
func TestWriterStartsServesAndReleasesItsLease(t *testing.T) {
	addr := startControlCluster(t)
	w, h := startedWriter(t, addr, "w1", nil)
	defer w.Close()
	if !w.Ready() || w.Status() != "ready" || w.Epoch() == 0 || w.VolumeID() == 0 {
		t.Fatalf("a started writer: ready %v, status %q, epoch %d, volume %d", w.Ready(), w.Status(), w.Epoch(), w.VolumeID())
	}
	if w.DB() == nil || w.Volume() == nil || w.Stream() == nil {
		t.Fatal("a started writer has no database, volume client or redo stream")
	}
	db, err := w.Writable(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Writer.Exec("CREATE TABLE t(k INTEGER PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Writer.Exec("INSERT INTO t VALUES (1), (2), (3)"); err != nil {
		t.Fatal(err)
	}
	epoch := w.Epoch()
	wait.For(t, 30*time.Second, "the writer's catalog record", func() bool {
		in, err := WriterRecord(context.Background(), h, "main")
		return err == nil && in.Id == "w1" && in.Epoch == epoch && in.ReplicationEndpoint != ""
	})

	w.Close()
	if w.Ready() || w.DB() != nil || w.Status() != "stopped" {
		t.Fatalf("a closed writer: ready %v, status %q", w.Ready(), w.Status())
	}
	start := time.Now()
	w2, _ := startedWriter(t, addr, "w2", nil)
	defer w2.Close()
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("the next writer took %s to start: the lease was not released", took)
	}
	if w2.Epoch() <= epoch {
		t.Fatalf("the next writer's epoch %d, after %d", w2.Epoch(), epoch)
	}
	var n int
	if err := w2.DB().Reader.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil || n != 3 {
		t.Fatalf("the next writer reads %d rows (%v), want 3", n, err)
	}
}

// Fenced on a writer from Start stops it, without waiting for the caller,
// which still holds a connection (closing the database waits for it), and
// releases the lease.
func TestFencedWriterShutsDownWithoutItsCaller(t *testing.T) {
	addr := startControlCluster(t)
	w, _ := startedWriter(t, addr, "w1", nil)
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := w.DB().Writer.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	returned := make(chan struct{})
	go func() {
		w.Fenced(volume.ErrFenced)
		close(returned)
	}()
	if !waitClosed(t, returned, "Fenced to return while a connection is held") {
		t.FailNow()
	}
	if w.Ready() {
		t.Fatal("a fenced writer is ready")
	}
	if _, err := w.Writable(ctx); !errors.As(err, new(*NotReadyError)) {
		t.Fatalf("a write to a fenced writer: %v", err)
	}
	conn.Close()
	wait.For(t, 30*time.Second, "the fenced writer to shut down", func() bool {
		return w.DB() == nil && w.Status() == "stopped"
	})
	start := time.Now()
	w2, _ := startedWriter(t, addr, "w2", nil)
	defer w2.Close()
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("the next writer took %s to start: the fenced writer kept its lease", took)
	}
}

// Run starts again when fenced, under a new epoch.
func TestRunStartsAgainWhenFenced(t *testing.T) {
	addr := startControlCluster(t)
	w, _ := hookedWriter(t, addr, 1500*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-ran; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
		if w.Ready() || w.Status() != "stopped" {
			t.Errorf("after Run: ready %v, status %q", w.Ready(), w.Status())
		}
	}()
	wait.For(t, 30*time.Second, "the writer to serve", w.Ready)
	epoch := w.Epoch()
	w.Fenced(volume.ErrFenced)
	wait.For(t, 30*time.Second, "the writer to serve again", func() bool { return w.Ready() && w.Epoch() > epoch })
	db, err := w.Writable(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Writer.Exec("CREATE TABLE t(k)"); err != nil {
		t.Fatal(err)
	}
}

// After a commit that was not acknowledged, writes wait for it: up to the
// write timeout (then PendingCommitError), and once it is durable they go
// on.
func TestWritesWaitForAnUnacknowledgedCommit(t *testing.T) {
	addr := startControlCluster(t)
	w, _ := startedWriter(t, addr, "w1", func(c *WriterConfig) { c.WriteTimeout = 300 * time.Millisecond })
	defer w.Close()
	ctx := context.Background()
	db := w.DB()
	if _, err := db.Writer.Exec("CREATE TABLE t(k)"); err != nil {
		t.Fatal(err)
	}
	limbo := w.Volume().VDL() + 1
	w.NoteUnacknowledged(limbo)
	start := time.Now()
	_, err := w.Writable(ctx)
	var pending *PendingCommitError
	if !errors.As(err, &pending) || pending.LSN != limbo {
		t.Fatalf("a write behind a commit that is not durable: %v", err)
	}
	if took := time.Since(start); took < 250*time.Millisecond || took > 10*time.Second {
		t.Fatalf("the write waited %s, want about the write timeout", took)
	}
	if _, err := w.Readable(); err != nil {
		t.Fatalf("a query behind a commit that is not durable: %v", err)
	}
	// The commit becomes durable (here: a later one covers its LSN).
	if _, err := db.Writer.Exec("INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if got, err := w.Writable(ctx); err != nil || got != db {
		t.Fatalf("a write once the commit is durable: %v", err)
	}
}
