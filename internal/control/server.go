package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

const (
	// DefaultHeartbeatTimeout is how long a node that stops heartbeating
	// stays up: the TTL of its liveness lease.
	DefaultHeartbeatTimeout = DefaultHeartbeatTTL
	// DefaultWriterTTL is the writer lease's TTL when AcquireWriter asks for
	// none (ttl_ms 0).
	DefaultWriterTTL = 10 * time.Second
	// DefaultInstanceTTL is an instance lease's TTL when RegisterInstance
	// asks for none (ttl_ms 0).
	DefaultInstanceTTL = 5 * time.Second
	// requestTimeout bounds the catalog work of one unary RPC, so that an
	// unreachable etcd gives Unavailable instead of a hang.
	requestTimeout = 10 * time.Second
)

// Server is the Control gRPC service over a Catalog.
type Server struct {
	pb.UnimplementedControlServer

	cat     *Catalog
	timeout time.Duration
	log     *slog.Logger
	// failoverTiming bounds the failovers the leader runs.
	failoverTiming FailoverTiming
	// repair tunes the leader's repair loop; repairMetrics counts its steps.
	repair        RepairConfig
	repairMetrics *repairMetrics
	// metrics is the control plane's Prometheus registry.
	metrics *prometheus.Registry

	stopOnce sync.Once
	stopping chan struct{}

	// ha is this control plane's part in the leader election (election.go).
	ha election
}

// NewServer returns the Control service over cat. heartbeatTimeout (0: the
// default, 3s) is the TTL of each node's liveness lease: a node that has not
// heartbeat for that long is down. etcd leases have whole seconds, so it is
// rounded up to one.
func NewServer(cat *Catalog, heartbeatTimeout time.Duration, log *slog.Logger) *Server {
	if heartbeatTimeout <= 0 {
		heartbeatTimeout = DefaultHeartbeatTimeout
	}
	// etcd leases are whole seconds: report and pace heartbeats by the
	// timeout that is really in force.
	heartbeatTimeout = time.Duration(ttlSeconds(heartbeatTimeout)) * time.Second
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	reg := prometheus.NewRegistry()
	return &Server{cat: cat, timeout: heartbeatTimeout, log: log, failoverTiming: DefaultFailoverTiming, stopping: make(chan struct{}),
		repair: RepairConfig{}.withDefaults(), repairMetrics: newRepairMetrics(reg), metrics: reg}
}

// SetRepair tunes the repair loop the server runs while it leads (a zero
// field keeps its default). Call it before the server leads.
func (s *Server) SetRepair(c RepairConfig) { s.repair = c.withDefaults() }

// Metrics is the control plane's Prometheus registry (the repair loop's
// counters).
func (s *Server) Metrics() *prometheus.Registry { return s.metrics }

// HeartbeatTimeout is the time after which a silent node is down.
func (s *Server) HeartbeatTimeout() time.Duration { return s.timeout }

// HeartbeatInterval is how often nodes are told to heartbeat: a third of
// the timeout, so that two heartbeats may be lost without the node going down.
func (s *Server) HeartbeatInterval() time.Duration { return s.timeout / 3 }

// Stop ends the streams in progress (WatchVolume), so that a graceful stop
// of the gRPC server does not wait for their clients.
func (s *Server) Stop() { s.stopOnce.Do(func() { close(s.stopping) }) }

// grpcErr maps a catalog error to a gRPC status, keeping its message.
func grpcErr(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok && !isCatalogErr(err) {
		return err
	}
	msg := err.Error()
	switch {
	case errors.Is(err, ErrNotFound):
		return status.Error(codes.NotFound, msg)
	case errors.Is(err, ErrExists):
		return status.Error(codes.AlreadyExists, msg)
	case errors.Is(err, ErrInvalid):
		return status.Error(codes.InvalidArgument, msg)
	case errors.Is(err, ErrPlacement), errors.Is(err, ErrWriterHeld), errors.Is(err, ErrLeaseExpired), errors.Is(err, ErrFailingOver), errors.Is(err, ErrInvalidState):
		return status.Error(codes.FailedPrecondition, msg)
	case errors.Is(err, ErrVolumeFull):
		return status.Error(codes.ResourceExhausted, msg)
	case errors.Is(err, ErrStaleEpoch), errors.Is(err, ErrConflict), errors.Is(err, ErrNotLeader):
		return status.Error(codes.Aborted, msg)
	}
	// The caller gave up, or we did (requestTimeout): the latter means etcd
	// did not answer in time.
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return status.Error(codes.Canceled, msg)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		if ctx.Err() != nil {
			return status.Error(codes.DeadlineExceeded, msg)
		}
		return status.Error(codes.Unavailable, msg+" (etcd did not answer in time)")
	}
	if errors.Is(err, ErrUnavailable) {
		return status.Error(codes.Unavailable, msg)
	}
	return status.Error(codes.Internal, msg)
}

