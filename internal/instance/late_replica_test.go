package instance

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/sqlvfs"
	"github.com/borealis-db/borealis/internal/volume"
	"github.com/borealis-db/borealis/internal/wait"
)

// A replica started on a volume that already holds data (storage has
// materialized past LSN 0) starts, attaches and serves the writer's state.
// StartReplica opens the replica's database before it follows the stream:
// OpenReplicaDB's Ping reads page 1 at the read-only client's VDL, still 0,
// which storage refuses as below its GC horizon.
func TestReplicaStartsOnAVolumeWithData(t *testing.T) {
	members := startStorage(t)
	ctl := startControl(t, members)
	w := startWriter(t, ctl)
	mustExec(t, w.db.Writer, "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT)")
	for i := 1; i <= 20; i++ {
		mustExec(t, w.db.Writer, "INSERT INTO t(k, v) VALUES(?, 'x')", i)
	}
	vdl := w.vol.VDL()
	// Storage materializes up to the writer's min_read_point (its VDL).
	wait.For(t, 20*time.Second, "storage to materialize PG 0", func() bool {
		for _, m := range members {
			in, err := storageInfo(t, m.Addr)
			if err != nil || in.MaterializedLsn < vdl {
				return false
			}
		}
		return true
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// What the replica's read-only client asks first.
	ro, err := volume.Open(ctx, volume.Config{VolumeID: 1, PageSize: 4096, PagesPerPG: 64, ReadOnly: true, Logger: testLogger(),
		Placement: func(uint32) (volume.Membership, error) { return volume.OneSet(members), nil }})
	if err != nil {
		t.Fatal(err)
	}
	_, rerr := ro.ReadPage(ctx, 1, ro.VDL())
	ro.Close()
	r, err := StartReplica(ctx, ReplicaConfig{
		Volume: volumeName, Ctl: ctl, ID: "late", AZ: "c", Endpoint: "late.sql:80",
		Options: sqlvfs.Options{CacheMiB: 8}, LeaseTTL: time.Second, Logger: testLogger(),
	})
	if err != nil {
		t.Fatalf("StartReplica on a volume with data: %v (a read-only client's read of page 1 at its VDL 0: %v)", err, rerr)
	}
	defer r.Close()
	if err := r.WaitApplied(ctx, vdl); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 20*time.Second, "the replica to open its database", r.Ready)
	if n := count(t, r.DB().Reader, "SELECT count(*) FROM t"); n != 20 {
		t.Fatalf("%d rows", n)
	}
}

func storageInfo(t *testing.T, addr string) (*pb.SegmentInfoResponse, error) {
	t.Helper()
	conn, err := grpcDial(addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return pb.NewStorageClient(conn).SegmentInfo(ctx, &pb.SegmentInfoRequest{Volume: 1, Pg: 0})
}

func grpcDial(addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}
