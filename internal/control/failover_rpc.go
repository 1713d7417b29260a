package control

import (
	"context"
	"fmt"
	"sync/atomic"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

func failoverInfo(f *Failover) *pb.FailoverInfo {
	if f == nil {
		return nil
	}
	return &pb.FailoverInfo{
		Round: f.Round, Kind: f.Kind, Reason: f.Reason, From: f.From, FromEpoch: f.FromEpoch,
		State: f.State, Target: f.Target, Tried: f.Tried, Why: f.Why, Epoch: f.Epoch,
		DetectedUnixMs: f.DetectedMs, DecidedUnixMs: f.DecidedMs, DoneUnixMs: f.DoneMs,
		LeaseMs: f.LeaseMs, EpochMs: f.EpochMs, RecoveryMs: f.RecoveryMs, OpenMs: f.OpenMs, DrainMs: f.DrainMs,
		HandoverVdl: f.HandoverVDL, Vdl: f.VDL, Warm: f.Warm, DeadlineUnixMs: f.DeadlineMs,
	}
}

// WriterState reads a volume's writer state at one revision.
func (c *Catalog) WriterState(ctx context.Context, vol Volume) (*pb.WriterState, error) {
	tr, err := c.cli.Txn(ctx).Then(
		clientv3.OpGet(c.writerKey(vol.ID)),
		clientv3.OpGet(c.failoverKey(vol.ID)),
		clientv3.OpGet(c.volInstancesPrefix(vol.ID), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, etcdErr("read the writer state of volume "+vol.Name, err)
	}
	st := &pb.WriterState{Volume: vol.Name, VolumeId: vol.ID, Revision: tr.Header.Revision}
	if kvs := tr.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		w, err := decode[Writer](kvs[0])
		if err != nil {
			return nil, err
		}
		st.Holder, st.Epoch, st.AcquiredUnixMs, st.TtlMs = w.Holder, w.Epoch, w.AcquiredAt.UnixMilli(), uint32(w.TTLSeconds*1000)
	}
	if kvs := tr.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		f, err := decode[Failover](kvs[0])
		if err != nil {
			return nil, err
		}
		st.Failover = failoverInfo(&f)
	}
	if st.Holder != "" {
		ins, err := decodeAll[Instance](tr.Responses[2].GetResponseRange().Kvs)
		if err != nil {
			return nil, err
		}
		for _, in := range ins {
			if in.ID == st.Holder && in.Role == RoleWriter {
				st.Writer = instanceInfo(in)
			}
		}
	}
	return st, nil
}

// sameWriterState reports whether two states differ only in what changes
// with every renewal (the registered writer's VDL, read point and time).
func sameWriterState(a, b *pb.WriterState) bool {
	if a == nil || b == nil {
		return a == b
	}
	strip := func(s *pb.WriterState) *pb.WriterState {
		c := proto.Clone(s).(*pb.WriterState)
		c.Revision = 0
		if c.Writer != nil {
			c.Writer.Vdl, c.Writer.ReadPoint, c.Writer.UpdatedUnixMs = 0, 0, 0
		}
		return c
	}
	return proto.Equal(strip(a), strip(b))
}