func isCatalogErr(err error) bool {
	for _, s := range []error{ErrNotFound, ErrExists, ErrInvalid, ErrPlacement, ErrVolumeFull, ErrWriterHeld, ErrFailingOver, ErrInvalidState, ErrStaleEpoch, ErrLeaseExpired, ErrConflict, ErrNotLeader, ErrUnavailable} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// call runs f with the request's context bounded by requestTimeout and maps
// its error.
func call[T any](ctx context.Context, f func(context.Context) (T, error)) (T, error) {
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	v, err := f(rctx)
	if err != nil {
		var zero T
		return zero, grpcErr(ctx, err)
	}
	return v, nil
}

func pgInfo(pg PG) *pb.PGInfo {
	out := &pb.PGInfo{VolumeId: pg.VolumeID, Pg: pg.PG, MembershipEpoch: pg.MembershipEpoch, GeometryEpoch: pg.GeometryEpoch}
	for _, s := range pg.Segments {
		out.Segments = append(out.Segments, &pb.SegmentInfo{Node: s.Node, Az: s.AZ, Addr: s.Addr})
	}
	for _, s := range pg.Next {
		out.NextSegments = append(out.NextSegments, &pb.SegmentInfo{Node: s.Node, Az: s.AZ, Addr: s.Addr})
	}
	if ch := pg.Change; ch != nil {
		out.Change = &pb.MembershipChange{Leaving: ch.Leaving, Joining: ch.Joining, Reason: ch.Reason, StartedAtUnixMs: ch.StartedAt.UnixMilli()}
	}
	return out
}

func volumeInfo(v Volume, pgs []PG, truncs []Truncation) *pb.VolumeInfo {
	out := &pb.VolumeInfo{
		Name: v.Name, Id: v.ID, Incarnation: v.Incarnation, PageSize: uint32(v.PageSize), PgSizeBytes: v.PGSizeBytes, PagesPerPg: v.PagesPerPG,
		GeometryEpoch: v.GeometryEpoch, VolumeEpoch: v.VolumeEpoch, Pgs: v.PGs, SizeBytes: v.SizeBytes(),
		Truncations: truncationRecords(truncs),
	}
	for _, pg := range pgs {
		out.PgList = append(out.PgList, pgInfo(pg))
	}
	return out
}

func truncationRecords(ts []Truncation) []*pb.TruncationRecord {
	out := make([]*pb.TruncationRecord, len(ts))
	for i, t := range ts {
		out[i] = &pb.TruncationRecord{Epoch: t.Epoch, After: t.After, Through: t.Through, Pgs: t.PGs, RecordedAtUnixMs: t.RecordedAt.UnixMilli()}
	}
	return out
}

// volumeWithPGs reads a volume's PGs and truncations and builds its
// VolumeInfo.
func (s *Server) volumeWithPGs(ctx context.Context, v Volume) (*pb.VolumeInfo, error) {
	pgs, truncs, err := s.cat.VolumeSnapshot(ctx, v)
	if err != nil {
		return nil, err
	}
	return volumeInfo(v, pgs, truncs), nil
}

// RegisterNode records a storage node and tells it how often to heartbeat.
func (s *Server) RegisterNode(ctx context.Context, req *pb.RegisterNodeRequest) (*pb.RegisterNodeResponse, error) {
	return call(ctx, func(ctx context.Context) (*pb.RegisterNodeResponse, error) {
		err := s.cat.RegisterNode(ctx, Node{ID: req.GetId(), AZ: req.GetAz(), Addr: req.GetAddr(), CapacityBytes: req.GetCapacityBytes()})
		if err != nil {
			s.log.Warn("node registration refused", "node", req.GetId(), "az", req.GetAz(), "addr", req.GetAddr(), "err", err)
			return nil, err
		}
		s.log.Info("node registered", "node", req.GetId(), "az", req.GetAz(), "addr", req.GetAddr(), "capacity_bytes", req.GetCapacityBytes())
		return &pb.RegisterNodeResponse{HeartbeatIntervalMs: uint32(s.HeartbeatInterval().Milliseconds())}, nil
	})
}

// Heartbeat renews a node's liveness lease (the heartbeat timeout's TTL).
func (s *Server) Heartbeat(ctx context.Context, req *pb.HeartbeatRequest) (*pb.HeartbeatResponse, error) {
	return call(ctx, func(ctx context.Context) (*pb.HeartbeatResponse, error) {
		if err := checkName("node id", req.GetId()); err != nil {
			return nil, err
		}
		var hostedIDs []uint64
		for _, h := range req.GetHosted() {
			hostedIDs = append(hostedIDs, h.GetVolumeId())
		}
		rep := HeartbeatReport{ReportsHosted: req.GetReportsHosted(), Hosted: hostedIDs, BootID: req.GetBootId()}
		if err := s.cat.HeartbeatWith(ctx, req.GetId(), s.timeout, rep); err != nil {
			return nil, err
		}
		vols, err := s.cat.Volumes(ctx)
		if err != nil {
			return nil, err
		}
		// Read after the volumes: a volume deleted in between is in both
		// lists, and the node takes its epoch, then drops it.
		hosted := make([]VolumeRef, len(req.GetHosted()))
		for i, h := range req.GetHosted() {
			hosted[i] = VolumeRef{ID: h.GetVolumeId(), Incarnation: h.GetIncarnation()}
		}
		deleted, err := s.cat.DeletedVolumes(ctx, hosted, req.GetEpochOnly())
		if err != nil {
			// The epochs still go out: they fence old writers on the node,
			// and a drop can wait for the next heartbeat.
			s.log.Warn("heartbeat: cannot read the volume tombstones; the node is told of no deletion this time", "node", req.GetId(), "err", err)
			deleted = nil
		}
		resp := &pb.HeartbeatResponse{}
		for _, d := range deleted {
			resp.Deleted = append(resp.Deleted, &pb.VolumeIncarnation{VolumeId: d.ID, Incarnation: d.Incarnation})
		}
		for _, v := range vols {
			resp.Epochs = append(resp.Epochs, &pb.VolumeEpoch{VolumeId: v.ID, Epoch: v.VolumeEpoch})
		}
		if len(deleted) > 0 {
			s.log.Info("telling a node to drop deleted volumes", "node", req.GetId(), "volumes", fmtRefs(deleted))
		}
		return resp, nil
	})
}

// fmtRefs prints volumes as id/incarnation (hex), for the log.
func fmtRefs(refs []VolumeRef) string {
	parts := make([]string, len(refs))
	for i, r := range refs {
		parts[i] = fmt.Sprintf("%d/%016x", r.ID, r.Incarnation)
	}
	return strings.Join(parts, " ")
}

// CreateVolume creates a volume and places its PG 0.
func (s *Server) CreateVolume(ctx context.Context, req *pb.CreateVolumeRequest) (*pb.VolumeInfo, error) {
	return call(ctx, func(ctx context.Context) (*pb.VolumeInfo, error) {
		v, err := s.cat.CreateVolume(ctx, req.GetName(), int(req.GetPageSize()), req.GetPgSizeBytes())
		if err != nil {
			return nil, err
		}
		s.log.Info("volume created", "volume", v.Name, "id", v.ID, "incarnation", fmt.Sprintf("%016x", v.Incarnation), "page_size", v.PageSize, "pg_size_bytes", v.PGSizeBytes)
		return s.volumeWithPGs(ctx, v)
	})
}

// GetVolume returns a volume with its PGs.
func (s *Server) GetVolume(ctx context.Context, req *pb.GetVolumeRequest) (*pb.VolumeInfo, error) {
	return call(ctx, func(ctx context.Context) (*pb.VolumeInfo, error) {
		v, err := s.cat.Volume(ctx, req.GetName())
		if err != nil {
			return nil, err
		}
		if req.GetWithoutPgs() {
			truncs, err := s.cat.Truncations(ctx, v.ID)
			if err != nil {
				return nil, err
			}
			return volumeInfo(v, nil, truncs), nil
		}
		return s.volumeWithPGs(ctx, v)
	})
}

// GetPG returns one PG.
func (s *Server) GetPG(ctx context.Context, req *pb.GetPGRequest) (*pb.PGInfo, error) {
	return call(ctx, func(ctx context.Context) (*pb.PGInfo, error) {
		pg, err := s.cat.PG(ctx, req.GetVolumeId(), req.GetPg())
		if err != nil {
			return nil, err
		}
		return pgInfo(pg), nil
	})
}

// ListVolumes returns every volume with its PGs.
func (s *Server) ListVolumes(ctx context.Context, _ *pb.ListVolumesRequest) (*pb.ListVolumesResponse, error) {
	return call(ctx, func(ctx context.Context) (*pb.ListVolumesResponse, error) {
		vols, err := s.listVolumes(ctx)
		if err != nil {
			return nil, err
		}
		return &pb.ListVolumesResponse{Volumes: vols}, nil
	})
}

func (s *Server) listVolumes(ctx context.Context) ([]*pb.VolumeInfo, error) {
	vols, err := s.cat.Volumes(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*pb.VolumeInfo, 0, len(vols))
	for _, v := range vols {
		vi, err := s.volumeWithPGs(ctx, v)
		if err != nil {
			return nil, err
		}
		out = append(out, vi)
	}
	return out, nil
}

// DeleteVolume removes a volume from the catalog, unless a writer holds it.
func (s *Server) DeleteVolume(ctx context.Context, req *pb.DeleteVolumeRequest) (*pb.DeleteVolumeResponse, error) {
	return call(ctx, func(ctx context.Context) (*pb.DeleteVolumeResponse, error) {
		v, pgs, err := s.cat.DeleteVolume(ctx, req.GetName())
		if err != nil {
			s.log.Warn("volume delete refused", "volume", req.GetName(), "err", err)
			return nil, err
		}
		s.log.Info("volume deleted", "volume", v.Name, "id", v.ID, "incarnation", fmt.Sprintf("%016x", v.Incarnation), "pgs", v.PGs)
		return &pb.DeleteVolumeResponse{Volume: volumeInfo(v, pgs, nil)}, nil
	})
}

// AddPG grows a volume by its next PG.
func (s *Server) AddPG(ctx context.Context, req *pb.AddPGRequest) (*pb.PGInfo, error) {
	return call(ctx, func(ctx context.Context) (*pb.PGInfo, error) {
		pg, err := s.cat.AddPG(ctx, req.GetVolume(), req.GetPg())
		if err != nil {
			return nil, err
		}
		s.log.Info("PG placed", "volume", req.GetVolume(), "pg", pg.PG, "geometry_epoch", pg.GeometryEpoch)
		return pgInfo(pg), nil
	})
}

// WatchVolume streams the volume's PGs: the existing ones, then each one
// added or changed, until the client goes away or the server stops.
func (s *Server) WatchVolume(req *pb.WatchVolumeRequest, stream grpc.ServerStreamingServer[pb.PGInfo]) error {
	ctx := stream.Context()
	if _, err := call(ctx, func(ctx context.Context) (Volume, error) { return s.cat.VolumeByID(ctx, req.GetVolumeId()) }); err != nil {
		return err
	}
	wctx, cancel := s.untilStopping(ctx)
	defer cancel()
	for ev := range s.cat.Watch(wctx, req.GetVolumeId()) {
		if err := stream.Send(pgInfo(ev.PG)); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return status.FromContextError(ctx.Err()).Err()
	}
	return status.Error(codes.Unavailable, "control: the control plane is stopping; watch again from another one (or after its restart)")
}

// untilStopping is ctx, ended also when the server stops: a stream's watch
// ends with the server rather than hold its graceful stop.
func (s *Server) untilStopping(ctx context.Context) (context.Context, context.CancelFunc) {
	wctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-s.stopping:
			cancel()
		case <-wctx.Done():
		}
	}()
	return wctx, cancel
}

