package instance

import (
	"context"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/redostream"
	"github.com/borealis-db/borealis/internal/volume"
)

// replicationService serves the writer's redo stream from whichever
// attempt serves now: the listener outlives the epochs, so replicas find it
// where the catalog said.
type replicationService struct {
	pb.UnimplementedReplicationServer
	w *Writer
}

func (rs replicationService) Subscribe(stream pb.Replication_SubscribeServer) error {
	srv := rs.w.Stream()
	if srv == nil {
		return status.Errorf(codes.Unavailable, "the writer of volume %s is not serving: %s", rs.w.cfg.Volume, rs.w.Status())
	}
	return srv.Subscribe(stream)
}

// serveReplication starts the redo stream's gRPC listener, once.
func (w *Writer) serveReplication() (string, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.replAddr != "" {
		return w.replAddr, nil
	}
	lis, err := net.Listen("tcp", w.cfg.ReplicationListen)
	if err != nil {
		return "", fmt.Errorf("instance: redo stream listener on %s: %w", w.cfg.ReplicationListen, err)
	}
	g := grpc.NewServer()
	pb.RegisterReplicationServer(g, replicationService{w: w})
	go g.Serve(lis)
	w.replGRPC, w.replAddr = g, lis.Addr().String()
	w.log.Info("serving the redo stream to replicas", "addr", w.replAddr)
	return w.replAddr, nil
}

// newStream makes the redo stream of an attempt at epoch, expecting the
// replicas the catalog lists.
func (w *Writer) newStream(ctx context.Context, cfg volume.Config) *redostream.Server {
	var expect []string
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	resp, err := w.ctl.ListInstances(lctx, &pb.ListInstancesRequest{Volume: w.cfg.Volume})
	cancel()
	if err == nil {
		for _, in := range resp.Instances {
			if in.Role == RoleReplica {
				expect = append(expect, in.Id)
			}
		}
	} else {
		w.log.Warn("cannot list the volume's replicas; the PGMRPL is held for a lease's time", "err", err)
		expect = []string{""} // never reports: the hold lasts its TTL
	}
	return redostream.NewServer(redostream.ServerConfig{
		VolumeID: cfg.VolumeID, Epoch: cfg.Epoch, PageSize: cfg.PageSize, PagesPerPG: cfg.PagesPerPG,
		BaseLSN: cfg.BaseLSN, ReportTTL: w.cfg.LeaseTTL, Expect: expect, Logger: w.cfg.Logger,
	})
}
