package instance

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// TestWriterStopsServingBeforeItsLeaseCanExpire cuts the writer off from
// the control plane (its renewals hang) and checks the order of two
// moments: the writer's last successful Readable, and the lease's expiry as
// the catalog reports it (WatchWriter: the holder is gone). A writer that
// served after its lease expired could serve a read that misses the next
// writer's commits; the lease guard stops it at the last renewal sent plus
// the TTL less the margin, which etcd's expiry (counted from the renewal's
// receipt) never precedes.
func TestWriterStopsServingBeforeItsLeaseCanExpire(t *testing.T) {
	addr := startControlCluster(t)
	w, h := hookedWriter(t, addr, time.Second)
	defer w.Close()
	var cut atomic.Bool
	h.renew = func(ctx context.Context, req *pb.RenewWriterRequest, opts ...grpc.CallOption) (*pb.RenewWriterResponse, error) {
		if cut.Load() {
			<-ctx.Done() // the control plane does not answer
			return nil, ctx.Err()
		}
		return h.ControlClient.RenewWriter(ctx, req, opts...)
	}
	// Cut off, the writer cannot release the lease either: it expires.
	h.release = func(ctx context.Context, req *pb.ReleaseWriterRequest, opts ...grpc.CallOption) (*pb.ReleaseWriterResponse, error) {
		if cut.Load() {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		return h.ControlClient.ReleaseWriter(ctx, req, opts...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := pb.NewControlClient(conn).WatchWriter(ctx, &pb.WatchWriterRequest{Volume: "main"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || first.Holder != "w1" {
		t.Fatalf("the first writer state: %v, %v", first, err)
	}
	expired := make(chan time.Time, 1)
	go func() {
		for {
			st, err := stream.Recv()
			if err != nil {
				return
			}
			if st.Holder == "" {
				expired <- time.Now()
				return
			}
		}
	}()

	cut.Store(true)
	cutAt := time.Now()
	var lastServed time.Time
	for {
		_, err := w.Readable()
		if err != nil {
			if !errors.As(err, new(*NotReadyError)) {
				t.Fatalf("Readable: %v", err)
			}
			break
		}
		lastServed = time.Now()
		time.Sleep(time.Millisecond)
	}
	stoppedAt := time.Now()
	if _, err := w.Writable(ctx); err == nil {
		t.Fatal("the writer takes writes after it stopped serving reads")
	}
	var expiredAt time.Time
	select {
	case expiredAt = <-expired:
	case <-ctx.Done():
		t.Fatal("the lease never expired in the catalog")
	}
	t.Logf("cut at 0; last served %s; stopped %s; the catalog's expiry seen %s",
		lastServed.Sub(cutAt).Round(time.Millisecond), stoppedAt.Sub(cutAt).Round(time.Millisecond), expiredAt.Sub(cutAt).Round(time.Millisecond))
	if !lastServed.Before(expiredAt) {
		t.Fatalf("the writer served at %s, after its lease expired at %s", lastServed, expiredAt)
	}
}