// WatchWriter streams the volume's writer state: now, and on every change.
func (s *Server) WatchWriter(req *pb.WatchWriterRequest, stream grpc.ServerStreamingServer[pb.WriterState]) error {
	ctx := stream.Context()
	vol, err := call(ctx, func(ctx context.Context) (Volume, error) { return s.cat.Volume(ctx, req.GetVolume()) })
	if err != nil {
		return err
	}
	wctx, cancel := s.untilStopping(ctx)
	defer cancel()
	var sent *pb.WriterState
	var lastWriter atomic.Pointer[pb.InstanceInfo]
	read := func() error {
		st, err := call(wctx, func(ctx context.Context) (*pb.WriterState, error) { return s.cat.WriterState(ctx, vol) })
		if err != nil {
			return err
		}
		if !sameWriterState(st, sent) {
			if err := stream.Send(st); err != nil {
				return err
			}
		}
		sent = st
		lastWriter.Store(st.Writer)
		return nil
	}
	// relevant says whether an event of the instances' prefix may change
	// the state: not a replica's renewal, nor the writer's that changes
	// only its VDL, read point and time (several a second per instance).
	relevant := func(resp clientv3.WatchResponse) bool {
		for _, ev := range resp.Events {
			if ev.Type != clientv3.EventTypePut {
				return true
			}
			in, err := decode[Instance](ev.Kv)
			if err != nil {
				return true
			}
			if in.Role != RoleWriter {
				continue
			}
			w := lastWriter.Load()
			if w == nil || w.Id != in.ID || w.State != in.State || w.Epoch != in.Epoch || w.SqlEndpoint != in.SQLEndpoint || w.ReplicationEndpoint != in.ReplicationEndpoint {
				return true
			}
		}
		return false
	}
	if err := read(); err != nil {
		return err
	}
	// One watch over the three places a writer state comes from; the
	// instances' prefix changes with every renewal, which read filters.
	wake := make(chan struct{}, 1)
	wch := make(chan error, 3)
	for _, w := range []struct {
		key    string
		prefix bool
	}{
		{s.cat.writerKey(vol.ID), false},
		{s.cat.failoverKey(vol.ID), false},
		{s.cat.volInstancesPrefix(vol.ID), true},
	} {
		opts := []clientv3.OpOption{clientv3.WithRev(sent.Revision + 1)}
		if w.prefix {
			opts = append(opts, clientv3.WithPrefix())
		}
		ch := s.cat.cli.Watch(clientv3.WithRequireLeader(wctx), w.key, opts...)
		go func() {
			for resp := range ch {
				if err := resp.Err(); err != nil {
					wch <- err
					return
				}
				if w.prefix && !relevant(resp) {
					continue
				}
				select {
				case wake <- struct{}{}:
				default:
				}
			}
			wch <- nil
		}()
	}
	for {
		select {
		case <-wake:
			if err := read(); err != nil {
				return err
			}
		case err := <-wch:
			if ctx.Err() != nil {
				return status.FromContextError(ctx.Err()).Err()
			}
			msg := "control: the control plane is stopping or lost etcd; watch again from another one"
			if err != nil {
				msg = fmt.Sprintf("control: the watch of volume %s's writer ended: %v; watch again", vol.Name, err)
			}
			return status.Error(codes.Unavailable, msg)
		}
	}
}

// Switchover starts a planned failover.
func (s *Server) Switchover(ctx context.Context, req *pb.SwitchoverRequest) (*pb.FailoverInfo, error) {
	return call(ctx, func(ctx context.Context) (*pb.FailoverInfo, error) {
		f, err := s.cat.Switchover(ctx, req.GetVolume(), req.GetTo(), s.failoverTiming)
		if err != nil {
			return nil, err
		}
		s.log.Warn("switchover requested", "volume", req.GetVolume(), "round", f.Round, "from", f.From, "to", f.Target)
		return failoverInfo(f), nil
	})
}

// ReportFailover records an instance's report of a failover's progress.
func (s *Server) ReportFailover(ctx context.Context, req *pb.ReportFailoverRequest) (*pb.FailoverInfo, error) {
	return call(ctx, func(ctx context.Context) (*pb.FailoverInfo, error) {
		f, err := s.cat.ReportFailover(ctx, req.GetVolume(), FailoverReport{
			Round: req.GetRound(), Instance: req.GetInstance(), State: req.GetState(), Why: req.GetWhy(),
			Epoch: req.GetEpoch(), HandoverVDL: req.GetHandoverVdl(), VDL: req.GetVdl(),
			LeaseMs: req.GetLeaseMs(), EpochMs: req.GetEpochMs(), RecoveryMs: req.GetRecoveryMs(), OpenMs: req.GetOpenMs(),
			Drain: req.GetDrainMs(), Warm: req.GetWarm(),
		})
		if err != nil {
			return nil, err
		}
		if req.GetState() != ReportWaiting {
			s.log.Info("failover report", "volume", req.GetVolume(), "round", req.GetRound(), "instance", req.GetInstance(), "state", req.GetState(), "why", req.GetWhy())
		}
		return failoverInfo(f), nil
	})
}