// AcquireWriter takes a volume's writer lease and bumps its epoch.
func (s *Server) AcquireWriter(ctx context.Context, req *pb.AcquireWriterRequest) (*pb.AcquireWriterResponse, error) {
	return call(ctx, func(ctx context.Context) (*pb.AcquireWriterResponse, error) {
		ttl := time.Duration(req.GetTtlMs()) * time.Millisecond
		if ttl == 0 {
			ttl = DefaultWriterTTL
		}
		lease, epoch, err := s.cat.AcquireWriter(ctx, req.GetVolume(), req.GetHolder(), ttl)
		if err != nil {
			return nil, err
		}
		s.log.Info("writer lease granted", "volume", req.GetVolume(), "holder", req.GetHolder(), "epoch", epoch, "lease", fmt.Sprintf("%x", int64(lease)))
		v, err := s.cat.Volume(ctx, req.GetVolume())
		if err != nil {
			return nil, err
		}
		vi, err := s.volumeWithPGs(ctx, v)
		if err != nil {
			return nil, err
		}
		return &pb.AcquireWriterResponse{Lease: int64(lease), Epoch: epoch, Volume: vi}, nil
	})
}

// RecordTruncation records a recovery's truncation range with the volume.
func (s *Server) RecordTruncation(ctx context.Context, req *pb.RecordTruncationRequest) (*pb.RecordTruncationResponse, error) {
	return call(ctx, func(ctx context.Context) (*pb.RecordTruncationResponse, error) {
		ts, err := s.cat.RecordTruncation(ctx, req.GetVolume(), Truncation{Epoch: req.GetEpoch(), After: req.GetAfter(), Through: req.GetThrough(), PGs: req.GetPgs()})
		if err != nil {
			s.log.Warn("truncation not recorded", "volume", req.GetVolume(), "epoch", req.GetEpoch(), "after", req.GetAfter(), "through", req.GetThrough(), "err", err)
			return nil, err
		}
		s.log.Info("truncation recorded", "volume", req.GetVolume(), "epoch", req.GetEpoch(), "after", req.GetAfter(), "through", req.GetThrough(), "pgs", req.GetPgs())
		return &pb.RecordTruncationResponse{Truncations: truncationRecords(ts)}, nil
	})
}

