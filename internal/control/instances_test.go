package control

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/wait"
)

// instanceServer is a Control service over a fresh catalog with six nodes
// and the given volumes.
func instanceServer(t *testing.T, volumes ...string) (*Catalog, pb.ControlClient) {
	t.Helper()
	cat := newCatalog(t)
	sixNodes(t, cat)
	for _, v := range volumes {
		if _, err := cat.CreateVolume(ctxT(t), v, 4096, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	addr, _ := testServer(t, cat, "", 2*time.Second)
	return cat, dialControl(t, addr)
}

func replicaInfo(vol, id string) *pb.InstanceInfo {
	return &pb.InstanceInfo{Volume: vol, Id: id, Role: RoleReplica, Az: "b", SqlEndpoint: "127.0.0.1:8" + id, State: "connecting", PromotionTier: 1}
}

func register(t *testing.T, cli pb.ControlClient, info *pb.InstanceInfo, ttlMs uint32) int64 {
	t.Helper()
	resp, err := cli.RegisterInstance(ctxT(t), &pb.RegisterInstanceRequest{Info: info, TtlMs: ttlMs})
	if err != nil {
		t.Fatalf("register %s/%s: %v", info.GetVolume(), info.GetId(), err)
	}
	if resp.Lease == 0 {
		t.Fatalf("register %s/%s: no lease", info.GetVolume(), info.GetId())
	}
	return resp.Lease
}

// listed lists the instances of vol as volume/id strings.
func listed(t *testing.T, cli pb.ControlClient, vol string) []string {
	t.Helper()
	resp, err := cli.ListInstances(ctxT(t), &pb.ListInstancesRequest{Volume: vol})
	if err != nil {
		t.Fatalf("list instances of %q: %v", vol, err)
	}
	out := []string{}
	for _, in := range resp.Instances {
		out = append(out, in.Volume+"/"+in.Id)
	}
	return out
}

func listedOne(t *testing.T, cli pb.ControlClient, vol, id string) *pb.InstanceInfo {
	t.Helper()
	resp, err := cli.ListInstances(ctxT(t), &pb.ListInstancesRequest{Volume: vol})
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

// TestInstanceRegistry: instances of two volumes register, are listed by
// volume and then id (one volume, or all), renew with and without a new
// record, and deregister; a deregistered lease no longer renews, and
// deregistering it again is not an error.
func TestInstanceRegistry(t *testing.T) {
	t.Parallel()
	cat, cli := instanceServer(t, "b-vol", "a-vol")
	ctx := ctxT(t)

	writer := &pb.InstanceInfo{Volume: "a-vol", Id: "db-1", Role: RoleWriter, Az: "a", SqlEndpoint: "127.0.0.1:8001",
		ReplicationEndpoint: "127.0.0.1:9001", Epoch: 1, Vdl: 10, ReadPoint: 5, State: "ready", UpdatedUnixMs: 1234, PromotionTier: 0}
	wl := register(t, cli, writer, 10000)
	rl := register(t, cli, replicaInfo("a-vol", "db-0"), 10000)
	bl := register(t, cli, replicaInfo("b-vol", "db-9"), 0)
	if wl == rl || rl == bl || wl == bl {
		t.Fatalf("leases %x %x %x are not distinct", wl, rl, bl)
	}

	if got, want := listed(t, cli, "a-vol"), []string{"a-vol/db-0", "a-vol/db-1"}; !slices.Equal(got, want) {
		t.Fatalf("instances of a-vol: %v, want %v", got, want)
	}
	if got, want := listed(t, cli, ""), []string{"a-vol/db-0", "a-vol/db-1", "b-vol/db-9"}; !slices.Equal(got, want) {
		t.Fatalf("every instance: %v, want %v (by volume name, then id)", got, want)
	}
	got := listedOne(t, cli, "a-vol", "db-1")
	if got == nil || got.Role != RoleWriter || got.Az != "a" || got.SqlEndpoint != "127.0.0.1:8001" || got.ReplicationEndpoint != "127.0.0.1:9001" ||
		got.Epoch != 1 || got.Vdl != 10 || got.ReadPoint != 5 || got.State != "ready" || got.UpdatedUnixMs != 1234 {
		t.Fatalf("the writer's record: %v, want %v", got, writer)
	}

	// The record in etcd: under the volume's id, attached to the lease, with
	// the default TTL when none was asked for.
	b, err := cat.Volume(ctx, "b-vol")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cat.Client().Get(ctx, fmt.Sprintf("%sinstances/%020d/db-9", cat.Prefix(), b.ID))
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease != bl {
		t.Fatalf("the record of b-vol/db-9 in etcd: %v %v; want one key on lease %x", resp, err, bl)
	}
	if ins, err := cat.Instances(ctx, "b-vol"); err != nil || len(ins) != 1 || ins[0].TTLSeconds != 5 || ins[0].VolumeID != b.ID || ins[0].Lease != clientv3.LeaseID(bl) {
		t.Fatalf("b-vol's instances: %+v %v; want db-9 with the default TTL of 5s", ins, err)
	}

	// Renewals: without a record, and with a new one.
	if _, err := cli.RenewInstance(ctx, &pb.RenewInstanceRequest{Lease: rl}); err != nil {
		t.Fatal(err)
	}
	upd := replicaInfo("a-vol", "db-0")
	upd.State, upd.Vdl, upd.ReadPoint, upd.Epoch, upd.UpdatedUnixMs = "streaming", 42, 40, 1, 5678
	if _, err := cli.RenewInstance(ctx, &pb.RenewInstanceRequest{Lease: rl, Info: upd}); err != nil {
		t.Fatal(err)
	}
	if got := listedOne(t, cli, "a-vol", "db-0"); got == nil || got.State != "streaming" || got.Vdl != 42 || got.ReadPoint != 40 || got.UpdatedUnixMs != 5678 {
		t.Fatalf("the replica's record after its renewal: %v", got)
	}
	// A replica promoted keeps its id and lease, and says so.
	upd.Role, upd.ReplicationEndpoint = RoleWriter, "127.0.0.1:9000"
	if _, err := cli.RenewInstance(ctx, &pb.RenewInstanceRequest{Lease: rl, Info: upd}); err != nil {
		t.Fatal(err)
	}
	if got := listedOne(t, cli, "a-vol", "db-0"); got == nil || got.Role != RoleWriter || got.ReplicationEndpoint != "127.0.0.1:9000" {
		t.Fatalf("the promoted replica's record: %v", got)
	}

	// Deregistration removes the record at once.
	if _, err := cli.DeregisterInstance(ctx, &pb.DeregisterInstanceRequest{Lease: wl}); err != nil {
		t.Fatal(err)
	}
	if got, want := listed(t, cli, "a-vol"), []string{"a-vol/db-0"}; !slices.Equal(got, want) {
		t.Fatalf("instances of a-vol after db-1 left: %v, want %v", got, want)
	}
	_, err = cli.RenewInstance(ctx, &pb.RenewInstanceRequest{Lease: wl})
	wantCode(t, err, codes.FailedPrecondition, "renew a deregistered instance")
	_, err = cli.RenewInstance(ctx, &pb.RenewInstanceRequest{Lease: wl, Info: writer})
	wantCode(t, err, codes.FailedPrecondition, "renew a deregistered instance with its record")
	if got, want := listed(t, cli, "a-vol"), []string{"a-vol/db-0"}; !slices.Equal(got, want) {
		t.Fatalf("a refused renewal brought a record back: %v, want %v", got, want)
	}
	if _, err := cli.DeregisterInstance(ctx, &pb.DeregisterInstanceRequest{Lease: wl}); err != nil {
		t.Fatalf("deregister twice: %v; want OK (the record is gone either way)", err)
	}
	// The id registers again under a new lease.
	if l := register(t, cli, writer, 10000); l == wl {
		t.Fatalf("the new registration has the old lease %x", wl)
	}
	if got, want := listed(t, cli, ""), []string{"a-vol/db-0", "a-vol/db-1", "b-vol/db-9"}; !slices.Equal(got, want) {
		t.Fatalf("every instance at the end: %v, want %v", got, want)
	}
}

// TestInstanceExpires: a record whose lease is not renewed disappears
// after its TTL, and its lease then renews no more.
func TestInstanceExpires(t *testing.T) {
	t.Parallel()
	_, cli := instanceServer(t, "main")
	ctx := ctxT(t)
	short := register(t, cli, replicaInfo("main", "short"), 1000)
	long := register(t, cli, replicaInfo("main", "long"), 30000)
	start := time.Now()
	// etcd may raise a 1s TTL to its minimum (2s by default), and checks
	// expiry every 500ms.
	wait.For(t, 10*time.Second, "the unrenewed record to expire", func() bool {
		return slices.Equal(listed(t, cli, "main"), []string{"main/long"})
	})
	t.Logf("the 1s record expired after %s", time.Since(start).Round(10*time.Millisecond))
	_, err := cli.RenewInstance(ctx, &pb.RenewInstanceRequest{Lease: short, Info: replicaInfo("main", "short")})
	wantCode(t, err, codes.FailedPrecondition, "renew an expired instance lease")
	if got := listed(t, cli, "main"); !slices.Equal(got, []string{"main/long"}) {
		t.Fatalf("a renewal of an expired lease brought its record back: %v", got)
	}
	if _, err := cli.RenewInstance(ctx, &pb.RenewInstanceRequest{Lease: long}); err != nil {
		t.Fatal(err)
	}
}

// TestInstanceReregisterReplaces: registering an id again replaces its
// record and ends the older lease: the older lease renews no more, with or
// without a record, and never brings the older record back.
func TestInstanceReregisterReplaces(t *testing.T) {
	t.Parallel()
	cat, cli := instanceServer(t, "main")
	ctx := ctxT(t)
	first := replicaInfo("main", "db-2")
	old := register(t, cli, first, 30000)
	second := replicaInfo("main", "db-2")
	second.SqlEndpoint, second.State = "127.0.0.1:18002", "streaming"
	cur := register(t, cli, second, 30000)
	if cur == old {
		t.Fatalf("the new registration kept lease %x", old)
	}
	got := listedOne(t, cli, "main", "db-2")
	if n := len(listed(t, cli, "main")); n != 1 || got == nil || got.SqlEndpoint != "127.0.0.1:18002" || got.State != "streaming" {
		t.Fatalf("after registering db-2 again: %d records, db-2 is %v", n, got)
	}
	if ttl, err := cat.Client().TimeToLive(ctx, clientv3.LeaseID(old)); err != nil || ttl.TTL != -1 {
		t.Fatalf("the older lease: %v %v; want it revoked", ttl, err)
	}
	_, err := cli.RenewInstance(ctx, &pb.RenewInstanceRequest{Lease: old})
	wantCode(t, err, codes.FailedPrecondition, "renew a replaced lease")
	_, err = cli.RenewInstance(ctx, &pb.RenewInstanceRequest{Lease: old, Info: first})
	wantCode(t, err, codes.FailedPrecondition, "renew a replaced lease with the older record")
	if got := listedOne(t, cli, "main", "db-2"); got == nil || got.SqlEndpoint != "127.0.0.1:18002" {
		t.Fatalf("the older record came back: %v", got)
	}
	if _, err := cli.RenewInstance(ctx, &pb.RenewInstanceRequest{Lease: cur, Info: second}); err != nil {
		t.Fatal(err)
	}
	// Deregistering the replaced lease leaves the new record alone.
	if _, err := cli.DeregisterInstance(ctx, &pb.DeregisterInstanceRequest{Lease: old}); err != nil {
		t.Fatal(err)
	}
	if got := listedOne(t, cli, "main", "db-2"); got == nil || got.SqlEndpoint != "127.0.0.1:18002" {
		t.Fatalf("deregistering the replaced lease removed the new record: %v", got)
	}
}

// TestRaceInstanceRenewAndReregister: an instance renews its record in a
// loop while a restarted instance registers the id again; whenever the
// registration lands, the new record stays and keeps its lease: the older
// lease's renewals never put the older record back (nor attach the key to
// the older lease, whose revoke would then remove it).
func TestRaceInstanceRenewAndReregister(t *testing.T) {
	t.Parallel()
	cat := newCatalog(t)
	ctx := ctxT(t)
	sixNodes(t, cat)
	if _, err := cat.CreateVolume(ctx, "main", 4096, 1<<20); err != nil {
		t.Fatal(err)
	}
	rec := func(state string) Instance {
		return Instance{Volume: "main", ID: "db-1", Role: RoleReplica, SQLEndpoint: "127.0.0.1:8001", State: state}
	}
	for round := range 10 {
		older, _, err := cat.RegisterInstance(ctx, rec("old"), 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var renewals, refused atomic.Int64
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rec("old")
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := cat.RenewInstance(ctx, older.Lease, &r)
				switch {
				case err == nil:
					renewals.Add(1)
				case errors.Is(err, ErrLeaseExpired):
					refused.Add(1)
				default:
					t.Errorf("round %d: renew: %v", round, err)
					return
				}
			}
		}()
		// Vary where in the renew loop the registration lands.
		wait.For(t, 10*time.Second, fmt.Sprintf("%d renewals", round), func() bool { return renewals.Load() >= int64(round) })
		newer, replaced, err := cat.RegisterInstance(ctx, rec("new"), 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		// The older instance keeps trying until it is refused twice.
		wait.For(t, 10*time.Second, "refused renewals of the replaced lease", func() bool { return refused.Load() >= 2 })
		close(stop)
		wg.Wait()
		if replaced == nil || replaced.Lease != older.Lease {
			t.Fatalf("round %d: the registration replaced %+v, want the record of lease %x", round, replaced, int64(older.Lease))
		}
		if err := cat.RenewInstance(ctx, older.Lease, nil); err == nil {
			t.Fatalf("round %d: the replaced lease still renews", round)
		}
		ins, err := cat.Instances(ctx, "main")
		if err != nil || len(ins) != 1 || ins[0].State != "new" || ins[0].Lease != newer.Lease {
			t.Fatalf("round %d (%d renewals, %d refused): the records are %+v %v; want db-1 as registered last, on lease %x", round, renewals.Load(), refused.Load(), ins, err, int64(newer.Lease))
		}
		if _, err := cat.DeregisterInstance(ctx, newer.Lease); err != nil {
			t.Fatal(err)
		}
	}
}

// TestInstanceRefusals: bad records, unknown volumes and leases that are
// not an instance's give the contract's codes, and change nothing.
func TestInstanceRefusals(t *testing.T) {
	t.Parallel()
	cat, cli := instanceServer(t, "main", "other")
	ctx := ctxT(t)
	good := replicaInfo("main", "db-1")
	lease := register(t, cli, good, 30000)
	with := func(f func(*pb.InstanceInfo)) *pb.InstanceInfo {
		in := replicaInfo("main", "db-x")
		f(in)
		return in
	}
	for _, bad := range []struct {
		what string
		info *pb.InstanceInfo
		code codes.Code
	}{
		{"no record", nil, codes.InvalidArgument},
		{"no id", with(func(in *pb.InstanceInfo) { in.Id = "" }), codes.InvalidArgument},
		{"an id with a slash", with(func(in *pb.InstanceInfo) { in.Id = "db/1" }), codes.InvalidArgument},
		{"an id that climbs", with(func(in *pb.InstanceInfo) { in.Id = ".." }), codes.InvalidArgument},
		{"an id with a space", with(func(in *pb.InstanceInfo) { in.Id = "db 1" }), codes.InvalidArgument},
		{"an id of 65 characters", with(func(in *pb.InstanceInfo) { in.Id = strings.Repeat("a", 65) }), codes.InvalidArgument},
		{"no role", with(func(in *pb.InstanceInfo) { in.Role = "" }), codes.InvalidArgument},
		{"role primary", with(func(in *pb.InstanceInfo) { in.Role = "primary" }), codes.InvalidArgument},
		{"no SQL endpoint", with(func(in *pb.InstanceInfo) { in.SqlEndpoint = "" }), codes.InvalidArgument},
		{"no volume", with(func(in *pb.InstanceInfo) { in.Volume = "" }), codes.InvalidArgument},
		{"an unknown volume", with(func(in *pb.InstanceInfo) { in.Volume = "nope" }), codes.NotFound},
	} {
		_, err := cli.RegisterInstance(ctx, &pb.RegisterInstanceRequest{Info: bad.info, TtlMs: 30000})
		wantCode(t, err, bad.code, "register with "+bad.what)
		t.Logf("%s: %s", bad.what, status.Convert(err).Message())
	}
	if got := register(t, cli, with(func(in *pb.InstanceInfo) { in.Id = "Db_1.x-" + strings.Repeat("9", 57) }), 30000); got == 0 {
		t.Fatal("no lease for an id of 64 safe characters")
	}

	// Renewals with a record of another instance, or a bad one.
	for _, bad := range []struct {
		what string
		info *pb.InstanceInfo
		code codes.Code
	}{
		{"another id", replicaInfo("main", "db-2"), codes.InvalidArgument},
		{"another volume", replicaInfo("other", "db-1"), codes.InvalidArgument},
		{"an unknown volume", replicaInfo("nope", "db-1"), codes.NotFound},
		{"a bad role", with(func(in *pb.InstanceInfo) { in.Id, in.Role = "db-1", "leader" }), codes.InvalidArgument},
	} {
		_, err := cli.RenewInstance(ctx, &pb.RenewInstanceRequest{Lease: lease, Info: bad.info})
		wantCode(t, err, bad.code, "renew with "+bad.what)
	}
	if got := listedOne(t, cli, "main", "db-1"); got == nil || got.Role != RoleReplica {
		t.Fatalf("a refused renewal changed the record: %v", got)
	}
	if got := listed(t, cli, "other"); len(got) != 0 {
		t.Fatalf("a refused renewal made a record in another volume: %v", got)
	}
	_, err := cli.RenewInstance(ctx, &pb.RenewInstanceRequest{})
	wantCode(t, err, codes.InvalidArgument, "renew without a lease")
	_, err = cli.DeregisterInstance(ctx, &pb.DeregisterInstanceRequest{})
	wantCode(t, err, codes.InvalidArgument, "deregister without a lease")
	_, err = cli.RenewInstance(ctx, &pb.RenewInstanceRequest{Lease: 0x7eadbeef})
	wantCode(t, err, codes.FailedPrecondition, "renew a lease that never was")
	if _, err := cli.DeregisterInstance(ctx, &pb.DeregisterInstanceRequest{Lease: 0x7eadbeef}); err != nil {
		t.Fatalf("deregister a lease that never was: %v; want OK", err)
	}
	_, err = cli.ListInstances(ctx, &pb.ListInstancesRequest{Volume: "nope"})
	wantCode(t, err, codes.NotFound, "list the instances of an unknown volume")

	// A writer's lease is not an instance's: neither renewed nor revoked.
	acq, err := cli.AcquireWriter(ctx, &pb.AcquireWriterRequest{Volume: "main", Holder: "db-1", TtlMs: 30000})
	if err != nil {
		t.Fatal(err)
	}
	_, err = cli.RenewInstance(ctx, &pb.RenewInstanceRequest{Lease: acq.Lease})
	wantCode(t, err, codes.InvalidArgument, "renew a writer lease as an instance's")
	_, err = cli.DeregisterInstance(ctx, &pb.DeregisterInstanceRequest{Lease: acq.Lease})
	wantCode(t, err, codes.InvalidArgument, "deregister a writer lease")
	if w, err := cat.Writer(ctx, "main"); err != nil || w == nil || w.Holder != "db-1" {
		t.Fatalf("the writer after a refused deregistration of its lease: %+v %v", w, err)
	}
}

// TestDeleteVolumeRemovesInstances: deleting a volume removes its
// instances' records (and only its), their leases renew no more, and the
// volume's name takes no registration until it exists again.
func TestDeleteVolumeRemovesInstances(t *testing.T) {
	t.Parallel()
	cat, cli := instanceServer(t, "gone", "kept")
	ctx := ctxT(t)
	gone, err := cat.Volume(ctx, "gone")
	if err != nil {
		t.Fatal(err)
	}
	l1 := register(t, cli, replicaInfo("gone", "r1"), 30000)
	register(t, cli, replicaInfo("gone", "r2"), 30000)
	kept := register(t, cli, replicaInfo("kept", "r1"), 30000)
	if _, err := cli.DeleteVolume(ctx, &pb.DeleteVolumeRequest{Name: "gone"}); err != nil {
		t.Fatal(err)
	}
	if got, want := listed(t, cli, ""), []string{"kept/r1"}; !slices.Equal(got, want) {
		t.Fatalf("instances after the delete: %v, want %v", got, want)
	}
	if left := volumeKeys(catalogKeys(t, cat), "gone", gone.ID); !slices.Equal(left, []string{fmt.Sprintf("deleted/%020d", gone.ID)}) {
		t.Fatalf("keys of the deleted volume left: %q; want only its tombstone", left)
	}
	_, err = cli.ListInstances(ctx, &pb.ListInstancesRequest{Volume: "gone"})
	wantCode(t, err, codes.NotFound, "list the instances of a deleted volume")
	_, err = cli.RenewInstance(ctx, &pb.RenewInstanceRequest{Lease: l1})
	wantCode(t, err, codes.FailedPrecondition, "renew an instance of a deleted volume")
	_, err = cli.RenewInstance(ctx, &pb.RenewInstanceRequest{Lease: l1, Info: replicaInfo("gone", "r1")})
	wantCode(t, err, codes.FailedPrecondition, "renew an instance of a deleted volume with its record")
	_, err = cli.RegisterInstance(ctx, &pb.RegisterInstanceRequest{Info: replicaInfo("gone", "r1")})
	wantCode(t, err, codes.NotFound, "register with a deleted volume")
	if _, err := cli.RenewInstance(ctx, &pb.RenewInstanceRequest{Lease: kept}); err != nil {
		t.Fatalf("the other volume's instance: %v", err)
	}
	// The name again is another volume, with no instances.
	if _, err := cli.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "gone", PgSizeBytes: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if got := listed(t, cli, "gone"); len(got) != 0 {
		t.Fatalf("the new volume gone has instances %v", got)
	}
}
