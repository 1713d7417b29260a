package instance

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/control"
	"github.com/borealis-db/borealis/internal/redostream"
	"github.com/borealis-db/borealis/internal/replica"
	"github.com/borealis-db/borealis/internal/sqlvfs"
	"github.com/borealis-db/borealis/internal/storage"
	"github.com/borealis-db/borealis/internal/volume"
	"github.com/borealis-db/borealis/internal/wait"
)

func testLogger() *slog.Logger {
	if os.Getenv("INSTANCE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return lis
}

// startStorage starts six storage nodes in AZs a, a, b, b, c, c.
func startStorage(t *testing.T) []volume.Member {
	t.Helper()
	var members []volume.Member
	for i, az := range []string{"a", "a", "b", "b", "c", "c"} {
		lis := listen(t)
		id := fmt.Sprintf("s%d", i)
		n, err := storage.Open(storage.Config{ID: id, AZ: az, Dir: t.TempDir(), Logger: testLogger()})
		if err != nil {
			t.Fatal(err)
		}
		go n.Serve(lis)
		t.Cleanup(func() { n.Close() })
		members = append(members, volume.Member{NodeID: id, AZ: az, Addr: lis.Addr().String()})
	}
	return members
}

// startControl runs a control plane (embedded etcd, catalog, gRPC service)
// whose catalog lists the nodes as up.
func startControl(t *testing.T, members []volume.Member) pb.ControlClient {
	t.Helper()
	e, urls, err := control.StartEmbedded(t.TempDir(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cat, err := control.Open(ctx, urls, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cat.Close() })
	for _, m := range members {
		if err := cat.RegisterNode(ctx, control.Node{ID: m.NodeID, AZ: m.AZ, Addr: m.Addr, CapacityBytes: 1 << 30}); err != nil {
			t.Fatal(err)
		}
		if err := cat.Heartbeat(ctx, m.NodeID, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	lis := listen(t)
	gs := grpc.NewServer()
	pb.RegisterControlServer(gs, control.NewServer(cat, time.Hour, testLogger()))
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewControlClient(conn)
}

// writer is a writer instance made of its parts (what dbserver wires): a
// volume client placed by the catalog, its redo stream served over gRPC,
// a database on it, and its record in the catalog.
type writer struct {
	vol    *volume.Client
	stream *redostream.Server
	db     *sqlvfs.DB
	addr   string
	mu     sync.Mutex
	g      *grpc.Server
}

const volumeName = "db"

func startWriter(t *testing.T, ctl pb.ControlClient) *writer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	// Small PGs: the tables below span several, grown as the writer writes.
	if _, err := ctl.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: volumeName, PageSize: 4096, PgSizeBytes: 64 * 4096}); err != nil {
		t.Fatal(err)
	}
	cfg := volume.Config{Epoch: 1, WriteTimeout: 5 * time.Second, Logger: testLogger()}
	if err := volume.NewFromControl(ctl, volumeName).Configure(ctx, &cfg); err != nil {
		t.Fatal(err)
	}
	w := &writer{}
	w.stream = redostream.NewServer(redostream.ServerConfig{
		VolumeID: cfg.VolumeID, Epoch: cfg.Epoch, PageSize: cfg.PageSize, PagesPerPG: cfg.PagesPerPG,
		ReportTTL: 2 * time.Second, Logger: testLogger(),
	})
	cfg.Redo = w.stream
	vol, err := volume.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	w.vol = vol
	w.stream.Attach(vol)
	lis := listen(t)
	w.addr = lis.Addr().String()
	w.serve(lis)
	db, err := sqlvfs.OpenDB(vol, sqlvfs.Options{PageSize: cfg.PageSize, CacheMiB: 8})
	if err != nil {
		t.Fatal(err)
	}
	w.db = db
	t.Cleanup(func() {
		db.Close()
		w.stream.Close()
		w.mu.Lock()
		w.g.Stop()
		w.mu.Unlock()
		vol.Close()
	})
	if _, err := ctl.RegisterInstance(ctx, &pb.RegisterInstanceRequest{TtlMs: 60000, Info: &pb.InstanceInfo{
		Volume: volumeName, Id: "w1", Role: RoleWriter, Az: "a", SqlEndpoint: "w1.sql:80",
		ReplicationEndpoint: w.addr, Epoch: 1, State: "ready",
	}}); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *writer) serve(lis net.Listener) {
	g := grpc.NewServer()
	pb.RegisterReplicationServer(g, w.stream)
	go g.Serve(lis)
	w.mu.Lock()
	w.g = g
	w.mu.Unlock()
}

// restartStream breaks every subscription and serves the stream again on
// the same address.
func (w *writer) restartStream(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	w.g.Stop()
	w.mu.Unlock()
	var lis net.Listener
	wait.For(t, 5*time.Second, "listening again on "+w.addr, func() bool {
		var err error
		lis, err = net.Listen("tcp", w.addr)
		return err == nil
	})
	w.serve(lis)
}

func mustExec(t *testing.T, db *sql.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func count(t *testing.T, db *sql.DB, q string) int {
	t.Helper()
	var n int
	if err := db.QueryRow(q).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

func instanceRecord(t *testing.T, ctl pb.ControlClient, id string) *pb.InstanceInfo {
	t.Helper()
	resp, err := ctl.ListInstances(context.Background(), &pb.ListInstancesRequest{Volume: volumeName})
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range resp.Instances {
		if in.Id == id {
			return in
		}
	}
	return nil
}

func startTestReplica(t *testing.T, ctl pb.ControlClient) *Replica {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := StartReplica(ctx, ReplicaConfig{
		Volume: volumeName, Ctl: ctl, ID: "r1", AZ: "b", Endpoint: "r1.sql:80",
		Options: sqlvfs.Options{CacheMiB: 8}, LeaseTTL: time.Second, PromotionTier: 2, Logger: testLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// A replica started from the catalog finds the writer's stream, attaches,
// and applies every commit: after each, WaitApplied(the writer's VDL)
// returns and the replica's database shows it (read-your-writes), across
// PGs the writer grew the volume by. Its status and its catalog record tell
// where it stands; its read floor reaches the writer's min_read_point; Close
// deregisters it and ends its subscription.
func TestReplicaFollowsTheWriter(t *testing.T) {
	members := startStorage(t)
	ctl := startControl(t, members)
	w := startWriter(t, ctl)
	r := startTestReplica(t, ctl)
	wait.For(t, 10*time.Second, "the replica to attach", r.Ready)
	if in := instanceRecord(t, ctl, "r1"); in == nil || in.Role != RoleReplica || in.Az != "b" || in.SqlEndpoint != "r1.sql:80" || in.PromotionTier != 2 {
		t.Fatalf("the replica's catalog record: %v", in)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	mustExec(t, w.db.Writer, "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
	for i := 1; i <= 30; i++ {
		mustExec(t, w.db.Writer, "INSERT INTO t(k, v) VALUES(?, ?)", i, strings.Repeat("v", 50+i))
		lsn := w.vol.VDL()
		if err := r.WaitApplied(ctx, lsn); err != nil {
			t.Fatalf("WaitApplied(%d): %v", lsn, err)
		}
		if n := count(t, r.DB().Reader, "SELECT count(*) FROM t"); n != i {
			t.Fatalf("after the replica applied insert %d (LSN %d): %d rows", i, lsn, n)
		}
		if _, ok := r.AppliedAt(lsn); !ok {
			t.Fatalf("AppliedAt(%d) unknown after WaitApplied", lsn)
		}
	}
	// A table of a few hundred pages: the writer grows the volume by PGs
	// the replica has not seen yet.
	tx, err := w.db.Writer.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for i := 31; i <= 2000; i++ {
		if _, err := tx.Exec("INSERT INTO t(k, v) VALUES(?, ?)", i, strings.Repeat("w", 500)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	vdl := w.vol.VDL()
	if err := r.WaitApplied(ctx, vdl); err != nil {
		t.Fatal(err)
	}
	var n, size int
	if err := r.DB().Reader.QueryRow("SELECT count(*), sum(length(v)) FROM t").Scan(&n, &size); err != nil || n != 2000 {
		t.Fatalf("replica after the big insert: %d rows, %v", n, err)
	}
	var pages int
	if err := r.DB().Reader.QueryRow("PRAGMA page_count").Scan(&pages); err != nil || pages < 3*64 {
		t.Fatalf("%d pages, %v; want more than three 64-page PGs", pages, err)
	}
	var ok string
	if err := r.DB().Reader.QueryRow("PRAGMA integrity_check").Scan(&ok); err != nil || ok != "ok" {
		t.Fatalf("replica integrity_check: %q %v", ok, err)
	}

	st := r.Status()
	if st.State != replica.Streaming || st.Epoch != 1 || st.Applied != vdl || st.WriterVDL != vdl || st.LagLSN != 0 || st.Writer != "w1.sql:80" || st.Resyncs != 0 {
		t.Fatalf("status %+v; want streaming at epoch 1, applied %d, no lag, writer w1.sql:80", st, vdl)
	}
	if _, ok := r.AppliedAt(vdl + 1); ok {
		t.Fatalf("AppliedAt(%d) known above the applied VDL %d", vdl+1, vdl)
	}
	wait.For(t, 10*time.Second, "the catalog record to show the applied VDL", func() bool {
		in := instanceRecord(t, ctl, "r1")
		return in != nil && in.Vdl == vdl && in.State == "streaming" && in.Epoch == 1
	})

	// A read transaction on the replica pins its read point; the replica
	// reports it, and the writer's min_read_point stays at it while the
	// writer moves on.
	rtx, err := r.DB().Reader.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := rtx.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil || n != 2000 {
		t.Fatal(n, err)
	}
	pinned := r.Status().ReadFloor
	mustExec(t, w.db.Writer, "DELETE FROM t WHERE k > 1000")
	if err := r.WaitApplied(ctx, w.vol.VDL()); err != nil {
		t.Fatal(err)
	}
	if pinned != vdl || r.Status().ReadFloor != pinned {
		t.Fatalf("replica floor %d (then %d), want its pin at %d", pinned, r.Status().ReadFloor, vdl)
	}
	wait.For(t, 10*time.Second, "the writer's min_read_point to be the replica's pin", func() bool { return w.vol.MinReadPoint() == pinned })
	if err := rtx.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil || n != 2000 {
		t.Fatalf("the pinned transaction: %d rows, %v; want its 2000", n, err)
	}
	rtx.Rollback()
	if n := count(t, r.DB().Reader, "SELECT count(*) FROM t"); n != 1000 {
		t.Fatalf("after the delete: %d rows", n)
	}
	wait.For(t, 10*time.Second, "the writer's min_read_point to move on", func() bool { return w.vol.MinReadPoint() == w.vol.VDL() })

	subs := w.stream.Subscriptions()
	if len(subs) != 1 || subs[0].ID != "r1" {
		t.Fatalf("writer's subscriptions %+v", subs)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if in := instanceRecord(t, ctl, "r1"); in != nil {
		t.Fatalf("the closed replica is still in the catalog: %v", in)
	}
	wait.For(t, 10*time.Second, "the writer to drop the subscription", func() bool { return len(w.stream.Subscriptions()) == 0 })
}

// A broken stream makes the replica stale; it subscribes again, resumes
// where it stood (no resync), and goes on applying the writer's commits.
func TestReplicaResumesAfterTheStreamBreaks(t *testing.T) {
	members := startStorage(t)
	ctl := startControl(t, members)
	w := startWriter(t, ctl)
	r := startTestReplica(t, ctl)
	wait.For(t, 10*time.Second, "the replica to attach", r.Ready)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	mustExec(t, w.db.Writer, "CREATE TABLE t(k INTEGER PRIMARY KEY)")
	for round := range 3 {
		for i := range 20 {
			mustExec(t, w.db.Writer, "INSERT INTO t(k) VALUES(?)", round*20+i+1)
		}
		if err := r.WaitApplied(ctx, w.vol.VDL()); err != nil {
			t.Fatal(err)
		}
		if n := count(t, r.DB().Reader, "SELECT count(*) FROM t"); n != (round+1)*20 {
			t.Fatalf("round %d: %d rows", round, n)
		}
		r.mu.Lock()
		attached := r.streamAt
		r.mu.Unlock()
		w.restartStream(t)
		// Commits made while the replica reconnects reach it after.
		mustExec(t, w.db.Writer, "INSERT INTO t(k) VALUES(?)", 1000+round)
		mustExec(t, w.db.Writer, "DELETE FROM t WHERE k = ?", 1000+round)
		wait.For(t, 10*time.Second, "the replica to attach again", func() bool {
			r.mu.Lock()
			defer r.mu.Unlock()
			return r.streamAt.After(attached)
		})
	}
	if err := r.WaitApplied(ctx, w.vol.VDL()); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 10*time.Second, "the replica to stream again", func() bool { return r.Status().State == replica.Streaming })
	if st := r.Status(); st.Resyncs != 0 || st.Applied != w.vol.VDL() {
		t.Fatalf("status %+v after the stream broke three times; want no resync, applied %d", st, w.vol.VDL())
	}
	if n := count(t, r.DB().Reader, "SELECT count(*) FROM t"); n != 60 {
		t.Fatalf("%d rows, want 60", n)
	}
}

// An MTR larger than one stream message goes out in parts; the replica
// puts them together and applies the whole MTR to the pages it caches.
func TestReplicaAppliesALargeMTRToItsCache(t *testing.T) {
	members := startStorage(t)
	ctl := startControl(t, members)
	w := startWriter(t, ctl)
	r := startTestReplica(t, ctl)
	wait.For(t, 10*time.Second, "the replica to attach", r.Ready)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	mustExec(t, w.db.Writer, "CREATE TABLE b(k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
	// About 3 MiB of overflow pages.
	blob := func(c byte) []byte {
		b := make([]byte, 3<<20)
		for i := range b {
			b[i] = c + byte(i%7)
		}
		return b
	}
	mustExec(t, w.db.Writer, "INSERT INTO b(k, v) VALUES(1, ?)", blob('a'))
	if err := r.WaitApplied(ctx, w.vol.VDL()); err != nil {
		t.Fatal(err)
	}
	// The replica reads the blob: its pages are cached from now on.
	var got []byte
	if err := r.DB().Reader.QueryRow("SELECT v FROM b WHERE k = 1").Scan(&got); err != nil || !bytes.Equal(got, blob('a')) {
		t.Fatalf("the replica's first read: err %v, %d bytes equal=%v", err, len(got), bytes.Equal(got, blob('a')))
	}
	reads := r.DB().Stats().VolumeReads
	// Rewritten in place: every overflow page changes, in one MTR of
	// diffs against the pages the replica caches.
	mustExec(t, w.db.Writer, "UPDATE b SET v = ? WHERE k = 1", blob('b'))
	if err := r.WaitApplied(ctx, w.vol.VDL()); err != nil {
		t.Fatal(err)
	}
	if err := r.DB().Reader.QueryRow("SELECT v FROM b WHERE k = 1").Scan(&got); err != nil || !bytes.Equal(got, blob('b')) {
		t.Fatalf("after the large MTR: err %v, %d bytes equal=%v", err, len(got), bytes.Equal(got, blob('b')))
	}
	if more := r.DB().Stats().VolumeReads - reads; more > 16 {
		t.Fatalf("the replica read %d pages from storage after the large MTR; its cached pages should have been updated by it", more)
	}
}
