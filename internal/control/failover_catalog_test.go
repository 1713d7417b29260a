package control

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/wait"
)

// The instances' records outlive every test here (etcd does not expire a
// lease early), so that nothing but what a test does changes the view.
const foInstanceTTL = 60 * time.Second

// failoverSetup is a catalog with six nodes and volume "v", served over
// gRPC on a loopback port.
func failoverSetup(t *testing.T) (*Catalog, Volume, pb.ControlClient) {
	t.Helper()
	cat, cli := instanceServer(t, "v")
	vol, err := cat.Volume(ctxT(t), "v")
	if err != nil {
		t.Fatal(err)
	}
	return cat, vol, cli
}

// foRegister registers an instance of volume v and returns its lease.
func foRegister(t *testing.T, cat *Catalog, id, role, az string, epoch uint64, state string, tier uint32) clientv3.LeaseID {
	t.Helper()
	rec, _, err := cat.RegisterInstance(ctxT(t), Instance{Volume: "v", ID: id, Role: role, AZ: az, SQLEndpoint: "127.0.0.1:8" + id,
		Epoch: epoch, VDL: 100, State: state, PromotionTier: tier}, foInstanceTTL)
	if err != nil {
		t.Fatalf("register %s as %s: %v", id, role, err)
	}
	return rec.Lease
}

// serving makes id the serving writer of v: it takes the lease and
// registers as the writer, ready, at its epoch.
func serving(t *testing.T, cat *Catalog, id string) (clientv3.LeaseID, uint64) {
	t.Helper()
	lease, epoch, err := cat.AcquireWriter(ctxT(t), "v", id, foInstanceTTL)
	if err != nil {
		t.Fatalf("%s acquires the writer lease: %v", id, err)
	}
	foRegister(t, cat, id, RoleWriter, "a", epoch, "ready", 0)
	return lease, epoch
}

