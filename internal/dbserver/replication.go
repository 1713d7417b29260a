package dbserver

import (
	"context"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/instance"
	"github.com/borealis-db/borealis/internal/redostream"
	"github.com/borealis-db/borealis/internal/volume"
)

// replicationService serves the writer's redo stream from whichever
// attempt serves now: the listener outlives the epochs, so replicas find it
// where the catalog said.
type replicationService struct {
	pb.UnimplementedReplicationServer
	s *Instance
}

func (rs replicationService) Subscribe(stream pb.Replication_SubscribeServer) error {
	rs.s.mu.Lock()
	srv := rs.s.stream
	rs.s.mu.Unlock()
	if srv == nil {
		return status.Errorf(codes.Unavailable, "the writer of volume %s is not serving: %s", rs.s.cfg.Volume, rs.s.Health().Status)
	}
	return srv.Subscribe(stream)
}

// serveReplication starts the redo stream's gRPC listener, once.
func (s *Instance) serveReplication() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.replAddr != "" {
		return s.replAddr, nil
	}
	lis, err := net.Listen("tcp", s.cfg.ReplicationListen)
	if err != nil {
		return "", fmt.Errorf("dbserver: redo stream listener on %s: %w", s.cfg.ReplicationListen, err)
	}
	g := grpc.NewServer()
	pb.RegisterReplicationServer(g, replicationService{s: s})
	go g.Serve(lis)
	s.replGRPC, s.replAddr = g, lis.Addr().String()
	s.log.Info("serving the redo stream to replicas", "addr", s.replAddr)
	return s.replAddr, nil
}

// newStream makes the redo stream of an attempt at epoch, expecting the
// replicas the catalog lists.
func (s *Instance) newStream(ctx context.Context, cfg volume.Config) *redostream.Server {
	var expect []string
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	resp, err := s.ctl.ListInstances(lctx, &pb.ListInstancesRequest{Volume: s.cfg.Volume})
	cancel()
	if err == nil {
		for _, in := range resp.Instances {
			if in.Role == instance.RoleReplica {
				expect = append(expect, in.Id)
			}
		}
	} else {
		s.log.Warn("cannot list the volume's replicas; the PGMRPL is held for a lease's time", "err", err)
		expect = []string{""} // never reports: the hold lasts its TTL
	}
	return redostream.NewServer(redostream.ServerConfig{
		VolumeID: cfg.VolumeID, Epoch: cfg.Epoch, PageSize: cfg.PageSize, PagesPerPG: cfg.PagesPerPG,
		BaseLSN: cfg.BaseLSN, ReportTTL: s.cfg.LeaseTTL, Expect: expect, Logger: s.cfg.Logger,
	})
}

// writerInfo is the writer's catalog record now.
func (s *Instance) writerInfo() *pb.InstanceInfo {
	s.mu.Lock()
	vol, epoch, st := s.vol, s.epoch, s.status
	s.mu.Unlock()
	in := &pb.InstanceInfo{
		Volume: s.cfg.Volume, Id: s.cfg.ID, Role: instance.RoleWriter, Az: s.cfg.AZ,
		SqlEndpoint: s.cfg.Endpoint, ReplicationEndpoint: s.replAddr, Epoch: epoch,
		State: st, UpdatedUnixMs: time.Now().UnixMilli(),
	}
	if vol != nil {
		in.Vdl, in.ReadPoint = vol.VDL(), vol.MinReadPoint()
	}
	return in
}

// keepRegistration registers the writer of this attempt in the catalog and
// keeps the record current until lost is closed, then removes it.
func (s *Instance) keepRegistration(lost <-chan struct{}) {
	ttl := s.cfg.LeaseTTL
	var lease int64
	register := func() {
		ctx, cancel := context.WithTimeout(context.Background(), ttl)
		defer cancel()
		resp, err := s.ctl.RegisterInstance(ctx, &pb.RegisterInstanceRequest{Info: s.writerInfo(), TtlMs: uint32(ttl.Milliseconds())})
		if err != nil {
			s.log.Warn("cannot register the writer in the catalog; retrying", "err", err)
			return
		}
		lease = resp.Lease
	}
	register()
	t := time.NewTicker(ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-lost:
			if lease != 0 {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				s.ctl.DeregisterInstance(ctx, &pb.DeregisterInstanceRequest{Lease: lease})
				cancel()
			}
			return
		case <-t.C:
		}
		if lease == 0 {
			register()
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), ttl/3)
		_, err := s.ctl.RenewInstance(ctx, &pb.RenewInstanceRequest{Lease: lease, Info: s.writerInfo()})
		cancel()
		if c := status.Code(err); c == codes.FailedPrecondition || c == codes.NotFound {
			lease = 0
			register()
		}
	}
}
