package instance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/control"
	"github.com/borealis-db/borealis/internal/storage"
	"github.com/borealis-db/borealis/internal/wait"
)

// startControlCluster runs six in-process storage nodes (two per AZ) and a
// control plane (embedded etcd, catalog, gRPC service) that lists them as
// up, with a volume named "main". It returns the control plane's address.
func startControlCluster(t *testing.T) string {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
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
	for i, az := range []string{"a", "a", "b", "b", "c", "c"} {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprintf("s%d", i)
		n, err := storage.Open(storage.Config{ID: id, AZ: az, Dir: t.TempDir(), Logger: logger})
		if err != nil {
			t.Fatal(err)
		}
		go n.Serve(lis)
		t.Cleanup(func() { n.Close() })
		if err := cat.RegisterNode(ctx, control.Node{ID: id, AZ: az, Addr: lis.Addr().String(), CapacityBytes: 1 << 30}); err != nil {
			t.Fatal(err)
		}
		if err := cat.Heartbeat(ctx, id, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := control.NewServer(cat, 0, logger)
	gs := grpc.NewServer()
	pb.RegisterControlServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(func() { srv.Stop(); gs.Stop() })
	if _, err := srv.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "main", PageSize: 4096, PgSizeBytes: 16 * 4096}); err != nil {
		t.Fatal(err)
	}
	return lis.Addr().String()
}

// hookedControl is the control plane as a writer sees it, with calls a
// test replaces (nil: passed on).
type hookedControl struct {
	pb.ControlClient
	getVolume func(ctx context.Context, req *pb.GetVolumeRequest, opts ...grpc.CallOption) (*pb.VolumeInfo, error)
	renew     func(ctx context.Context, req *pb.RenewWriterRequest, opts ...grpc.CallOption) (*pb.RenewWriterResponse, error)
	release   func(ctx context.Context, req *pb.ReleaseWriterRequest, opts ...grpc.CallOption) (*pb.ReleaseWriterResponse, error)
	// describe: AcquireWriter's answer keeps the volume's description
	// (else the writer reads it with GetVolume).
	describe atomic.Bool
}

func (h *hookedControl) AcquireWriter(ctx context.Context, req *pb.AcquireWriterRequest, opts ...grpc.CallOption) (*pb.AcquireWriterResponse, error) {
	resp, err := h.ControlClient.AcquireWriter(ctx, req, opts...)
	if err == nil && !h.describe.Load() {
		resp.Volume = nil
	}
	return resp, err
}

func (h *hookedControl) ReleaseWriter(ctx context.Context, req *pb.ReleaseWriterRequest, opts ...grpc.CallOption) (*pb.ReleaseWriterResponse, error) {
	if h.release != nil {
		return h.release(ctx, req, opts...)
	}
	return h.ControlClient.ReleaseWriter(ctx, req, opts...)
}

func (h *hookedControl) GetVolume(ctx context.Context, req *pb.GetVolumeRequest, opts ...grpc.CallOption) (*pb.VolumeInfo, error) {
	if h.getVolume != nil {
		return h.getVolume(ctx, req, opts...)
	}
	return h.ControlClient.GetVolume(ctx, req, opts...)
}

func (h *hookedControl) RenewWriter(ctx context.Context, req *pb.RenewWriterRequest, opts ...grpc.CallOption) (*pb.RenewWriterResponse, error) {
	if h.renew != nil {
		return h.renew(ctx, req, opts...)
	}
	return h.ControlClient.RenewWriter(ctx, req, opts...)
}

// hookedWriter is a writer of volume "main" whose control client h wraps;
// set h's hooks and the writer's before Start or Run.
func hookedWriter(t *testing.T, control string, ttl time.Duration) (*Writer, *hookedControl) {
	t.Helper()
	return hookedWriterOf(t, control, WriterConfig{Volume: "main", ID: "w1", LeaseTTL: ttl})
}