// TestFailoverAcquireWriterOnlyTarget: while a failover promotes r1, only
// r1 may take the writer lease (a restarted old writer, or another
// replica, is refused with FailedPrecondition through the Server), also
// once r1 is late and before the leader chose again; once the failover is
// over, anyone may.
func TestFailoverAcquireWriterOnlyTarget(t *testing.T) {
	t.Parallel()
	cat, vol, cli := failoverSetup(t)
	ctx := ctxT(t)
	l, _, err := cat.AcquireWriter(ctx, "v", "db-1", foInstanceTTL)
	if err != nil {
		t.Fatal(err)
	}
	if err := cat.ReleaseWriter(ctx, l); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UnixMilli()
	rec := &Failover{Version: RecordVersion, VolumeID: vol.ID, Round: 1, Kind: FailoverUnplanned, From: "db-1", FromEpoch: 1,
		State: FailoverPromoting, Target: "r1", DetectedMs: now, DecidedMs: now, DeadlineMs: now + time.Hour.Milliseconds()}
	if ok, err := cat.putFailover(ctx, rec, 0); err != nil || !ok {
		t.Fatalf("store the failover: %v %v", ok, err)
	}

	for _, holder := range []string{"db-1", "r2"} {
		_, _, err := cat.AcquireWriter(ctx, "v", holder, foInstanceTTL)
		if !errors.Is(err, ErrFailingOver) || !strings.Contains(err.Error(), "promotes r1") {
			t.Fatalf("%s acquires while r1 is promoted: %v, want ErrFailingOver naming r1", holder, err)
		}
		_, err = cli.AcquireWriter(ctx, &pb.AcquireWriterRequest{Volume: "v", Holder: holder, TtlMs: 10000})
		wantCode(t, err, codes.FailedPrecondition, holder+" acquires through the Server while r1 is promoted")
	}
	if w, err := cat.Writer(ctx, "v"); err != nil || w != nil {
		t.Fatalf("a refused acquire left a writer: %+v %v", w, err)
	}

	resp, err := cli.AcquireWriter(ctx, &pb.AcquireWriterRequest{Volume: "v", Holder: "r1", TtlMs: 10000})
	if err != nil || resp.Epoch != 2 {
		t.Fatalf("the target acquires: %v %v, want epoch 2", resp, err)
	}
	if err := cat.ReleaseWriter(ctx, clientv3.LeaseID(resp.Lease)); err != nil {
		t.Fatal(err)
	}

	// r1 is late: until the leader looks again nobody else takes over,
	// and r1 still may.
	if _, err := cat.updateFailover(ctx, vol.ID, func(f *Failover) (bool, error) {
		f.DeadlineMs = time.Now().Add(-time.Second).UnixMilli()
		return true, nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := cat.AcquireWriter(ctx, "v", "db-1", foInstanceTTL); !errors.Is(err, ErrFailingOver) || !strings.Contains(err.Error(), "choosing a new target") {
		t.Fatalf("db-1 acquires past r1's deadline: %v, want ErrFailingOver saying a new target is being chosen", err)
	}
	l, e, err := cat.AcquireWriter(ctx, "v", "r1", foInstanceTTL)
	if err != nil || e != 3 {
		t.Fatalf("the late target acquires: epoch %d, %v; want 3", e, err)
	}
	if err := cat.ReleaseWriter(ctx, l); err != nil {
		t.Fatal(err)
	}

	// Over: anyone.
	if _, err := cat.updateFailover(ctx, vol.ID, func(f *Failover) (bool, error) {
		f.State, f.DoneMs = FailoverDone, time.Now().UnixMilli()
		return true, nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, e, err := cat.AcquireWriter(ctx, "v", "db-1", foInstanceTTL); err != nil || e != 4 {
		t.Fatalf("db-1 acquires after the failover: epoch %d, %v; want 4", e, err)
	}
}

// TestSwitchoverRefusals: a switchover needs a serving writer, a live
// replica to go to (named, or the first in promotion order) that is not
// the writer itself, and no other failover under way; each refusal is
// FailedPrecondition through the Server (an unknown volume NotFound). The
// one that starts is a planned round, draining, with the drain's deadline.
func TestSwitchoverRefusals(t *testing.T) {
	t.Parallel()
	cat, vol, cli := failoverSetup(t)
	ctx := ctxT(t)
	sw := func(to string) (*pb.FailoverInfo, error) {
		return cli.Switchover(ctx, &pb.SwitchoverRequest{Volume: "v", To: to})
	}

	_, err := cli.Switchover(ctx, &pb.SwitchoverRequest{Volume: "nope"})
	wantCode(t, err, codes.NotFound, "switchover of an unknown volume")
	_, err = sw("")
	wantCode(t, err, codes.FailedPrecondition, "switchover with no writer")

	// The lease is held but its holder has not registered as ready.
	_, epoch, err := cat.AcquireWriter(ctx, "v", "db-1", foInstanceTTL)
	if err != nil {
		t.Fatal(err)
	}
	foRegister(t, cat, "db-1", RoleWriter, "a", epoch, "recovering", 0)
	_, err = sw("")
	wantCode(t, err, codes.FailedPrecondition, "switchover from a writer that does not serve yet")

	foRegister(t, cat, "db-1", RoleWriter, "a", epoch, "ready", 0)
	_, err = sw("")
	wantCode(t, err, codes.FailedPrecondition, "switchover with no replica")

	foRegister(t, cat, "r2", RoleReplica, "c", epoch, "streaming", 1)
	foRegister(t, cat, "r1", RoleReplica, "b", epoch, "streaming", 0)
	_, err = sw("r9")
	wantCode(t, err, codes.FailedPrecondition, "switchover to an unknown replica")
	_, err = sw("db-1")
	wantCode(t, err, codes.FailedPrecondition, "switchover to the writer itself")
	if f, err := cat.Failover(ctx, "v"); err != nil || f != nil {
		t.Fatalf("a refused switchover stored a record: %+v %v", f, err)
	}

	got, err := sw("")
	if err != nil {
		t.Fatal(err)
	}
	if got.Round != 1 || got.Kind != FailoverPlanned || got.State != FailoverDraining || got.From != "db-1" || got.FromEpoch != epoch ||
		got.Target != "r1" || got.DeadlineUnixMs-got.DetectedUnixMs != DefaultFailoverTiming.Drain.Milliseconds() {
		t.Fatalf("switchover to the first in promotion order: %v; want round 1, planned, draining from db-1@%d to r1, deadline a drain away", got, epoch)
	}
	if f, err := cat.Failover(ctx, "v"); err != nil || f == nil || f.VolumeID != vol.ID || f.State != FailoverDraining || f.Target != "r1" {
		t.Fatalf("the stored record: %+v %v", f, err)
	}

	_, err = sw("r2")
	wantCode(t, err, codes.FailedPrecondition, "switchover during another")
	if f, _ := cat.Failover(ctx, "v"); f.Round != 1 || f.Target != "r1" {
		t.Fatalf("a refused switchover changed the record under way: %+v", f)
	}
}

// TestReportFailover: the instances' reports through the Server. A report
// of a round that is not the volume's last is NotFound; an unknown state
// InvalidArgument. The old writer's drain and hand-over, and the target's
// waiting, are recorded; a failure reported by anyone but the target
// changes nothing, and the target's moves the round on (the leader then
// chooses the next replica, keeping the reported cause); done fills the
// steps.
func TestReportFailover(t *testing.T) {
	t.Parallel()
	cat, vol, cli := failoverSetup(t)
	ctx := ctxT(t)
	report := func(r *pb.ReportFailoverRequest) (*pb.FailoverInfo, error) {
		r.Volume = "v"
		return cli.ReportFailover(ctx, r)
	}

	_, err := report(&pb.ReportFailoverRequest{Round: 0, Instance: "r1", State: ReportDone})
	wantCode(t, err, codes.NotFound, "a report with no failover ever")

	wl, epoch := serving(t, cat, "db-1")
	foRegister(t, cat, "r1", RoleReplica, "b", epoch, "streaming", 0)
	foRegister(t, cat, "r2", RoleReplica, "c", epoch, "streaming", 1)
	if _, err := cli.Switchover(ctx, &pb.SwitchoverRequest{Volume: "v", To: "r1"}); err != nil {
		t.Fatal(err)
	}

	_, err = report(&pb.ReportFailoverRequest{Round: 2, Instance: "r1", State: ReportDone})
	wantCode(t, err, codes.NotFound, "a report of a round not yet begun")
	_, err = report(&pb.ReportFailoverRequest{Round: 1, Instance: "r1", State: "promoted"})
	wantCode(t, err, codes.InvalidArgument, "a report of an unknown state")

	got, err := report(&pb.ReportFailoverRequest{Round: 1, Instance: "db-1", State: ReportDraining, Why: "finishing 2 transactions"})
	if err != nil || got.Why != "finishing 2 transactions" || got.State != FailoverDraining {
		t.Fatalf("draining: %v %v", got, err)
	}
	got, err = report(&pb.ReportFailoverRequest{Round: 1, Instance: "db-1", State: ReportHandedOver, HandoverVdl: 500, DrainMs: 40})
	if err != nil || got.HandoverVdl != 500 || got.DrainMs != 40 || got.Why != "" {
		t.Fatalf("handed over: %v %v; want the VDL and drain, and no why", got, err)
	}
	if err := cat.ReleaseWriter(ctx, wl); err != nil {
		t.Fatal(err)
	}
	got, err = report(&pb.ReportFailoverRequest{Round: 1, Instance: "r1", State: ReportWaiting, Why: "waiting for a write quorum of PG 0"})
	if err != nil || got.Why != "waiting for a write quorum of PG 0" {
		t.Fatalf("waiting: %v %v", got, err)
	}

	got, err = report(&pb.ReportFailoverRequest{Round: 1, Instance: "r2", State: ReportFailed, Why: "not the target"})
	if err != nil || got.Target != "r1" || len(got.Tried) != 0 || got.Why != "waiting for a write quorum of PG 0" {
		t.Fatalf("a failure reported by another than the target: %v %v; want the record unchanged", got, err)
	}
	got, err = report(&pb.ReportFailoverRequest{Round: 1, Instance: "r1", State: ReportFailed, Why: "recovery: no write quorum"})
	if err != nil || got.State != FailoverPromoting || got.Target != "" || !slices.Equal(got.Tried, []string{"r1"}) ||
		got.Why != "r1 could not promote: recovery: no write quorum" || got.DeadlineUnixMs != 0 {
		t.Fatalf("the target's failure: %v %v; want promoting without a target, r1 tried, and why", got, err)
	}

	// The leader's next look chooses r2 and keeps the cause.
	nodes, err := cat.NodeStates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	next, err := cat.updateFailover(ctx, vol.ID, func(f *Failover) (bool, error) {
		v, err := cat.failoverView(ctx, vol, "", nodes)
		if err != nil {
			return false, err
		}
		d := DecideFailover(f, v, DefaultFailoverTiming)
		if d == nil {
			return false, errors.New("no decision after the target failed")
		}
		*f = *d
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if next.State != FailoverPromoting || next.Target != "r2" || !slices.Equal(next.Tried, []string{"r1"}) ||
		next.Why != "r1 could not promote: recovery: no write quorum" || next.DeadlineMs == 0 {
		t.Fatalf("the decision after r1 failed: %+v; want r2 promoted with a deadline, r1 tried, and r1's cause kept", next)
	}

	// A done from an instance this round does not promote changes nothing.
	stray, err := report(&pb.ReportFailoverRequest{Round: 1, Instance: "r1", State: ReportDone, Epoch: epoch + 1})
	if err != nil || stray.State != FailoverPromoting || stray.Target != "r2" {
		t.Fatalf("done from r1 while r2 is promoted: %v %v; want the record unchanged", stray, err)
	}
	got, err = report(&pb.ReportFailoverRequest{Round: 1, Instance: "r2", State: ReportDone, Epoch: epoch + 1,
		LeaseMs: 5, EpochMs: 6, RecoveryMs: 70, OpenMs: 8, Vdl: 500, Warm: true})
	if err != nil || got.State != FailoverDone || got.Target != "r2" || got.Epoch != epoch+1 || got.LeaseMs != 5 || got.EpochMs != 6 ||
		got.RecoveryMs != 70 || got.OpenMs != 8 || got.Vdl != 500 || !got.Warm || got.Why != "" || got.DoneUnixMs < got.DetectedUnixMs ||
		got.HandoverVdl != 500 || got.DrainMs != 40 {
		t.Fatalf("done: %v %v; want the steps filled, and the hand-over kept", got, err)
	}
	again, err := report(&pb.ReportFailoverRequest{Round: 1, Instance: "r2", State: ReportWaiting, Why: "late"})
	if err != nil || again.Why != "" || again.DoneUnixMs != got.DoneUnixMs {
		t.Fatalf("a late waiting report after done: %v %v; want the record unchanged", again, err)
	}
}

// TestWatchWriter: the writer state over a real gRPC stream. The first
// message is the state now; the lease taken, the holder's registration
// changing its state, a failover record, and the lease released each
// bring one; renewals of the writer's registration that change only its
// VDL and time, and a replica's registration, bring none (the next message
// is the next real change).
func TestWatchWriter(t *testing.T) {
	t.Parallel()
	cat, vol, cli := failoverSetup(t)
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()

	bad, err := cli.WatchWriter(ctx, &pb.WatchWriterRequest{Volume: "nope"})
	if err == nil {
		_, err = bad.Recv()
	}
	wantCode(t, err, codes.NotFound, "watch an unknown volume")

	stream, err := cli.WatchWriter(ctx, &pb.WatchWriterRequest{Volume: "v"})
	if err != nil {
		t.Fatal(err)
	}
	msgs := make(chan *pb.WriterState, 100)
	go func() {
		defer close(msgs)
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			msgs <- m
		}
	}()
	next := func(what string) *pb.WriterState {
		t.Helper()
		var m *pb.WriterState
		ok := true
		wait.For(t, 10*time.Second, what, func() bool {
			select {
			case m, ok = <-msgs:
				return true
			default:
				return false
			}
		})
		if !ok {
			t.Fatalf("the stream ended waiting for %s", what)
		}
		return m
	}

	m := next("the first state")
	if m.Volume != "v" || m.VolumeId != vol.ID || m.Holder != "" || m.Writer != nil || m.Failover != nil || m.Revision == 0 {
		t.Fatalf("the first state: %v; want volume v, no holder, no failover", m)
	}

	wl, epoch, err := cat.AcquireWriter(ctxT(t), "v", "db-1", foInstanceTTL)
	if err != nil {
		t.Fatal(err)
	}
	m = next("the lease taken")
	if m.Holder != "db-1" || m.Epoch != epoch || m.TtlMs != uint32(foInstanceTTL.Milliseconds()) || m.AcquiredUnixMs == 0 || m.Writer != nil {
		t.Fatalf("after the lease was taken: %v", m)
	}

	il := foRegister(t, cat, "db-1", RoleWriter, "a", epoch, "recovering", 0)
	m = next("the writer's registration")
	if m.Writer == nil || m.Writer.Id != "db-1" || m.Writer.State != "recovering" {
		t.Fatalf("after the writer registered: %v", m)
	}

	// Renewals that move only the VDL, read point and time; and a replica
	// registering. Then a real change: the writer serves.
	for i := range 5 {
		in := Instance{Volume: "v", ID: "db-1", Role: RoleWriter, AZ: "a", SQLEndpoint: "127.0.0.1:8db-1", Epoch: epoch,
			VDL: 101 + uint64(i), ReadPoint: 101 + uint64(i), State: "recovering", UpdatedUnixMs: time.Now().UnixMilli()}
		if err := cat.RenewInstance(ctxT(t), il, &in); err != nil {
			t.Fatal(err)
		}
	}
	foRegister(t, cat, "r1", RoleReplica, "b", epoch, "streaming", 0)
	in := Instance{Volume: "v", ID: "db-1", Role: RoleWriter, AZ: "a", SQLEndpoint: "127.0.0.1:8db-1", Epoch: epoch, VDL: 106, State: "ready"}
	if err := cat.RenewInstance(ctxT(t), il, &in); err != nil {
		t.Fatal(err)
	}
	m = next("the writer ready")
	if m.Writer == nil || m.Writer.State != "ready" {
		t.Fatalf("the message after renewals: %v; want the writer ready (renewals that change only the VDL and time send nothing)", m)
	}

	if _, err := cli.Switchover(ctxT(t), &pb.SwitchoverRequest{Volume: "v", To: "r1"}); err != nil {
		t.Fatal(err)
	}
	m = next("the failover record")
	if m.Failover == nil || m.Failover.State != FailoverDraining || m.Failover.Target != "r1" || m.Holder != "db-1" {
		t.Fatalf("after the switchover: %v", m)
	}

	if err := cat.ReleaseWriter(ctxT(t), wl); err != nil {
		t.Fatal(err)
	}
	m = next("the lease released")
	if m.Holder != "" || m.Writer != nil || m.Failover == nil {
		t.Fatalf("after the lease was released: %v; want no holder, the failover kept", m)
	}
}

// TestFailoverEndToEnd runs the leader's loop (runFailovers) in process: a
// writer's 1 s lease lapses (it stops renewing), the loop promotes the one
// replica, refuses the old writer the lease meanwhile, and once the
// replica holds the lease and registers as the writer, ready, the round
// is done.
func TestFailoverEndToEnd(t *testing.T) {
	t.Parallel()
	cat, _, _ := failoverSetup(t)
	ctx := ctxT(t)
	lctx, stop := context.WithCancel(ctx)
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		runFailovers(lctx, cat, DefaultFailoverTiming, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	}()
	t.Cleanup(func() { stop(); <-loopDone })

	foRegister(t, cat, "r1", RoleReplica, "b", 0, "streaming", 1)
	_, epoch, err := cat.AcquireWriter(ctx, "v", "db-1", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	foRegister(t, cat, "db-1", RoleWriter, "a", epoch, "ready", 0)

	var f *Failover
	wait.For(t, 20*time.Second, "the failover promoting r1", func() bool {
		f, err = cat.Failover(ctx, "v")
		return err == nil && f != nil && f.State == FailoverPromoting && f.Target == "r1"
	})
	// From is db-1 if the loop saw it holding the lease (it looks on every
	// change of the lease), "" otherwise; either way the round is right.
	if f.Round != 1 || f.Kind != FailoverUnplanned || f.FromEpoch != epoch || (f.From != "db-1" && f.From != "") || f.DeadlineMs == 0 {
		t.Fatalf("the failover: %+v", f)
	}
	if _, _, err := cat.AcquireWriter(ctx, "v", "db-1", foInstanceTTL); !errors.Is(err, ErrFailingOver) {
		t.Fatalf("the old writer, restarted, acquires: %v; want ErrFailingOver", err)
	}

	_, e2, err := cat.AcquireWriter(ctx, "v", "r1", foInstanceTTL)
	if err != nil || e2 != epoch+1 {
		t.Fatalf("the target acquires: epoch %d, %v; want %d", e2, err, epoch+1)
	}
	// Its registration as the writer replaces the replica's.
	foRegister(t, cat, "r1", RoleWriter, "b", e2, "ready", 1)
	wait.For(t, 20*time.Second, "the failover done", func() bool {
		f, err = cat.Failover(ctx, "v")
		return err == nil && f != nil && f.State == FailoverDone
	})
	if f.Round != 1 || f.Target != "r1" || f.Epoch != e2 || f.DoneMs < f.DetectedMs || f.Why != "" {
		t.Fatalf("the failover done: %+v", f)
	}
}