// RenewWriter renews a writer lease once.
func (s *Server) RenewWriter(ctx context.Context, req *pb.RenewWriterRequest) (*pb.RenewWriterResponse, error) {
	return call(ctx, func(ctx context.Context) (*pb.RenewWriterResponse, error) {
		if req.GetLease() == 0 {
			return nil, fmt.Errorf("%w: no lease given; pass the lease AcquireWriter returned", ErrInvalid)
		}
		if err := s.cat.RenewWriter(ctx, clientv3.LeaseID(req.GetLease())); err != nil {
			return nil, err
		}
		return &pb.RenewWriterResponse{}, nil
	})
}

// ReleaseWriter gives a writer lease up.
func (s *Server) ReleaseWriter(ctx context.Context, req *pb.ReleaseWriterRequest) (*pb.ReleaseWriterResponse, error) {
	return call(ctx, func(ctx context.Context) (*pb.ReleaseWriterResponse, error) {
		if req.GetLease() == 0 {
			return nil, fmt.Errorf("%w: no lease given; pass the lease AcquireWriter returned", ErrInvalid)
		}
		if err := s.cat.ReleaseWriter(ctx, clientv3.LeaseID(req.GetLease())); err != nil {
			return nil, err
		}
		s.log.Info("writer lease released", "lease", fmt.Sprintf("%x", req.GetLease()))
		return &pb.ReleaseWriterResponse{}, nil
	})
}