// hookedWriterOf is hookedWriter with cfg, whose Ctl, Control and Logger
// it sets. The connection to the control plane is closed when the test
// ends.
func hookedWriterOf(t *testing.T, control string, cfg WriterConfig) (*Writer, *hookedControl) {
	t.Helper()
	conn, err := grpc.NewClient(control, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	h := &hookedControl{ControlClient: pb.NewControlClient(conn)}
	cfg.Ctl, cfg.Control = h, control
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	w, err := NewWriter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return w, h
}

// waitClosed waits (a while, not forever) for c to be closed; the test
// fails if it is not. It may run on any goroutine.
func waitClosed(t *testing.T, c <-chan struct{}, what string) bool {
	t.Helper()
	select {
	case <-c:
		return true
	case <-time.After(30 * time.Second):
		t.Errorf("gave up waiting for %s", what)
		return false
	}
}

// TestLeaseLostAtTheEndOfRecovery: the control plane stops answering
// renewals near the end of recovery, for longer than the lease's TTL, so
// that keepLease gives the lease up after recovery has succeeded but before
// the database opens. Start must fail and the instance must not serve: it
// would serve with no renewals at all, and once another writer took the
// lease and fenced it, its reads would be stale while it still thought
// itself the writer.
func TestLeaseLostAtTheEndOfRecovery(t *testing.T) {
	addr := startControlCluster(t)
	w, h := hookedWriter(t, addr, 600*time.Millisecond)
	defer w.Close()
	var unreachable atomic.Bool
	h.renew = func(ctx context.Context, req *pb.RenewWriterRequest, opts ...grpc.CallOption) (*pb.RenewWriterResponse, error) {
		if unreachable.Load() {
			return nil, status.Error(codes.Unavailable, "the control plane is unreachable (test)")
		}
		return h.ControlClient.RenewWriter(ctx, req, opts...)
	}
	var recovered atomic.Bool
	w.hooks.recovered = func(lost <-chan struct{}) {
		recovered.Store(true)
		unreachable.Store(true)
		waitClosed(t, lost, "keepLease to give the lease up")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := w.Start(ctx)
	if !recovered.Load() {
		t.Fatalf("recovery did not succeed: %v", err)
	}
	if err == nil {
		t.Fatalf("Start succeeded with a lost lease: ready %v, status %q", w.Ready(), w.Status())
	}
	t.Logf("Start: %v", err)
	if !strings.Contains(err.Error(), "lost the writer lease") {
		t.Fatalf("Start failed for another reason: %v", err)
	}
	if w.Ready() || w.DB() != nil || w.Volume() != nil {
		t.Fatalf("the writer serves without its lease: status %q", w.Status())
	}
	if _, err := w.Readable(); !errors.As(err, new(*NotReadyError)) {
		t.Fatalf("a query of a writer without its lease: %v", err)
	}
	if _, err := w.Writable(ctx); !errors.As(err, new(*NotReadyError)) {
		t.Fatalf("a write to a writer without its lease: %v", err)
	}
}

// TestStaleRenewalAfterARetriedStart: a renewal of attempt 1's lease is in
// flight when attempt 1 fails; Run releases that lease and starts attempt
// 2, which serves; then the renewal returns NotFound. The instance still
// holds attempt 2's valid lease and must stay ready: the old keepLease
// must not mark it not ready (for ever, as nothing would mark it ready
// again), nor shut anything down.
func TestStaleRenewalAfterARetriedStart(t *testing.T) {
	addr := startControlCluster(t)
	w, h := hookedWriter(t, addr, 1500*time.Millisecond)
	var firstLease atomic.Int64
	renewing := make(chan struct{})  // attempt 1's renewal is in flight
	answer := make(chan struct{})    // it may return now
	oldDone := make(chan struct{})   // attempt 1's keepLease returned
	var oldNotFound atomic.Bool      // ... after its renewal found the lease gone
	var renewOnce, getOnce sync.Once // the first calls are attempt 1's
	h.renew = func(ctx context.Context, req *pb.RenewWriterRequest, opts ...grpc.CallOption) (*pb.RenewWriterResponse, error) {
		first := false
		renewOnce.Do(func() { first = true })
		if !first {
			return h.ControlClient.RenewWriter(ctx, req, opts...)
		}
		firstLease.Store(req.Lease)
		close(renewing)
		waitClosed(t, answer, "attempt 2 to serve")
		// The answer is late, not its question: the renewal reaches the
		// control plane after Run released the lease.
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := h.ControlClient.RenewWriter(rctx, req, opts...)
		oldNotFound.Store(leaseGone(err))
		return resp, err
	}
	h.getVolume = func(ctx context.Context, req *pb.GetVolumeRequest, opts ...grpc.CallOption) (*pb.VolumeInfo, error) {
		first := false
		getOnce.Do(func() { first = true })
		if first {
			// Attempt 1 fails, with its renewal in flight.
			waitClosed(t, renewing, "attempt 1's first renewal")
			return nil, status.Error(codes.Unavailable, "the control plane is unreachable (test)")
		}
		return h.ControlClient.GetVolume(ctx, req, opts...)
	}
	w.hooks.keeperDone = func(lease int64) {
		if lease == firstLease.Load() {
			close(oldDone)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-ran; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	}()
	wait.For(t, 30*time.Second, "attempt 2 to serve", func() bool { return w.Ready() })
	epoch := w.Epoch()
	close(answer)
	if !waitClosed(t, oldDone, "attempt 1's keepLease to return") {
		t.FailNow()
	}
	if !oldNotFound.Load() {
		t.Fatal("attempt 1's late renewal did not find its lease gone; the test tests nothing")
	}
	if !w.Ready() || w.Epoch() != epoch || w.Status() != "ready" {
		t.Fatalf("after attempt 1's late renewal failed, attempt 2 (epoch %d) no longer serves: ready %v, epoch %d, status %q", epoch, w.Ready(), w.Epoch(), w.Status())
	}
	db, err := w.Readable()
	if err != nil {
		t.Fatalf("a query after attempt 1's late renewal: %v", err)
	}
	if _, err := db.Reader.Exec("SELECT 1"); err != nil {
		t.Fatal(err)
	}
}

// leaseGone: a renewal's error says the lease no longer exists.
func leaseGone(err error) bool {
	c := status.Code(err)
	return c == codes.NotFound || c == codes.FailedPrecondition
}

// TestRevokedLeaseStopsTheWriter: when the control plane says the lease is
// gone (it answers FailedPrecondition for an expired or released lease),
// the writer stops at once, for that reason, rather than keep serving until
// renewals have failed for a whole TTL.
func TestRevokedLeaseStopsTheWriter(t *testing.T) {
	addr := startControlCluster(t)
	w, h := hookedWriter(t, addr, 1500*time.Millisecond)
	defer w.Close()
	var renewErr atomic.Value
	h.renew = func(ctx context.Context, req *pb.RenewWriterRequest, opts ...grpc.CallOption) (*pb.RenewWriterResponse, error) {
		resp, err := h.ControlClient.RenewWriter(ctx, req, opts...)
		if err != nil {
			renewErr.Store(err)
		}
		return resp, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	lease := w.lease.Lease
	w.mu.Unlock()
	if _, err := h.ControlClient.ReleaseWriter(ctx, &pb.ReleaseWriterRequest{Lease: lease}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 30*time.Second, "the writer to stop", func() bool { return !w.Ready() })
	wait.For(t, 30*time.Second, "the writer's status to say why it stopped", func() bool {
		return strings.HasPrefix(w.Status(), "stopped: ")
	})
	err, _ := renewErr.Load().(error)
	if !leaseGone(err) {
		t.Fatalf("the renewal of a released lease: %v", err)
	}
	if st := w.Status(); st != "stopped: the writer lease expired" {
		t.Fatalf("status %q after the control plane said the lease was gone (%v)", st, err)
	}
}