// instanceFromPB is the catalog's record of an InstanceInfo (nil: the zero
// record, which fails validation).
func instanceFromPB(in *pb.InstanceInfo) Instance {
	return Instance{
		Volume: in.GetVolume(), ID: in.GetId(), Role: in.GetRole(), AZ: in.GetAz(),
		SQLEndpoint: in.GetSqlEndpoint(), ReplicationEndpoint: in.GetReplicationEndpoint(),
		Epoch: in.GetEpoch(), VDL: in.GetVdl(), ReadPoint: in.GetReadPoint(), State: in.GetState(),
		UpdatedUnixMs: in.GetUpdatedUnixMs(), PromotionTier: in.GetPromotionTier(),
	}
}

func instanceInfo(in Instance) *pb.InstanceInfo {
	return &pb.InstanceInfo{
		Volume: in.Volume, Id: in.ID, Role: in.Role, Az: in.AZ,
		SqlEndpoint: in.SQLEndpoint, ReplicationEndpoint: in.ReplicationEndpoint,
		Epoch: in.Epoch, Vdl: in.VDL, ReadPoint: in.ReadPoint, State: in.State,
		UpdatedUnixMs: in.UpdatedUnixMs, PromotionTier: in.PromotionTier,
	}
}

// RegisterInstance records a database instance under a new lease (ttl_ms,
// or DefaultInstanceTTL), replacing an earlier record of its id.
func (s *Server) RegisterInstance(ctx context.Context, req *pb.RegisterInstanceRequest) (*pb.RegisterInstanceResponse, error) {
	return call(ctx, func(ctx context.Context) (*pb.RegisterInstanceResponse, error) {
		if req.GetInfo() == nil {
			return nil, fmt.Errorf("%w: no instance record given; pass info with the instance's volume, id, role and SQL endpoint", ErrInvalid)
		}
		ttl := time.Duration(req.GetTtlMs()) * time.Millisecond
		if ttl == 0 {
			ttl = DefaultInstanceTTL
		}
		in := instanceFromPB(req.GetInfo())
		rec, replaced, err := s.cat.RegisterInstance(ctx, in, ttl)
		if err != nil {
			s.log.Warn("instance registration refused", "volume", in.Volume, "instance", in.ID, "role", in.Role, "err", err)
			return nil, err
		}
		attrs := []any{"volume", rec.Volume, "instance", rec.ID, "role", rec.Role, "az", rec.AZ, "sql_endpoint", rec.SQLEndpoint,
			"lease", fmt.Sprintf("%x", int64(rec.Lease)), "ttl_s", rec.TTLSeconds}
		if replaced != nil {
			attrs = append(attrs, "replaced_lease", fmt.Sprintf("%x", int64(replaced.Lease)))
		}
		s.log.Info("instance registered", attrs...)
		return &pb.RegisterInstanceResponse{Lease: int64(rec.Lease)}, nil
	})
}

// RenewInstance keeps an instance's lease alive and, if info is set,
// replaces its record.
func (s *Server) RenewInstance(ctx context.Context, req *pb.RenewInstanceRequest) (*pb.RenewInstanceResponse, error) {
	return call(ctx, func(ctx context.Context) (*pb.RenewInstanceResponse, error) {
		if req.GetLease() == 0 {
			return nil, fmt.Errorf("%w: no lease given; pass the lease RegisterInstance returned", ErrInvalid)
		}
		var in *Instance
		if req.GetInfo() != nil {
			r := instanceFromPB(req.GetInfo())
			in = &r
		}
		if err := s.cat.RenewInstance(ctx, clientv3.LeaseID(req.GetLease()), in); err != nil {
			if errors.Is(err, ErrLeaseExpired) {
				s.log.Warn("instance renewal refused", "lease", fmt.Sprintf("%x", req.GetLease()), "volume", req.GetInfo().GetVolume(), "instance", req.GetInfo().GetId(), "err", err)
			}
			return nil, err
		}
		return &pb.RenewInstanceResponse{}, nil
	})
}

// DeregisterInstance releases an instance's lease, removing its record. A
// lease already gone (expired, released, replaced) is not an error.
func (s *Server) DeregisterInstance(ctx context.Context, req *pb.DeregisterInstanceRequest) (*pb.DeregisterInstanceResponse, error) {
	return call(ctx, func(ctx context.Context) (*pb.DeregisterInstanceResponse, error) {
		if req.GetLease() == 0 {
			return nil, fmt.Errorf("%w: no lease given; pass the lease RegisterInstance returned", ErrInvalid)
		}
		rec, err := s.cat.DeregisterInstance(ctx, clientv3.LeaseID(req.GetLease()))
		if err != nil {
			return nil, err
		}
		if rec != nil {
			s.log.Info("instance deregistered", "volume", rec.Volume, "instance", rec.ID, "role", rec.Role, "lease", fmt.Sprintf("%x", req.GetLease()))
		} else {
			s.log.Info("instance deregistered: its lease was already gone", "lease", fmt.Sprintf("%x", req.GetLease()))
		}
		return &pb.DeregisterInstanceResponse{}, nil
	})
}

// ListInstances lists the registered instances of a volume, or of all.
func (s *Server) ListInstances(ctx context.Context, req *pb.ListInstancesRequest) (*pb.ListInstancesResponse, error) {
	return call(ctx, func(ctx context.Context) (*pb.ListInstancesResponse, error) {
		ins, err := s.cat.Instances(ctx, req.GetVolume())
		if err != nil {
			return nil, err
		}
		out := &pb.ListInstancesResponse{Instances: make([]*pb.InstanceInfo, len(ins))}
		for i, in := range ins {
			out.Instances[i] = instanceInfo(in)
		}
		return out, nil
	})
}

// Status reports every node, every volume with its PGs, and the writers.
func (s *Server) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	return call(ctx, func(ctx context.Context) (*pb.StatusResponse, error) {
		states, err := s.cat.NodeStates(ctx)
		if err != nil {
			return nil, err
		}
		load, err := s.cat.Load(ctx)
		if err != nil {
			return nil, err
		}
		now := time.Now()
		out := &pb.StatusResponse{HeartbeatTimeoutMs: uint32(s.timeout.Milliseconds()), RepairAfterMs: uint32(s.repair.After.Milliseconds())}
		out.Nodes = nodeStatuses(states, now)
		for _, n := range out.Nodes {
			n.Segments = uint32(load.Segments[n.Id])
		}
		if out.Volumes, err = s.listVolumes(ctx); err != nil {
			return nil, err
		}
		markWaiting(out.Volumes, repairNodes(states, load), now, s.repair.After)
		for _, v := range out.Volumes {
			w, err := s.cat.Writer(ctx, v.Name)
			if err != nil {
				return nil, err
			}
			if w != nil {
				out.Writers = append(out.Writers, &pb.WriterStatus{Volume: v.Name, Holder: w.Holder, Epoch: w.Epoch})
			}
		}
		return out, nil
	})
}

func nodeStatuses(states map[string]NodeState, now time.Time) []*pb.NodeStatus {
	ids := make([]string, 0, len(states))
	for id := range states {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := make([]*pb.NodeStatus, 0, len(ids))
	for _, id := range ids {
		ns := states[id]
		age := int64(-1)
		if !ns.LastHeartbeat.IsZero() {
			age = max(now.Sub(ns.LastHeartbeat).Milliseconds(), 0)
		}
		out = append(out, &pb.NodeStatus{Id: ns.ID, Az: ns.AZ, Addr: ns.Addr, State: ns.State, HeartbeatAgeMs: age, Admin: ns.Admin})
	}
	return out
}

// markWaiting sets waiting_for_capacity_az on the PGs that PlanRepair would
// leave degraded for want of a spare node in an AZ, as the leader's repair
// decides it (without the Declare answers, which only wait decisions do
// not need).
func markWaiting(vols []*pb.VolumeInfo, nodes []RepairNode, now time.Time, after time.Duration) {
	known := map[string]RepairNode{}
	for _, n := range nodes {
		known[n.ID] = n
	}
	var pgs []PG
	infos := map[PGKey]*pb.PGInfo{}
	for _, v := range vols {
		for _, p := range v.PgList {
			pg := pgFromInfo(p)
			failed := false
			for _, sg := range pg.Segments {
				n, ok := known[sg.Node]
				if _, bad := nodeFailed(n, ok, now, after); bad {
					failed = true
				}
			}
			if failed && pg.Change == nil {
				pgs = append(pgs, pg)
				infos[pg.Key()] = p
			}
		}
	}
	if len(pgs) == 0 {
		return
	}
	for _, a := range PlanRepair(RepairView{Now: now, RepairAfter: after, Nodes: nodes, PGs: pgs}) {
		if p := infos[a.PG]; a.Kind == ActWait && p != nil && p.WaitingForCapacityAz == "" {
			p.WaitingForCapacityAz, p.WaitingMember = a.AZ, a.Leaving.Node
		}
	}
}

// pgFromInfo is the catalog's form of a PGInfo.
func pgFromInfo(p *pb.PGInfo) PG {
	pg := PG{Version: RecordVersion, VolumeID: p.GetVolumeId(), PG: p.GetPg(), MembershipEpoch: p.GetMembershipEpoch(), GeometryEpoch: p.GetGeometryEpoch()}
	for _, s := range p.GetSegments() {
		pg.Segments = append(pg.Segments, Segment{Node: s.GetNode(), AZ: s.GetAz(), Addr: s.GetAddr()})
	}
	for _, s := range p.GetNextSegments() {
		pg.Next = append(pg.Next, Segment{Node: s.GetNode(), AZ: s.GetAz(), Addr: s.GetAddr()})
	}
	if ch := p.GetChange(); ch != nil {
		pg.Change = &MembershipChange{Leaving: ch.GetLeaving(), Joining: ch.GetJoining(), Reason: ch.GetReason(), StartedAt: time.UnixMilli(ch.GetStartedAtUnixMs()).UTC()}
	}
	return pg
}

// RemoveNode marks a node removed: repair moves its segments off it.
func (s *Server) RemoveNode(ctx context.Context, req *pb.RemoveNodeRequest) (*pb.NodeAdminResponse, error) {
	return s.nodeAdmin(ctx, req.GetId(), AdminRemoved)
}

// DrainNode marks a node draining: repair moves its segments off it.
func (s *Server) DrainNode(ctx context.Context, req *pb.DrainNodeRequest) (*pb.NodeAdminResponse, error) {
	return s.nodeAdmin(ctx, req.GetId(), AdminDraining)
}

func (s *Server) nodeAdmin(ctx context.Context, id, admin string) (*pb.NodeAdminResponse, error) {
	return call(ctx, func(ctx context.Context) (*pb.NodeAdminResponse, error) {
		old, err := s.cat.SetNodeAdmin(ctx, id, admin)
		if err != nil {
			s.log.Warn("node "+admin+" refused", "node", id, "err", err)
			return nil, err
		}
		load, err := s.cat.Load(ctx)
		if err != nil {
			return nil, err
		}
		states, err := s.cat.NodeStates(ctx)
		if err != nil {
			return nil, err
		}
		segs := load.Segments[id]
		if old.Admin != admin {
			s.log.Warn("node "+admin, "node", id, "az", old.AZ, "previous", old.Admin, "segments", segs, "state", states[id].State)
		}
		return &pb.NodeAdminResponse{Admin: admin, Previous: old.Admin, Segments: uint32(segs), State: states[id].State}, nil
	})
}

// ---- running the control plane ----

// Config configures Run.
type Config struct {
	// Listen is the gRPC address of the Control service (host:port).
	Listen string
	// Dir holds the embedded etcd's data; not needed with Etcd.
	Dir string
	// Etcd lists the client URLs of an external etcd; empty: embed one in Dir.
	Etcd []string
	// Prefix is the catalog's key prefix (DefaultPrefix when empty).
	Prefix string
	// HeartbeatTimeout: a node silent this long is down (0: 3s).
	HeartbeatTimeout time.Duration
	Logger           *slog.Logger
	// Ready, if set, is called with the address served once the service
	// answers.
	Ready func(addr string)

	// Name names this control plane: its etcd member and its candidacy in
	// the leader election (empty: "control").
	Name string
	// AZ is where it runs, shown by status.
	AZ string
	// ClientListen and PeerListen are the embedded etcd member's client and
	// peer addresses (host:port); empty: free loopback ports, which only a
	// single-member etcd can use.
	ClientListen, PeerListen string
	// InitialCluster makes the embedded etcd one member of a multi-member
	// cluster: every member's peer URL, "c1=http://h:p,c2=...,c3=...",
	// Name's among them. Empty: a single-member etcd.
	InitialCluster string
	// JoinExisting joins a running cluster (etcd's initial-cluster-state
	// existing) rather than bootstrapping a new one.
	JoinExisting bool
	// RepairAfter: a node down this long has its segments replaced (0:
	// DefaultRepairAfter).
	RepairAfter time.Duration
	// Metrics, if set, is the address to serve Prometheus metrics on
	// (/metrics).
	Metrics string
}

// Run runs the control plane until ctx ends: the catalog in etcd (embedded
// in Dir, or external), and the Control service on Listen. On ctx's end it
// stops serving, closes the catalog and stops the embedded etcd (releasing
// Dir's lock), and returns nil.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Listen == "" {
		return errors.New("control: no listen address; pass --listen HOST:PORT")
	}
	if len(cfg.Etcd) == 0 && cfg.Dir == "" {
		return errors.New("control: give --dir for the embedded etcd's data, or --etcd with the client URLs of an external etcd")
	}
	timeout := cfg.HeartbeatTimeout
	if timeout <= 0 {
		timeout = DefaultHeartbeatTimeout
	}
	if timeout < time.Second {
		return fmt.Errorf("control: heartbeat timeout %s is too short; etcd leases have whole seconds, so use at least 1s", timeout)
	}

	// Bind first: a taken port is refused before anything else starts.
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("control: cannot listen on %s: the address is in use by another process; stop it or choose another --listen", cfg.Listen)
		}
		return fmt.Errorf("control: cannot listen on %s: %w", cfg.Listen, err)
	}
	defer lis.Close()

	var etcd *embed.Etcd
	urls := cfg.Etcd
	if len(urls) == 0 {
		var err error
		etcd, urls, err = startMember(cfg)
		if err != nil {
			return err
		}
		defer func() {
			etcd.Close()
			<-etcd.Server.StopNotify()
		}()
		log.Info("embedded etcd started", "dir", cfg.Dir, "client_urls", strings.Join(urls, ","))
	}
	cat, err := Open(ctx, urls, cfg.Prefix)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer cat.Close()

	srv := NewServer(cat, timeout, log)
	srv.SetRepair(RepairConfig{After: cfg.RepairAfter})
	srv.ha.etcd = etcd
	if cfg.Metrics != "" {
		mlis, err := net.Listen("tcp", cfg.Metrics)
		if err != nil {
			return fmt.Errorf("control: cannot serve metrics on %s: %w", cfg.Metrics, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(srv.metrics, promhttp.HandlerOpts{}))
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go hs.Serve(mlis)
		defer hs.Close()
	}
	if etcd != nil && cfg.InitialCluster != "" {
		sctx, stopSync := context.WithCancel(ctx)
		defer stopSync()
		go syncMembers(sctx, cat, 10*time.Second)
	}
	gs := grpc.NewServer(ServerOptions()...)
	pb.RegisterControlServer(gs, srv)
	pb.RegisterControlPlaneServer(gs, controlPlaneService{s: srv})
	serveErr := make(chan error, 1)
	go func() { serveErr <- gs.Serve(lis) }()
	log.Info("control plane serving", "addr", lis.Addr().String(), "etcd", strings.Join(urls, ","), "embedded", etcd != nil, "heartbeat_timeout", timeout, "repair_after", srv.repair.After)
	if cfg.Ready != nil {
		cfg.Ready(lis.Addr().String())
	}

	// Only the elected control plane runs leaderWork; the others serve
	// calls and stand by.
	stopLeading := srv.campaign(ctx, candidate(cfg, lis.Addr().String()))
	defer stopLeading()

	var etcdErrc <-chan error
	if etcd != nil {
		etcdErrc = etcd.Err()
	}
	var runErr error
	select {
	case <-ctx.Done():
		log.Info("control plane stopping")
	case err := <-serveErr:
		runErr = fmt.Errorf("control: serving on %s failed: %w", lis.Addr(), err)
	case err := <-etcdErrc:
		runErr = fmt.Errorf("control: the embedded etcd failed (its log: %s/%s): %w", cfg.Dir, embeddedLogFile, err)
	}
	// Resign first, so that another control plane leads at once.
	stopLeading()
	srv.Stop()
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(3 * time.Second):
		gs.Stop()
		<-stopped
	}
	return runErr
}

// watchNodes logs each node's changes of state, polling the catalog a few
// times per heartbeat timeout.
func watchNodes(ctx context.Context, cat *Catalog, timeout time.Duration, log *slog.Logger) {
	last := map[string]string{}
	t := time.NewTicker(max(timeout/4, 100*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, timeout)
		states, err := cat.NodeStates(rctx)
		cancel()
		if err != nil {
			continue
		}
		for id, ns := range states {
			if prev, ok := last[id]; ok && prev != ns.State {
				if ns.State == StateDown {
					log.Warn("node down", "node", id, "az", ns.AZ, "last_heartbeat", ns.LastHeartbeat)
				} else {
					log.Info("node up", "node", id, "az", ns.AZ)
				}
			} else if !ok && ns.State == StateUp {
				log.Info("node up", "node", id, "az", ns.AZ)
			}
			last[id] = ns.State
		}
	}
}
